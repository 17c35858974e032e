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
    fn an_id_takes_no_more_than_forty_bytes() {
        assert!(std::mem::size_of::<Id>() <= 40);
    }
}
