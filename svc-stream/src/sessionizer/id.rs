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

/// The id of a held heartbeat. An id of 32 lowercase hex digits, as a
/// canonical UUID (hyphens at 8, 13, 18, 23) or plain, is held as its 16
/// bytes; any other id as text. Both compare like the text they stand for,
/// which orders heartbeats of the same time, and each packed form has exactly
/// one text, so equality is exact.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum EventId<'a> {
    Hex(HexId),
    Text(&'a str),
}

/// 32 hex digits as 16 bytes, and whether their text is hyphenated.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(super) struct HexId {
    pub(super) bytes: [u8; 16],
    pub(super) hyphens: bool,
}

/// Positions of the hyphens in a canonical UUID.
const HYPHENS: [usize; 4] = [8, 13, 18, 23];

/// Value of each byte as a hex digit; [`NOT_HEX`] for any other byte.
const HEX_VALUE: [u8; 256] = {
    let mut table = [NOT_HEX; 256];
    let mut digit = 0;
    while digit < 16 {
        table[b"0123456789abcdef"[digit] as usize] = digit as u8;
        digit += 1;
    }
    table
};
const NOT_HEX: u8 = 0x80;

/// The 16 bytes of a canonical UUID's text or of 32 plain lowercase hex
/// digits; `None` for any other text. Runs once per held heartbeat, so it
/// looks every digit up without a branch.
#[inline]
pub(super) fn pack_hex(text: &[u8]) -> Option<HexId> {
    let mut digits = [0u8; 32];
    let hyphens = match text.len() {
        32 => {
            digits.copy_from_slice(text);
            false
        }
        36 if HYPHENS.iter().all(|&at| text[at] == b'-') => {
            digits[..8].copy_from_slice(&text[..8]);
            digits[8..12].copy_from_slice(&text[9..13]);
            digits[12..16].copy_from_slice(&text[14..18]);
            digits[16..20].copy_from_slice(&text[19..23]);
            digits[20..].copy_from_slice(&text[24..]);
            true
        }
        _ => return None,
    };
    let (mut bytes, mut seen) = ([0u8; 16], 0u8);
    for (byte, pair) in bytes.iter_mut().zip(digits.chunks_exact(2)) {
        let (high, low) = (
            HEX_VALUE[usize::from(pair[0])],
            HEX_VALUE[usize::from(pair[1])],
        );
        seen |= high | low;
        *byte = high << 4 | low;
    }
    (seen & NOT_HEX == 0).then_some(HexId { bytes, hyphens })
}

impl HexId {
    /// The text these bytes stand for, in the first `len` bytes.
    fn text(&self) -> ([u8; 36], usize) {
        const DIGITS: &[u8; 16] = b"0123456789abcdef";
        let mut text = [b'-'; 36];
        let mut at = 0;
        for byte in &self.bytes {
            if self.hyphens && HYPHENS.contains(&at) {
                at += 1;
            }
            text[at] = DIGITS[usize::from(byte >> 4)];
            text[at + 1] = DIGITS[usize::from(byte & 0xf)];
            at += 2;
        }
        (text, at)
    }
}

impl<'a> EventId<'a> {
    #[cfg(test)]
    fn new(text: &'a str) -> Self {
        match pack_hex(text.as_bytes()) {
            Some(hex) => EventId::Hex(hex),
            None => EventId::Text(text),
        }
    }

    /// True when this is the id `text`.
    #[inline]
    pub(super) fn is(&self, text: &str) -> bool {
        match self {
            EventId::Hex(hex) => pack_hex(text.as_bytes()) == Some(*hex),
            EventId::Text(own) => *own == text,
        }
    }

    /// Orders this id against `text` as their texts order.
    #[inline]
    pub(super) fn cmp_text(&self, text: &[u8]) -> std::cmp::Ordering {
        match self {
            EventId::Hex(hex) => match pack_hex(text) {
                // One form on both sides: hex digits order like their values.
                Some(other) if other.hyphens == hex.hyphens => hex.bytes.cmp(&other.bytes),
                _ => {
                    let (own, len) = hex.text();
                    own[..len].cmp(text)
                }
            },
            EventId::Text(own) => own.as_bytes().cmp(text),
        }
    }
}

impl fmt::Debug for EventId<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            EventId::Hex(hex) => {
                let (text, len) = hex.text();
                fmt::Debug::fmt(std::str::from_utf8(&text[..len]).expect("hex digits"), f)
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
            "0f8fad5bd9cb469fa16570867728950e",
            "0f8fad5bd9cb469fa16570867728950f",
            "0f8fad5bd9cb469fa16570867728950",
            "0F8FAD5BD9CB469FA16570867728950E",
            "0f8fad5b-d9cb469fa16570867728950e",
            "",
            "e",
            "~",
        ];
        assert!(matches!(EventId::new(ids[0]), EventId::Hex(_)));
        assert!(matches!(EventId::new(ids[3]), EventId::Hex(_)));
        assert!(matches!(EventId::new(ids[10]), EventId::Hex(_)));
        assert!(matches!(EventId::new(ids[12]), EventId::Text(_)));
        assert!(matches!(EventId::new(ids[13]), EventId::Text(_)));
        assert!(matches!(EventId::new(ids[14]), EventId::Text(_)));
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
