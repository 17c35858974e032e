//! Ids kept inline when short (UUIDs and the usual ids are), so holding,
//! comparing and dropping them touches no other memory: per heartbeat, memory
//! latency is what the sessionizer spends most on.

use std::fmt;

/// Longest id stored inline (a UUID is 36 bytes).
const INLINE: usize = 38;

/// An immutable id.
#[derive(Clone)]
pub(super) enum Id {
    Inline { len: u8, bytes: [u8; INLINE] },
    Heap(Box<str>),
}

impl Default for Id {
    fn default() -> Self {
        Id::Inline {
            len: 0,
            bytes: [0; INLINE],
        }
    }
}

impl Id {
    #[inline]
    pub(super) fn new(text: &str) -> Self {
        if text.len() <= INLINE {
            let mut bytes = [0; INLINE];
            bytes[..text.len()].copy_from_slice(text.as_bytes());
            Id::Inline {
                len: text.len() as u8,
                bytes,
            }
        } else {
            Id::Heap(text.into())
        }
    }

    #[inline]
    pub(super) fn as_bytes(&self) -> &[u8] {
        match self {
            Id::Inline { len, bytes } => &bytes[..usize::from(*len)],
            Id::Heap(text) => text.as_bytes(),
        }
    }

    pub(super) fn as_str(&self) -> &str {
        match self {
            Id::Inline { len, bytes } => {
                std::str::from_utf8(&bytes[..usize::from(*len)]).expect("copied from a str")
            }
            Id::Heap(text) => text,
        }
    }

    #[inline]
    pub(super) fn is(&self, text: &str) -> bool {
        self.as_bytes() == text.as_bytes()
    }
}

/// The id of a held heartbeat. Clients send canonical UUIDs (36 characters,
/// lowercase hex), held as their 16 bytes; any other id is held as text.
/// Both compare like the text they stand for, which orders heartbeats of the
/// same time, and a canonical UUID has exactly one form, so equality is exact.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum EventId<'a> {
    Uuid([u8; 16]),
    Text(&'a str),
}

/// Positions of the hyphens in a canonical UUID.
const HYPHENS: [usize; 4] = [8, 13, 18, 23];

#[inline]
fn hex_value(digit: u8) -> Option<u8> {
    match digit {
        b'0'..=b'9' => Some(digit - b'0'),
        b'a'..=b'f' => Some(digit - b'a' + 10),
        _ => None,
    }
}

/// The 16 bytes of a canonical UUID's text; `None` for any other text.
#[inline]
pub(super) fn pack_uuid(text: &[u8]) -> Option<[u8; 16]> {
    if text.len() != 36 || HYPHENS.iter().any(|&at| text[at] != b'-') {
        return None;
    }
    let mut bytes = [0u8; 16];
    let mut digits = text.iter().filter(|&&c| c != b'-');
    for byte in &mut bytes {
        let high = hex_value(*digits.next()?)?;
        let low = hex_value(*digits.next()?)?;
        *byte = high << 4 | low;
    }
    Some(bytes)
}

/// The canonical text of 16 UUID bytes.
fn unpack_uuid(bytes: &[u8; 16]) -> [u8; 36] {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut text = [b'-'; 36];
    let mut at = 0;
    for byte in bytes {
        if HYPHENS.contains(&at) {
            at += 1;
        }
        text[at] = DIGITS[usize::from(byte >> 4)];
        text[at + 1] = DIGITS[usize::from(byte & 0xf)];
        at += 2;
    }
    text
}

impl<'a> EventId<'a> {
    #[cfg(test)]
    fn new(text: &'a str) -> Self {
        match pack_uuid(text.as_bytes()) {
            Some(bytes) => EventId::Uuid(bytes),
            None => EventId::Text(text),
        }
    }

    /// True when this is the id `text`.
    #[inline]
    pub(super) fn is(&self, text: &str) -> bool {
        match self {
            EventId::Uuid(bytes) => pack_uuid(text.as_bytes()).is_some_and(|other| other == *bytes),
            EventId::Text(own) => *own == text,
        }
    }

    /// Orders this id against `text` as their texts order.
    #[inline]
    pub(super) fn cmp_text(&self, text: &[u8]) -> std::cmp::Ordering {
        match self {
            EventId::Uuid(bytes) => match pack_uuid(text) {
                Some(other) => bytes.cmp(&other),
                None => unpack_uuid(bytes).as_slice().cmp(text),
            },
            EventId::Text(own) => own.as_bytes().cmp(text),
        }
    }
}

impl fmt::Debug for EventId<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            EventId::Uuid(bytes) => {
                let text = unpack_uuid(bytes);
                fmt::Debug::fmt(std::str::from_utf8(&text).expect("hex digits"), f)
            }
            EventId::Text(text) => fmt::Debug::fmt(text, f),
        }
    }
}

impl fmt::Debug for Id {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self.as_str(), f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_ids_are_inline_and_long_ids_survive_on_the_heap() {
        let uuid = "0f8fad5b-d9cb-469f-a165-70867728950e";
        assert!(matches!(Id::new(uuid), Id::Inline { .. }));
        assert_eq!(Id::new(uuid).as_str(), uuid);
        let long = "x".repeat(INLINE + 1);
        assert!(matches!(Id::new(&long), Id::Heap(_)));
        assert!(Id::new(&long).is(&long));
        assert!(Id::new("").is(""));
        assert!(!Id::new("ab").is("abc"));
        assert!(Id::new("ab").as_bytes() < Id::new("b").as_bytes());
    }

    #[test]
    fn event_ids_order_and_match_like_their_text() {
        let ids = [
            "0f8fad5b-d9cb-469f-a165-70867728950e",
            "0f8fad5b-d9cb-469f-a165-70867728950f",
            "ffffffff-ffff-ffff-ffff-ffffffffffff",
            "00000000-0000-0000-0000-000000000000",
            "0F8FAD5B-D9CB-469F-A165-70867728950E",
            "0f8fad5b-d9cb-469f-a165-70867728950",
            "0f8fad5b-d9cb-469f-a165-70867728950e0",
            "0f8fad5bxd9cb-469f-a165-70867728950e",
            "0f8fad5b-d9cb-469f-a165-7086772895g0",
            "0f8fad5b",
            "",
            "e",
            "~",
        ];
        assert!(matches!(EventId::new(ids[0]), EventId::Uuid(_)));
        assert!(matches!(EventId::new(ids[3]), EventId::Uuid(_)));
        assert!(matches!(EventId::new(ids[4]), EventId::Text(_)));
        assert!(matches!(EventId::new(ids[8]), EventId::Text(_)));
        for a in ids {
            let held = EventId::new(a);
            assert_eq!(format!("{held:?}"), format!("{a:?}"));
            for b in ids {
                assert_eq!(held.is(b), a == b, "{a} is {b}");
                assert_eq!(held.cmp_text(b.as_bytes()), a.cmp(b), "{a} against {b}");
            }
        }
    }

    #[test]
    fn an_id_takes_no_more_than_forty_bytes() {
        assert!(std::mem::size_of::<Id>() <= 40);
    }
}
