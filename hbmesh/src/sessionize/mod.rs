//! `hbmesh sessionize --input FILE`: offline, exact sessionization of heartbeat
//! JSON Lines with the stream service's own sessionizer. The whole file is the
//! input, so line order does not matter and no lateness limit applies.
//!
//! With several threads the file is parsed in chunks, deduplicated by shards
//! of `event_id`, and sessionized by shards of `(user_id, video_id)`: the
//! sessions of different keys are independent, and the output is sorted by
//! `(user_id, video_id, start_ms)` whatever the number of threads.

mod input;

use anyhow::Context;
use hb_common::progress::{Progress, Unit};
use input::Input;
use rustc_hash::FxHasher;
use serde::{de, Deserialize, Deserializer};
use std::hash::{Hash, Hasher};
use std::io::{BufWriter, Write};
use std::path::PathBuf;
use svc_stream::sessionizer::{
    sessionize_sorted, sort_sessions, Event, EventRef, PlaybackState, Session,
};

#[derive(clap::Args, Debug)]
pub struct SessionizeArgs {
    /// Heartbeat JSON Lines (proto field names, `event_time` RFC 3339 UTC); `-` for stdin.
    #[arg(long)]
    pub input: PathBuf,

    /// Where to write the sessions as JSON Lines (default stdout).
    #[arg(long)]
    pub output: Option<PathBuf>,

    /// Gap that starts a new session (`HB_SESSION_GAP`).
    #[command(flatten)]
    pub gap: svc_stream::config::SessionGap,

    /// Fail on the first bad line instead of skipping it.
    #[arg(long)]
    pub strict: bool,

    /// Worker threads (default: the cores this process may run on).
    #[arg(long)]
    pub threads: Option<usize>,
}

/// `state` as the enum name (with or without its `PLAYBACK_STATE_` prefix) or its number.
struct State(PlaybackState);

impl<'de> Deserialize<'de> for State {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl de::Visitor<'_> for Visitor {
            type Value = State;

            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a playback state name or number")
            }

            fn visit_str<E: de::Error>(self, name: &str) -> Result<State, E> {
                name.strip_prefix("PLAYBACK_STATE_")
                    .unwrap_or(name)
                    .parse()
                    .map(State)
                    .map_err(E::custom)
            }

            fn visit_i64<E: de::Error>(self, n: i64) -> Result<State, E> {
                i32::try_from(n)
                    .map_err(|_| format!("invalid state {n}"))
                    .and_then(PlaybackState::try_from)
                    .map(State)
                    .map_err(E::custom)
            }

            fn visit_u64<E: de::Error>(self, n: u64) -> Result<State, E> {
                i64::try_from(n)
                    .map_err(|_| E::custom(format!("invalid state {n}")))
                    .and_then(|n| self.visit_i64(n))
            }
        }
        deserializer.deserialize_any(Visitor)
    }
}

/// One input line. Parsed with `S = &str` (its strings borrowed from the
/// input), and only when a string holds an escape again with `S = String`.
#[derive(Deserialize)]
struct Line<S> {
    event_id: S,
    device_id: S,
    user_id: S,
    video_id: S,
    event_time: S,
    #[serde(default)]
    position_ms: u64,
    state: State,
    #[serde(default)]
    ad_id: S,
}

impl Line<String> {
    fn borrowed(&self) -> Line<&str> {
        Line {
            event_id: &self.event_id,
            device_id: &self.device_id,
            user_id: &self.user_id,
            video_id: &self.video_id,
            event_time: &self.event_time,
            position_ms: self.position_ms,
            state: State(self.state.0),
            ad_id: &self.ad_id,
        }
    }
}

/// A valid line: the heartbeat and what the shards need of it. Plain data
/// (strings borrowed), so a million of them are one allocation to free.
#[derive(Clone, Copy)]
struct Record<'a> {
    event_id: &'a str,
    user_id: &'a str,
    video_id: &'a str,
    device_id: &'a str,
    ad_id: &'a str,
    time_ms: i64,
    position_ms: i64,
    state: PlaybackState,
    /// Hash of its `event_id`: it picks the id shard (see [`shard`]) and
    /// files the id for deduplication.
    id_hash: u64,
    /// The first 8 bytes of its `event_id`, big-endian and zero-padded: it
    /// orders most ties in time without reading the ids.
    id_prefix: u64,
    /// Shard of its `(user_id, video_id)` among `shards` (0 for one).
    key_shard: u32,
}

impl<'a> Record<'a> {
    /// The record of a parsed line, or why the line is not a heartbeat.
    fn new(line: &Line<&'a str>, shards: usize) -> Result<Record<'a>, String> {
        for (name, value) in [
            ("event_id", line.event_id),
            ("user_id", line.user_id),
            ("video_id", line.video_id),
        ] {
            if value.is_empty() {
                return Err(format!("{name} is empty"));
            }
        }
        Ok(Record {
            event_id: line.event_id,
            user_id: line.user_id,
            video_id: line.video_id,
            device_id: line.device_id,
            ad_id: line.ad_id,
            time_ms: hb_common::time::rfc3339_to_ms(line.event_time)?,
            position_ms: i64::try_from(line.position_ms)
                .map_err(|_| "position_ms out of range".to_string())?,
            state: line.state.0,
            id_hash: hash_of(&[line.event_id]),
            id_prefix: prefix_of(line.event_id),
            key_shard: if shards > 1 {
                shard(hash_of(&[line.user_id, line.video_id]), shards) as u32
            } else {
                0
            },
        })
    }

    fn event_ref(&self) -> EventRef<'a> {
        EventRef {
            event_id: self.event_id,
            user_id: self.user_id,
            video_id: self.video_id,
            device_id: self.device_id,
            time_ms: self.time_ms,
            position_ms: self.position_ms,
            state: self.state,
            ad_id: self.ad_id,
        }
    }
}

/// A parsed line: borrowed from the input, or (its strings held escapes)
/// unescaped into a line of its own, with its record's hash and shard.
enum Decoded<'a> {
    Borrowed(Record<'a>),
    Unescaped(Box<Line<String>>, Record<'static>),
}

/// Parses one line, with a reason when it is not a heartbeat.
fn decode(text: &str, shards: usize) -> Result<Decoded<'_>, String> {
    match serde_json::from_str::<Line<&str>>(text) {
        Ok(line) => Record::new(&line, shards).map(Decoded::Borrowed),
        Err(_) => {
            let line: Line<String> = serde_json::from_str(text).map_err(|e| e.to_string())?;
            let record = Record::new(&line.borrowed(), shards)?;
            let placeholder = Record {
                id_hash: record.id_hash,
                key_shard: record.key_shard,
                ..PLACEHOLDER
            };
            Ok(Decoded::Unescaped(Box::new(line), placeholder))
        }
    }
}

/// Parses one line into an event, with a reason when it is not one.
pub fn parse_line(text: &str) -> Result<Event, String> {
    let event = |record: Record| record.event_ref().to_owned_event();
    match decode(text, 1)? {
        Decoded::Borrowed(record) => Ok(event(record)),
        Decoded::Unescaped(line, _) => Ok(event(Record::new(&line.borrowed(), 1)?)),
    }
}

/// The parsed lines of one chunk of the input.
#[derive(Default)]
struct Chunk<'a> {
    /// Every valid line in order; a line with escapes holds a placeholder
    /// until [`Chunk::unescaped`] is made records.
    records: Vec<Record<'a>>,
    /// Lines whose strings held escapes, with their index in `records`.
    unescaped: Vec<(usize, Box<Line<String>>)>,
    /// With several shards: the index in `records` of each line, by the
    /// shard of its `event_id`, so each deduplicating thread reads only its
    /// own share.
    by_id_shard: Vec<Vec<u32>>,
    /// Bad lines: number within the chunk (from 0) and reason.
    bad: Vec<(usize, String)>,
    /// Lines in the chunk, blank ones included.
    lines: usize,
}

/// Bytes read or parsed between two progress counts: a count per block,
/// never per line, keeps the progress off the parser's path.
const PROGRESS_BLOCK: usize = 4 << 20;

/// Parses `text` in blocks of about [`PROGRESS_BLOCK`], counting each.
fn parse_chunk<'t>(text: &'t [u8], strict: bool, shards: usize, progress: &Progress) -> Chunk<'t> {
    // Lines are rarely shorter than 128 bytes: one allocation, never moved.
    let lines = text.len() / 128;
    let mut chunk = Chunk {
        records: Vec::with_capacity(lines),
        by_id_shard: if shards > 1 {
            vec![Vec::with_capacity(lines / shards); shards]
        } else {
            Vec::new()
        },
        ..Chunk::default()
    };
    let blocks = text.len().div_ceil(PROGRESS_BLOCK).max(1);
    for block in split_lines(text, blocks) {
        let complete = parse_block(block, strict, shards, &mut chunk);
        progress.inc(block.len() as u64);
        if !complete {
            break;
        }
    }
    chunk
}

/// Parses the lines of `block` into `chunk`, numbering them on from the
/// lines it holds; false when `strict` stopped at a bad line.
fn parse_block<'t>(block: &'t [u8], strict: bool, shards: usize, chunk: &mut Chunk<'t>) -> bool {
    let first = chunk.lines;
    let block = block.strip_suffix(b"\n").unwrap_or(block);
    // The whole block is checked in one pass rather than one per line; a
    // block that is not UTF-8 is checked again by line, to say which.
    let lines: Box<dyn Iterator<Item = Result<&str, String>>> = match std::str::from_utf8(block) {
        Ok(text) => Box::new(text.split('\n').map(Ok)),
        Err(_) => Box::new(block.split(|&b| b == b'\n').map(|line| {
            std::str::from_utf8(line).map_err(|e| format!("the line is not UTF-8: {e}"))
        })),
    };
    for (number, line) in lines.enumerate() {
        let number = first + number;
        chunk.lines = number + 1;
        if line.as_ref().is_ok_and(|line| line.trim_ascii().is_empty()) {
            continue;
        }
        let record = match line.and_then(|line| decode(line, shards)) {
            Ok(Decoded::Borrowed(record)) => record,
            Ok(Decoded::Unescaped(line, placeholder)) => {
                chunk.unescaped.push((chunk.records.len(), line));
                placeholder
            }
            Err(reason) => {
                chunk.bad.push((number, reason));
                if strict {
                    return false;
                }
                continue;
            }
        };
        if shards > 1 {
            chunk.by_id_shard[shard(record.id_hash, shards)].push(chunk.records.len() as u32);
        }
        chunk.records.push(record);
    }
    true
}

/// Stands for an unescaped line in [`Chunk::records`] until it is replaced.
const PLACEHOLDER: Record<'static> = Record {
    event_id: "",
    user_id: "",
    video_id: "",
    device_id: "",
    ad_id: "",
    time_ms: 0,
    position_ms: 0,
    state: PlaybackState::Playing,
    id_hash: 0,
    id_prefix: 0,
    key_shard: 0,
};

/// `text` cut into `n` pieces of about equal size, each ending at a line end.
fn split_lines(text: &[u8], n: usize) -> Vec<&[u8]> {
    let mut pieces = Vec::with_capacity(n);
    let mut rest = text;
    for left in (1..=n).rev() {
        if left == 1 || rest.is_empty() {
            pieces.push(rest);
            break;
        }
        let cut = rest.len() / left;
        let end = rest[cut..]
            .iter()
            .position(|&b| b == b'\n')
            .map_or(rest.len(), |at| cut + at + 1);
        if end == rest.len() {
            pieces.push(rest);
            break;
        }
        let (piece, tail) = rest.split_at(end);
        pieces.push(piece);
        rest = tail;
    }
    pieces
}

/// The first 8 bytes of `text`, big-endian, zero-padded: ordering two of
/// these orders the texts, unless they are equal.
fn prefix_of(text: &str) -> u64 {
    let mut bytes = [0; 8];
    let head = &text.as_bytes()[..text.len().min(8)];
    bytes[..head.len()].copy_from_slice(head);
    u64::from_be_bytes(bytes)
}

fn hash_of(parts: &[&str]) -> u64 {
    let mut hasher = FxHasher::default();
    parts.hash(&mut hasher);
    hasher.finish()
}

/// Which of `n` shards a hash falls in (its high bits: FxHash mixes them best).
fn shard(hash: u64, n: usize) -> usize {
    (((hash >> 32) * n as u64) >> 32) as usize
}

/// What a run found: the sessions, the heartbeats read, and the bad lines
/// (line number from 1, reason; only the first one when strict).
type Sessionized = (Vec<Session>, usize, Vec<(usize, String)>);

/// Sessions of the heartbeats in `text`, on `threads` threads.
#[cfg(test)]
fn sessionize_text(text: &str, gap_ms: i64, threads: usize, strict: bool) -> Sessionized {
    sessionize_pieces(
        &split_lines(text.as_bytes(), threads.max(1)),
        gap_ms,
        strict,
        &Progress::hidden(),
    )
}

/// Sessions of the heartbeats in consecutive pieces of the input (each
/// ending at a line end), one thread per piece; `progress` counts the bytes
/// parsed.
fn sessionize_pieces(
    pieces: &[&[u8]],
    gap_ms: i64,
    strict: bool,
    progress: &Progress,
) -> Sessionized {
    let n = pieces.len().max(1);
    let chunks = in_parallel(pieces, |piece| parse_chunk(piece, strict, n, progress));
    let mut bad = Vec::new();
    let mut first_line = 1;
    for chunk in &chunks {
        bad.extend(
            chunk
                .bad
                .iter()
                .map(|(number, reason)| (first_line + number, reason.clone())),
        );
        first_line += chunk.lines;
    }
    if strict && !bad.is_empty() {
        bad.truncate(1);
        return (Vec::new(), 0, bad);
    }
    progress.set_stage("sessionizing");
    let unescaped: Vec<Vec<Record>> = chunks
        .iter()
        .map(|chunk| {
            chunk
                .unescaped
                .iter()
                .map(|(_, line)| Record::new(&line.borrowed(), n).expect("checked when parsed"))
                .collect()
        })
        .collect();
    let mut records: Vec<&Record> =
        Vec::with_capacity(chunks.iter().map(|c| c.records.len()).sum());
    for (chunk, unescaped) in chunks.iter().zip(&unescaped) {
        let first = records.len();
        records.extend(&chunk.records);
        for ((index, _), record) in chunk.unescaped.iter().zip(unescaped) {
            records[first + index] = record;
        }
    }
    let sessions = if n == 1 {
        let all: Vec<u32> = (0..records.len() as u32).collect();
        sessionize_shard(&records, &[first_copies(&records, &all, 1)], 0, gap_ms)
    } else {
        // The first copy of an event_id counts: each thread keeps the first
        // copies of its share of the ids, filed by key shard; then each
        // thread sessionizes one key shard.
        let by_id = in_parallel(0..n, |s| {
            let mut first = 0;
            let share: Vec<u32> = chunks
                .iter()
                .flat_map(|chunk| {
                    let offset = first;
                    first += chunk.records.len() as u32;
                    chunk.by_id_shard[s]
                        .iter()
                        .map(move |&index| offset + index)
                })
                .collect();
            first_copies(&records, &share, n)
        });
        let mut sessions: Vec<Session> =
            in_parallel(0..n, |k| sessionize_shard(&records, &by_id, k, gap_ms))
                .into_iter()
                .flatten()
                .collect();
        sort_sessions(&mut sessions);
        sessions
    };
    let heartbeats = records.len();
    (sessions, heartbeats, bad)
}

/// Of the records at `share` (indices in input order, every record of some
/// ids), the indices of the first copies of each id, filed by key shard (of
/// `n`).
fn first_copies(records: &[&Record], share: &[u32], n: usize) -> Vec<Vec<u32>> {
    let mut seen = IdSet::with_capacity(share.len());
    let mut by_key = vec![Vec::with_capacity(share.len() / n + 1); n];
    for &index in share {
        let record = records[index as usize];
        let is_copy = |seen: u32| {
            let other = records[seen as usize];
            other.id_hash == record.id_hash && other.event_id == record.event_id
        };
        if seen.insert(record.id_hash, index, is_copy) {
            by_key[record.key_shard as usize].push(index);
        }
    }
    by_key
}

/// The records seen, by the hash of their id: open addressing over one
/// array, so an insert reads one cache line. An entry is the high half of
/// the hash (it tells most other ids apart without reading their record)
/// and the record's index + 1 (0: empty).
struct IdSet {
    entries: Vec<u64>,
    shift: u32,
}

impl IdSet {
    /// At most half full with `len` records.
    fn with_capacity(len: usize) -> IdSet {
        let size = (2 * len).next_power_of_two().max(16);
        // Written, not allocated zeroed: zeroed pages are mapped to the
        // shared zero page on their first read, so the insert that then
        // writes faults a second time and flushes the other threads' TLBs.
        // (`black_box` keeps the compiler from making the fill a zeroed
        // allocation again.)
        let mut entries = Vec::with_capacity(size);
        entries.resize(size, std::hint::black_box(0));
        IdSet {
            entries,
            shift: 64 - size.trailing_zeros(),
        }
    }

    /// Records `index` unless `is_copy` confirms a record seen with this
    /// hash; true when it was recorded.
    fn insert(&mut self, hash: u64, index: u32, is_copy: impl Fn(u32) -> bool) -> bool {
        let tag = hash >> 32;
        let mask = self.entries.len() - 1;
        // Multiply-shift: every bit of the hash picks the home.
        let mut at = (hash.wrapping_mul(0x9e37_79b9_7f4a_7c15) >> self.shift) as usize;
        loop {
            let entry = self.entries[at];
            if entry == 0 {
                self.entries[at] = tag << 32 | (u64::from(index) + 1);
                return true;
            }
            if entry >> 32 == tag && is_copy((entry as u32).wrapping_sub(1)) {
                return false;
            }
            at = (at + 1) & mask;
        }
    }
}

/// The sessions of key shard `k`: its first copies (from every id shard)
/// sorted by `(time, event_id)` and pushed in batches.
fn sessionize_shard(
    records: &[&Record],
    by_id: &[Vec<Vec<u32>>],
    k: usize,
    gap_ms: i64,
) -> Vec<Session> {
    let mut order: Vec<(i64, u64, u32)> = by_id
        .iter()
        .flat_map(|shards| shards[k].iter())
        .map(|&index| {
            let record = records[index as usize];
            (record.time_ms, record.id_prefix, index)
        })
        .collect();
    order.sort_unstable_by(|a, b| {
        (a.0, a.1).cmp(&(b.0, b.1)).then_with(|| {
            records[a.2 as usize]
                .event_id
                .cmp(records[b.2 as usize].event_id)
        })
    });
    sessionize_sorted(
        order
            .iter()
            .map(|&(_, _, index)| records[index as usize].event_ref()),
        gap_ms,
    )
}

/// The input's size in bytes, when it is a file.
fn input_len(path: &PathBuf) -> Option<u64> {
    if path.as_os_str() == "-" {
        return None;
    }
    std::fs::metadata(path).ok().map(|meta| meta.len())
}

/// The sessions as JSON Lines, in order, in up to `threads` parts written
/// side by side.
fn session_lines(sessions: &[Session], threads: usize) -> serde_json::Result<Vec<Vec<u8>>> {
    let part = sessions.len().div_ceil(threads).max(1);
    in_parallel(sessions.chunks(part), |sessions| {
        let mut bytes = Vec::with_capacity(sessions.len() * 256);
        for session in sessions {
            serde_json::to_writer(&mut bytes, session)?;
            bytes.push(b'\n');
        }
        Ok(bytes)
    })
    .into_iter()
    .collect()
}

/// `work` on each item, each on a thread of its own; the results in the
/// items' order.
fn in_parallel<T: Send, R: Send>(
    items: impl IntoIterator<Item = T>,
    work: impl Fn(T) -> R + Sync,
) -> Vec<R> {
    let work = &work;
    std::thread::scope(|scope| {
        let workers: Vec<_> = items
            .into_iter()
            .map(|item| scope.spawn(move || work(item)))
            .collect();
        workers
            .into_iter()
            .map(|worker| worker.join().expect("worker thread"))
            .collect()
    })
}

pub fn run(args: SessionizeArgs) -> anyhow::Result<()> {
    let threads = args
        .threads
        .unwrap_or_else(|| {
            std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get)
        })
        .max(1);
    let progress = Progress::start("sessionize", input_len(&args.input), Unit::Bytes);
    progress.set_stage("reading");
    let input = Input::open(&args.input, &progress)?;
    if input.counted() {
        progress.restart("parsing", Some(input.bytes().len() as u64));
    } else {
        progress.set_stage("parsing");
    }
    let pieces = split_lines(input.bytes(), threads);
    let (sessions, heartbeats, bad) =
        sessionize_pieces(&pieces, args.gap.ms(), args.strict, &progress);
    if args.strict {
        if let Some((number, reason)) = bad.first() {
            anyhow::bail!("line {number}: {reason}");
        }
    }
    for (number, reason) in bad.iter().take(20) {
        progress.note(&format!(
            "hbmesh sessionize: skipping line {number}: {reason}"
        ));
    }
    let sink: Box<dyn Write> = match &args.output {
        Some(path) => Box::new(
            std::fs::File::create(path).with_context(|| format!("creating {}", path.display()))?,
        ),
        None => Box::new(std::io::stdout().lock()),
    };
    progress.set_stage("writing sessions");
    let mut out = BufWriter::with_capacity(1 << 20, sink);
    for part in session_lines(&sessions, threads)? {
        out.write_all(&part)?;
    }
    out.flush()?;
    progress.finish();
    eprintln!(
        "hbmesh sessionize: {heartbeats} heartbeats -> {} sessions{}",
        sessions.len(),
        if bad.is_empty() {
            String::new()
        } else {
            format!(" ({} bad lines skipped)", bad.len())
        }
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_gap_is_the_stream_services_setting_under_either_flag() {
        #[derive(clap::Parser)]
        struct Cli {
            #[command(flatten)]
            sessionize: SessionizeArgs,
        }
        for flag in ["--gap", "--session-gap"] {
            let cli = <Cli as clap::Parser>::try_parse_from([
                "sessionize",
                "--input",
                "in.jsonl",
                flag,
                "5m",
            ])
            .unwrap();
            assert_eq!(cli.sessionize.gap.ms(), 300_000);
        }
    }

    #[test]
    fn a_line_with_proto_names_parses() {
        let event = parse_line(
            r#"{"event_id":"e","device_id":"d","user_id":"u","video_id":"v","event_time":"2026-01-01T00:00:05Z","position_ms":5000,"state":"PLAYING","ad_id":""}"#,
        )
        .unwrap();
        assert_eq!(event.time_ms, 1_767_225_605_000);
        assert_eq!(event.state, PlaybackState::Playing);
        assert_eq!(event.position_ms, 5_000);
    }

    fn state_of(value: &str) -> Result<PlaybackState, String> {
        parse_line(&format!(
            r#"{{"event_id":"e","device_id":"d","user_id":"u","video_id":"v","event_time":"2026-01-01T00:00:05Z","state":{value}}}"#
        ))
        .map(|event| event.state)
    }

    #[test]
    fn numeric_and_prefixed_states_parse() {
        assert_eq!(state_of("2").unwrap(), PlaybackState::Paused);
        assert_eq!(
            state_of(r#""PLAYBACK_STATE_ENDED""#).unwrap(),
            PlaybackState::Ended
        );
        assert!(state_of(r#""PLAYBACK_STATE_UNSPECIFIED""#).is_err());
        assert!(state_of("99").is_err());
        assert!(state_of("null").is_err());
    }

    #[test]
    fn escaped_strings_are_unescaped() {
        let event = parse_line(
            r#"{"event_id":"e\"1","device_id":"d","user_id":"\u00fc","video_id":"v","event_time":"2026-01-01T00:00:05Z","state":1}"#,
        )
        .unwrap();
        assert_eq!(event.event_id, "e\"1");
        assert_eq!(event.user_id, "ü");
    }

    #[test]
    fn bad_lines_say_why() {
        assert!(parse_line("not json").is_err());
        let missing = parse_line(
            r#"{"event_id":"","device_id":"d","user_id":"u","video_id":"v","event_time":"2026-01-01T00:00:05Z","state":"PLAYING"}"#,
        );
        assert_eq!(missing.unwrap_err(), "event_id is empty");
    }

    #[test]
    fn the_input_splits_at_line_ends_into_the_whole_text() {
        let text = b"a\nbb\nccc\ndddd\n\ne";
        for n in 1..6 {
            let pieces = split_lines(text, n);
            assert_eq!(pieces.concat(), text);
            assert!(pieces.len() <= n);
            assert!(pieces[..pieces.len() - 1]
                .iter()
                .all(|p| p.ends_with(b"\n")));
        }
    }

    #[test]
    fn any_number_of_threads_gives_the_same_sessions_and_bad_line_numbers() {
        let lines = |escaped: bool| {
            let mut text = String::new();
            for i in 0..3_000u64 {
                let (user, video) = (i % 7, i % 5);
                // Every 7th line spells its user id with an escape ("\u0075"
                // is "u") when `escaped`.
                let user_id = if escaped && i % 7 == 3 {
                    format!("\\u0075{user}")
                } else {
                    format!("u{user}")
                };
                // Every 10th heartbeat is resent; every 500th line is bad.
                let copies = if i % 10 == 0 { 2 } else { 1 };
                for _ in 0..copies {
                    text.push_str(&format!(
                        r#"{{"event_id":"e{i}","device_id":"d{user}","user_id":"{user_id}","video_id":"v{video}","event_time":"{}","position_ms":{},"state":"PLAYING","ad_id":""}}"#,
                        hb_common::time::ms_to_rfc3339(1_767_225_600_000 + (i as i64 % 97) * 13_000 + (i as i64 / 97) * 900_000),
                        i * 1000,
                    ));
                    text.push('\n');
                }
                if i % 500 == 0 {
                    text.push_str("{\"broken\n");
                }
            }
            text
        };
        let (one, heartbeats, bad) = sessionize_text(&lines(false), 600_000, 1, false);
        assert_eq!(heartbeats, 3_300);
        assert_eq!(bad.len(), 6);
        assert!(!one.is_empty());
        let text = lines(true);
        assert!(text.contains("\\u0075"));
        for threads in [1, 2, 3, 4] {
            let (many, heartbeats_many, bad_many) = sessionize_text(&text, 600_000, threads, false);
            assert_eq!(many, one, "{threads} threads");
            assert_eq!(heartbeats_many, heartbeats);
            assert_eq!(bad_many, bad);
        }
    }

    #[test]
    fn line_numbers_run_on_across_the_blocks_counted_for_progress() {
        let good = |i: usize| {
            format!(
                r#"{{"event_id":"e{i}","device_id":"d","user_id":"u{}","video_id":"v","event_time":"2026-01-01T00:00:05Z","state":1}}"#,
                i % 50
            )
        };
        let line_len = good(0).len() + 1;
        // Two and a half blocks, with a bad line in the first, the second
        // and the last block.
        let lines = PROGRESS_BLOCK * 5 / 2 / line_len;
        let bad_at = [10, PROGRESS_BLOCK / line_len + 7, lines - 3];
        let text: String = (0..lines)
            .map(|i| {
                if bad_at.contains(&i) {
                    "nope\n".to_string()
                } else {
                    good(i) + "\n"
                }
            })
            .collect();
        let expected: Vec<usize> = bad_at.iter().map(|i| i + 1).collect();
        for threads in [1, 2] {
            let (_, heartbeats, bad) = sessionize_text(&text, 600_000, threads, false);
            assert_eq!(heartbeats, lines - 3, "{threads} threads");
            let numbers: Vec<usize> = bad.iter().map(|(number, _)| *number).collect();
            assert_eq!(numbers, expected, "{threads} threads");
            let (_, _, strict) = sessionize_text(&text, 600_000, threads, true);
            assert_eq!(strict.len(), 1);
            assert_eq!(strict[0].0, expected[0], "{threads} threads");
        }
    }

    #[test]
    fn a_line_that_is_not_utf8_is_skipped_and_named() {
        let good = |i: usize| {
            format!(
                r#"{{"event_id":"e{i}","device_id":"d","user_id":"u","video_id":"v","event_time":"2026-01-01T00:00:0{i}Z","state":1}}"#
            )
            .into_bytes()
        };
        let mut text = Vec::new();
        for i in 0..6 {
            text.extend(if i == 3 {
                b"{\"event_id\":\"\xff\"}".to_vec()
            } else {
                good(i)
            });
            text.push(b'\n');
        }
        for threads in [1, 2] {
            let (sessions, heartbeats, bad) = sessionize_pieces(
                &split_lines(&text, threads),
                600_000,
                false,
                &Progress::hidden(),
            );
            assert_eq!(heartbeats, 5, "{threads} threads");
            assert_eq!(sessions.len(), 1);
            assert_eq!(bad.len(), 1);
            assert_eq!(bad[0].0, 4);
            assert!(bad[0].1.contains("not UTF-8"), "{}", bad[0].1);
        }
    }

    #[test]
    fn the_id_set_keeps_one_record_per_id_whatever_the_hashes_share() {
        // Ids 0..300 under 3 hashes (full collisions: only `is_copy` tells
        // them apart), each id seen twice; then 4,000 distinct hashes that
        // fill and wrap the table.
        let ids: Vec<u32> = (0..300).chain(0..300).collect();
        let mut set = IdSet::with_capacity(ids.len() + 4_000);
        let recorded: Vec<bool> = ids
            .iter()
            .enumerate()
            .map(|(index, &id)| {
                set.insert(u64::from(id % 3) << 40, index as u32, |seen| {
                    ids[seen as usize] == id
                })
            })
            .collect();
        assert!(recorded[..300].iter().all(|&r| r));
        assert!(recorded[300..].iter().all(|&r| !r));
        for index in 0..4_000u32 {
            let hash = u64::from(index).wrapping_mul(0xff51_afd7_ed55_8ccd);
            assert!(set.insert(hash, 1_000 + index, |_| false));
            assert!(!set.insert(hash, 9_000 + index, |seen| seen == 1_000 + index));
        }
    }

    #[test]
    fn strict_reports_the_first_bad_line_whatever_the_threads() {
        let good = r#"{"event_id":"e","device_id":"d","user_id":"u","video_id":"v","event_time":"2026-01-01T00:00:05Z","state":1}"#;
        let text = format!("{good}\n{good}\nnope\n{good}\nnope again\n");
        for threads in [1, 2, 3] {
            let (_, _, bad) = sessionize_text(&text, 600_000, threads, true);
            assert_eq!(bad.len(), 1);
            assert_eq!(bad[0].0, 3, "{threads} threads");
        }
    }
}
