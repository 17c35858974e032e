//! The whole input of `hbmesh sessionize` as one byte slice. A regular file
//! is mapped: reading it would copy every page into heap pages the kernel
//! first zeroes, and with the map the parser threads fault the file's pages
//! in where they read, side by side. Anything else (stdin, a pipe) is read.
// The one `unsafe` of this crate: mapping the file.
#![allow(unsafe_code)]

use anyhow::Context;
use hb_common::progress::Progress;
use std::io::Read;
use std::path::Path;

pub(super) enum Input {
    Mapped(memmap2::Mmap),
    Read(Vec<u8>),
}

impl Input {
    /// `path`, or stdin for `-`; `progress` counts the bytes read (a mapped
    /// file is counted as it is parsed instead).
    pub(super) fn open(path: &Path, progress: &Progress) -> anyhow::Result<Input> {
        if path.as_os_str() == "-" {
            return read_all(std::io::stdin().lock(), progress).context("reading stdin");
        }
        let file =
            std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
        let meta = file.metadata()?;
        if !meta.is_file() || meta.len() == 0 {
            return read_all(file, progress).with_context(|| format!("reading {}", path.display()));
        }
        // SAFETY: the map is only read, and lives as long as the slices taken
        // from it. A file that another process truncates while it is read
        // ends this process (SIGBUS), as for any program that maps its input.
        let map = unsafe { memmap2::Mmap::map(&file) }
            .with_context(|| format!("mapping {}", path.display()))?;
        // Only a hint: the parsers read front to back.
        let _ = map.advise(memmap2::Advice::Sequential);
        Ok(Input::Mapped(map))
    }

    pub(super) fn bytes(&self) -> &[u8] {
        match self {
            Input::Mapped(map) => map,
            Input::Read(bytes) => bytes,
        }
    }

    /// True when the bytes were counted while read.
    pub(super) fn counted(&self) -> bool {
        matches!(self, Input::Read(_))
    }
}

fn read_all(from: impl Read, progress: &Progress) -> std::io::Result<Input> {
    let mut bytes = Vec::new();
    Counted {
        inner: from,
        progress,
    }
    .read_to_end(&mut bytes)?;
    Ok(Input::Read(bytes))
}

/// Counts the bytes read through it, per read call (a pipe's buffer).
struct Counted<'p, R> {
    inner: R,
    progress: &'p Progress,
}

impl<R: Read> Read for Counted<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.progress.inc(n as u64);
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_file_is_mapped_whole_and_an_empty_one_read() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("in.jsonl");
        let text: String = (0..5_000).map(|i| format!("line {i}\n")).collect();
        std::fs::write(&path, &text).unwrap();
        let input = Input::open(&path, &Progress::hidden()).unwrap();
        assert!(!input.counted());
        assert_eq!(input.bytes(), text.as_bytes());
        std::fs::write(&path, "").unwrap();
        let empty = Input::open(&path, &Progress::hidden()).unwrap();
        assert!(empty.counted());
        assert!(empty.bytes().is_empty());
    }

    #[test]
    fn a_missing_file_says_which() {
        let error = Input::open(Path::new("/nonexistent/in.jsonl"), &Progress::hidden())
            .err()
            .unwrap();
        assert!(format!("{error:#}").contains("/nonexistent/in.jsonl"));
    }
}
