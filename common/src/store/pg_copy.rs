//! PostgreSQL's binary `COPY` format, both ways: the stream's writer sends
//! raw heartbeats with `COPY ... FROM STDIN (FORMAT binary)` ([`Encoder`]:
//! no statement to parse, no per-row executor pass), and reports that read
//! about a row per session of their period decode `COPY (SELECT ...) TO
//! STDOUT (FORMAT binary)` as it streams in ([`each_row`]: a COPY row is a
//! length-prefixed run of fields read in place, without sqlx's per-row
//! hand-over).
//!
//! The format (PostgreSQL docs, "COPY ... Binary Format"): an 11-byte
//! signature, a 32-bit flags word, a 32-bit header-extension length and the
//! extension; then per row a 16-bit field count (-1 ends the data) and per
//! field a 32-bit length (-1 for NULL) and that many bytes, integers in
//! network byte order. YugabyteDB's YSQL speaks the same.

use super::Statement;
use futures::TryStreamExt as _;
use thiserror::Error;

const SIGNATURE: &[u8; 11] = b"PGCOPY\n\xff\r\n\0";

/// Why COPY data could not be read.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum CopyError {
    #[error("COPY data does not start with the binary signature")]
    Signature,
    #[error("COPY data ended inside a row or before its end marker")]
    Truncated,
    #[error("COPY field {field}: {problem}")]
    Field { field: usize, problem: &'static str },
}

/// Binary COPY data being written: the header, then rows, then [`Encoder::finish`].
pub struct Encoder {
    buf: Vec<u8>,
}

impl Default for Encoder {
    fn default() -> Encoder {
        let mut buf = Vec::with_capacity(64 * 1024);
        buf.extend_from_slice(SIGNATURE);
        buf.extend_from_slice(&0i32.to_be_bytes()); // flags
        buf.extend_from_slice(&0i32.to_be_bytes()); // header extension
        Encoder { buf }
    }
}

impl Encoder {
    /// Starts a row of `fields` fields.
    pub fn row(&mut self, fields: i16) -> &mut Encoder {
        self.buf.extend_from_slice(&fields.to_be_bytes());
        self
    }

    pub fn text(&mut self, value: &str) -> &mut Encoder {
        self.buf
            .extend_from_slice(&(value.len() as i32).to_be_bytes());
        self.buf.extend_from_slice(value.as_bytes());
        self
    }

    pub fn int8(&mut self, value: i64) -> &mut Encoder {
        self.buf.extend_from_slice(&8i32.to_be_bytes());
        self.buf.extend_from_slice(&value.to_be_bytes());
        self
    }

    pub fn int4(&mut self, value: i32) -> &mut Encoder {
        self.buf.extend_from_slice(&4i32.to_be_bytes());
        self.buf.extend_from_slice(&value.to_be_bytes());
        self
    }

    pub fn bool(&mut self, value: bool) -> &mut Encoder {
        self.buf.extend_from_slice(&1i32.to_be_bytes());
        self.buf.push(u8::from(value));
        self
    }

    /// The bytes written since the last [`Encoder::clear`], to send.
    pub fn pending(&self) -> &[u8] {
        &self.buf
    }

    /// Forgets the bytes sent, keeping the buffer.
    pub fn clear(&mut self) {
        self.buf.clear();
    }

    /// Ends the data: the bytes still to send, end marker included.
    pub fn finish(mut self) -> Vec<u8> {
        self.buf.extend_from_slice(&(-1i16).to_be_bytes());
        self.buf
    }
}

/// Runs `statement` as a binary COPY and hands each row to `row` as it
/// arrives. COPY takes no bound parameters: the statement's values are
/// printed into it as literals from their types ([`Statement::render`]),
/// and like an unnamed statement it is planned for them on every run.
pub async fn each_row<E>(
    connection: &mut sqlx::PgConnection,
    statement: &Statement,
    mut row: impl FnMut(&[Option<&[u8]>]) -> Result<(), E>,
) -> Result<(), E>
where
    E: From<CopyError> + From<sqlx::Error>,
{
    let copy = format!(
        "COPY (\n{}\n) TO STDOUT (FORMAT binary)",
        statement.render()
    );
    let mut data = connection.copy_out_raw(&copy).await?;
    let mut rows = BinaryRows::default();
    while let Some(chunk) = data.try_next().await? {
        rows.feed(&chunk, &mut row)?;
    }
    Ok(rows.finish()?)
}

/// Decodes binary COPY data fed in chunks of any size; each complete row
/// is handed to the caller as its fields (`None` for NULL).
#[derive(Debug, Default)]
pub struct BinaryRows {
    /// The start of a row (or the header) that a chunk cut in two.
    pending: Vec<u8>,
    header_read: bool,
    ended: bool,
}

impl BinaryRows {
    /// Reads every complete row of `chunk` (after what earlier chunks left).
    pub fn feed<E>(
        &mut self,
        chunk: &[u8],
        mut row: impl FnMut(&[Option<&[u8]>]) -> Result<(), E>,
    ) -> Result<(), E>
    where
        E: From<CopyError>,
    {
        if self.pending.is_empty() {
            let used = self.parse(chunk, &mut row)?;
            self.pending.extend_from_slice(&chunk[used..]);
        } else {
            let mut data = std::mem::take(&mut self.pending);
            data.extend_from_slice(chunk);
            let used = self.parse(&data, &mut row)?;
            data.drain(..used);
            self.pending = data;
        }
        Ok(())
    }

    /// Checks the data ended where it should, after the end marker.
    pub fn finish(self) -> Result<(), CopyError> {
        if self.ended && self.pending.is_empty() {
            Ok(())
        } else {
            Err(CopyError::Truncated)
        }
    }

    /// Bytes of `data` used by the header and the complete rows in it.
    fn parse<E>(
        &mut self,
        data: &[u8],
        row: &mut impl FnMut(&[Option<&[u8]>]) -> Result<(), E>,
    ) -> Result<usize, E>
    where
        E: From<CopyError>,
    {
        let mut at = 0;
        if !self.header_read {
            let Some(fixed) = data.get(..SIGNATURE.len() + 8) else {
                return Ok(0);
            };
            if &fixed[..SIGNATURE.len()] != SIGNATURE {
                return Err(CopyError::Signature.into());
            }
            let extension = be_u32(&fixed[SIGNATURE.len() + 4..]) as usize;
            if data.len() < fixed.len() + extension {
                return Ok(0);
            }
            at = fixed.len() + extension;
            self.header_read = true;
        }
        let mut fields: Vec<Option<&[u8]>> = Vec::with_capacity(8);
        while !self.ended {
            let Some(count) = data.get(at..at + 2) else {
                break;
            };
            let count = i16::from_be_bytes([count[0], count[1]]);
            if count == -1 {
                self.ended = true;
                at += 2;
                break;
            }
            let Some(end) = read_fields(data, at + 2, count, &mut fields) else {
                break;
            };
            row(&fields)?;
            at = end;
        }
        if self.ended && at < data.len() {
            return Err(CopyError::Field {
                field: 0,
                problem: "data after the end marker",
            }
            .into());
        }
        Ok(at)
    }
}

/// The `count` fields starting at `at`, or `None` when the row is not
/// complete in `data` yet.
fn read_fields<'a>(
    data: &'a [u8],
    mut at: usize,
    count: i16,
    fields: &mut Vec<Option<&'a [u8]>>,
) -> Option<usize> {
    fields.clear();
    for _ in 0..count.max(0) {
        let length = i32::from_be_bytes(data.get(at..at + 4)?.try_into().ok()?);
        at += 4;
        if length < 0 {
            fields.push(None);
            continue;
        }
        let value = data.get(at..at + length as usize)?;
        fields.push(Some(value));
        at += length as usize;
    }
    Some(at)
}

fn be_u32(bytes: &[u8]) -> u32 {
    u32::from_be_bytes([bytes[0], bytes[1], bytes[2], bytes[3]])
}

/// Field `index` of a row as text (PostgreSQL `text`, UTF-8).
pub fn text<'a>(fields: &[Option<&'a [u8]>], index: usize) -> Result<&'a str, CopyError> {
    let bytes = present(fields, index)?;
    std::str::from_utf8(bytes).map_err(|_| CopyError::Field {
        field: index,
        problem: "text is not UTF-8",
    })
}

/// Field `index` of a row as a `bigint`.
pub fn int8(fields: &[Option<&[u8]>], index: usize) -> Result<i64, CopyError> {
    let bytes: [u8; 8] = present(fields, index)?
        .try_into()
        .map_err(|_| CopyError::Field {
            field: index,
            problem: "a bigint is 8 bytes",
        })?;
    Ok(i64::from_be_bytes(bytes))
}

fn present<'a>(fields: &[Option<&'a [u8]>], index: usize) -> Result<&'a [u8], CopyError> {
    match fields.get(index) {
        Some(Some(bytes)) => Ok(bytes),
        Some(None) => Err(CopyError::Field {
            field: index,
            problem: "unexpected NULL",
        }),
        None => Err(CopyError::Field {
            field: index,
            problem: "missing from the row",
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Binary COPY data as PostgreSQL writes it, for rows of (text, bigint).
    fn copy_data(rows: &[(&str, i64)]) -> Vec<u8> {
        let mut out = SIGNATURE.to_vec();
        out.extend_from_slice(&0u32.to_be_bytes());
        out.extend_from_slice(&0u32.to_be_bytes());
        for (user, value) in rows {
            out.extend_from_slice(&2i16.to_be_bytes());
            out.extend_from_slice(&(user.len() as i32).to_be_bytes());
            out.extend_from_slice(user.as_bytes());
            out.extend_from_slice(&8i32.to_be_bytes());
            out.extend_from_slice(&value.to_be_bytes());
        }
        out.extend_from_slice(&(-1i16).to_be_bytes());
        out
    }

    #[test]
    fn the_encoder_writes_what_postgresql_writes_whatever_it_sends_between() {
        let rows = [("u1", 7), ("ü", -1)];
        let mut encoder = Encoder::default();
        let mut sent = Vec::new();
        for (user, value) in rows {
            encoder.row(2).text(user).int8(value);
            sent.extend_from_slice(encoder.pending());
            encoder.clear();
        }
        sent.extend(encoder.finish());
        assert_eq!(sent, copy_data(&rows));
    }

    fn decode(chunks: &[&[u8]]) -> Result<Vec<(String, i64)>, CopyError> {
        let mut rows = BinaryRows::default();
        let mut out = Vec::new();
        for chunk in chunks {
            rows.feed(chunk, |fields| {
                out.push((text(fields, 0)?.to_string(), int8(fields, 1)?));
                Ok::<_, CopyError>(())
            })?;
        }
        rows.finish()?;
        Ok(out)
    }

    #[test]
    fn rows_are_read_whatever_the_chunks_cut() {
        let rows = [("u000001", 1_711_929_600_000), ("", -5), ("ü", i64::MAX)];
        let data = copy_data(&rows);
        let expected: Vec<(String, i64)> = rows.iter().map(|(u, v)| (u.to_string(), *v)).collect();
        assert_eq!(decode(&[&data]).unwrap(), expected);
        for cut in 1..data.len() {
            let (a, b) = data.split_at(cut);
            assert_eq!(decode(&[a, b]).unwrap(), expected, "cut at {cut}");
        }
        let bytes: Vec<&[u8]> = data.chunks(1).collect();
        assert_eq!(decode(&bytes).unwrap(), expected);
    }

    #[test]
    fn data_cut_short_or_not_copy_is_refused() {
        let data = copy_data(&[("u1", 1)]);
        assert_eq!(
            decode(&[&data[..data.len() - 1]]),
            Err(CopyError::Truncated)
        );
        assert_eq!(
            decode(&[b"COPY 1\n\0\0\0\0\0\0\0\0\0\0\0\0\0"]),
            Err(CopyError::Signature)
        );
        let mut trailing = data.clone();
        trailing.push(0);
        assert!(matches!(decode(&[&trailing]), Err(CopyError::Field { .. })));
    }

    #[test]
    fn nulls_and_wrong_widths_are_named() {
        let mut data = SIGNATURE.to_vec();
        data.extend_from_slice(&[0; 8]);
        data.extend_from_slice(&2i16.to_be_bytes());
        data.extend_from_slice(&(-1i32).to_be_bytes());
        data.extend_from_slice(&4i32.to_be_bytes());
        data.extend_from_slice(&7i32.to_be_bytes());
        data.extend_from_slice(&(-1i16).to_be_bytes());
        let mut rows = BinaryRows::default();
        let mut seen = Vec::new();
        rows.feed(&data, |fields| {
            seen.push((text(fields, 0).unwrap_err(), int8(fields, 1).unwrap_err()));
            Ok::<_, CopyError>(())
        })
        .unwrap();
        rows.finish().unwrap();
        assert_eq!(
            seen,
            vec![(
                CopyError::Field {
                    field: 0,
                    problem: "unexpected NULL"
                },
                CopyError::Field {
                    field: 1,
                    problem: "a bigint is 8 bytes"
                },
            )]
        );
    }
}
