//! `hbmesh sessionize --input FILE`: offline, exact sessionization of heartbeat
//! JSON Lines with the stream service's own sessionizer. The whole file is the
//! input, so line order does not matter and no lateness limit applies.
//!
//! With several threads the file is parsed in chunks, deduplicated by shards
//! of `event_id`, and sessionized by shards of `(user_id, video_id)`: the
//! sessions of different keys are independent, and the output is sorted by
//! `(user_id, video_id, start_ms)` whatever the number of threads.

use anyhow::Context;
use hb_common::duration::parse_duration;
use hb_common::progress::{Progress, Unit};
use rustc_hash::{FxHashSet, FxHasher};
use serde::{de, Deserialize, Deserializer};
use std::borrow::Cow;
use std::hash::{Hash, Hasher};
use std::io::{BufWriter, Read, Write};
use std::path::PathBuf;
use std::time::Duration;
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

    /// Gap that starts a new session.
    #[arg(long, env = "HB_SESSION_GAP", default_value = svc_stream::config::default_session_gap(), value_parser = parse_duration)]
    pub gap: Duration,

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

/// One input line, its strings borrowed from the input where they hold no escapes.
#[derive(Deserialize)]
struct Line<'a> {
    #[serde(borrow)]
    event_id: Cow<'a, str>,
    #[serde(borrow)]
    device_id: Cow<'a, str>,
    #[serde(borrow)]
    user_id: Cow<'a, str>,
    #[serde(borrow)]
    video_id: Cow<'a, str>,
    #[serde(borrow)]
    event_time: Cow<'a, str>,
    #[serde(default)]
    position_ms: u64,
    state: State,
    #[serde(borrow, default)]
    ad_id: Cow<'a, str>,
}

/// A valid line: the heartbeat, borrowed from the input where it can be.
struct Record<'a> {
    event_id: Cow<'a, str>,
    user_id: Cow<'a, str>,
    video_id: Cow<'a, str>,
    device_id: Cow<'a, str>,
    ad_id: Cow<'a, str>,
    time_ms: i64,
    position_ms: i64,
    state: PlaybackState,
    /// Shard of its `event_id` and of its `(user_id, video_id)` (see [`shard`]).
    id_shard: u32,
    key_shard: u32,
}

impl Record<'_> {
    fn event_ref(&self) -> EventRef<'_> {
        EventRef {
            event_id: &self.event_id,
            user_id: &self.user_id,
            video_id: &self.video_id,
            device_id: &self.device_id,
            time_ms: self.time_ms,
            position_ms: self.position_ms,
            state: self.state,
            ad_id: &self.ad_id,
        }
    }
}

/// Parses one line, with a reason when it is not a heartbeat.
fn decode(text: &str) -> Result<Record<'_>, String> {
    let line: Line = serde_json::from_str(text).map_err(|e| e.to_string())?;
    for (name, value) in [
        ("event_id", &line.event_id),
        ("user_id", &line.user_id),
        ("video_id", &line.video_id),
    ] {
        if value.is_empty() {
            return Err(format!("{name} is empty"));
        }
    }
    Ok(Record {
        time_ms: hb_common::time::rfc3339_to_ms(&line.event_time)?,
        position_ms: i64::try_from(line.position_ms)
            .map_err(|_| "position_ms out of range".to_string())?,
        state: line.state.0,
        event_id: line.event_id,
        user_id: line.user_id,
        video_id: line.video_id,
        device_id: line.device_id,
        ad_id: line.ad_id,
        id_shard: 0,
        key_shard: 0,
    })
}

/// Parses one line into an event, with a reason when it is not one.
pub fn parse_line(text: &str) -> Result<Event, String> {
    decode(text).map(|record| record.event_ref().to_owned_event())
}

/// The parsed lines of one chunk of the input.
#[derive(Default)]
struct Chunk<'a> {
    records: Vec<Record<'a>>,
    /// Bad lines: number within the chunk (from 0) and reason.
    bad: Vec<(usize, String)>,
    /// Lines in the chunk, blank ones included.
    lines: usize,
}

/// Bytes read or parsed between two progress counts: a count per block,
/// never per line, keeps the progress off the parser's path.
const PROGRESS_BLOCK: usize = 4 << 20;

/// Parses `text` in blocks of about [`PROGRESS_BLOCK`], counting each.
fn parse_chunk<'t>(text: &'t str, strict: bool, shards: usize, progress: &Progress) -> Chunk<'t> {
    let mut chunk = Chunk::default();
    let blocks = text.len().div_ceil(PROGRESS_BLOCK).max(1);
    let mut rest = text;
    for piece in split_lines(text.as_bytes(), blocks) {
        // Pieces end at line ends, which are character boundaries.
        let (block, tail) = rest.split_at(piece.len());
        rest = tail;
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
fn parse_block<'t>(block: &'t str, strict: bool, shards: usize, chunk: &mut Chunk<'t>) -> bool {
    let first = chunk.lines;
    for (number, line) in block.lines().enumerate() {
        let number = first + number;
        chunk.lines = number + 1;
        if line.trim().is_empty() {
            continue;
        }
        match decode(line) {
            Ok(mut record) if shards > 1 => {
                record.id_shard = shard(hash_of(&[&record.event_id]), shards) as u32;
                record.key_shard =
                    shard(hash_of(&[&record.user_id, &record.video_id]), shards) as u32;
                chunk.records.push(record);
            }
            Ok(record) => chunk.records.push(record),
            Err(reason) => {
                chunk.bad.push((number, reason));
                if strict {
                    return false;
                }
            }
        }
    }
    true
}

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
    .expect("UTF-8")
}

/// Sessions of the heartbeats in consecutive pieces of the input (each
/// ending at a line end), one thread per piece; `progress` counts the bytes
/// parsed.
fn sessionize_pieces(
    pieces: &[&[u8]],
    gap_ms: i64,
    strict: bool,
    progress: &Progress,
) -> anyhow::Result<Sessionized> {
    let n = pieces.len().max(1);
    let chunks: Vec<Chunk> = std::thread::scope(|scope| {
        let workers: Vec<_> = pieces
            .iter()
            .map(|piece| {
                scope.spawn(move || {
                    std::str::from_utf8(piece)
                        .map(|text| parse_chunk(text, strict, n, progress))
                        .context("the input is not UTF-8")
                })
            })
            .collect();
        workers
            .into_iter()
            .map(|w| w.join().expect("parser thread"))
            .collect::<anyhow::Result<_>>()
    })?;
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
        return Ok((Vec::new(), 0, bad));
    }
    progress.set_stage("sessionizing");
    let records: Vec<&Record> = chunks.iter().flat_map(|c| c.records.iter()).collect();
    let sessions = if n == 1 {
        sessionize_shard(&records, &[first_copies(&records, 0, 1)], 0, gap_ms)
    } else {
        // The first copy of an event_id counts: each thread keeps the first
        // copies of its share of the ids, filed by key shard; then each
        // thread sessionizes one key shard.
        let by_id: Vec<Vec<Vec<u32>>> = std::thread::scope(|scope| {
            let records = &records;
            let workers: Vec<_> = (0..n)
                .map(|s| scope.spawn(move || first_copies(records, s, n)))
                .collect();
            workers
                .into_iter()
                .map(|w| w.join().expect("dedup thread"))
                .collect()
        });
        let mut sessions: Vec<Session> = std::thread::scope(|scope| {
            let (records, by_id) = (&records, &by_id);
            let workers: Vec<_> = (0..n)
                .map(|k| scope.spawn(move || sessionize_shard(records, by_id, k, gap_ms)))
                .collect();
            workers
                .into_iter()
                .flat_map(|w| w.join().expect("sessionizer thread"))
                .collect()
        });
        sort_sessions(&mut sessions);
        sessions
    };
    let heartbeats = records.len();
    Ok((sessions, heartbeats, bad))
}

/// Indices of the first copies of the event ids in id shard `s` of `n`,
/// filed by key shard.
fn first_copies(records: &[&Record], s: usize, n: usize) -> Vec<Vec<u32>> {
    let mut seen: FxHashSet<&str> =
        FxHashSet::with_capacity_and_hasher(records.len() / n + 1, Default::default());
    let mut by_key = vec![Vec::with_capacity(records.len() / (n * n) + 1); n];
    for (index, record) in records.iter().enumerate() {
        if record.id_shard as usize != s {
            continue;
        }
        if seen.insert(&record.event_id) {
            by_key[record.key_shard as usize].push(index as u32);
        }
    }
    by_key
}

/// The sessions of key shard `k`: its first copies (from every id shard)
/// sorted by `(time, event_id)` and pushed in batches.
fn sessionize_shard(
    records: &[&Record],
    by_id: &[Vec<Vec<u32>>],
    k: usize,
    gap_ms: i64,
) -> Vec<Session> {
    let mut order: Vec<(i64, u32)> = by_id
        .iter()
        .flat_map(|shards| shards[k].iter())
        .map(|&index| (records[index as usize].time_ms, index))
        .collect();
    order.sort_unstable_by(|a, b| {
        a.0.cmp(&b.0).then_with(|| {
            records[a.1 as usize]
                .event_id
                .cmp(&records[b.1 as usize].event_id)
        })
    });
    sessionize_sorted(
        order
            .iter()
            .map(|&(_, index)| records[index as usize].event_ref()),
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

/// The input in `n` pieces of about equal size, each ending at a line end:
/// a file is read by `n` threads at once, each its own range. `progress`
/// counts the bytes read.
fn read_pieces(path: &PathBuf, n: usize, progress: &Progress) -> anyhow::Result<Vec<Vec<u8>>> {
    if path.as_os_str() == "-" {
        let mut text = Vec::new();
        Counted {
            inner: std::io::stdin().lock(),
            progress,
        }
        .read_to_end(&mut text)
        .context("reading stdin")?;
        return Ok(split_lines(&text, n)
            .into_iter()
            .map(<[u8]>::to_vec)
            .collect());
    }
    let file = std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let len = file.metadata()?.len();
    std::thread::scope(|scope| {
        let file = &file;
        let workers: Vec<_> = (0..n as u64)
            .map(|k| {
                scope.spawn(move || {
                    let (from, to) = (len * k / n as u64, len * (k + 1) / n as u64);
                    read_range(file, len, from, to, progress)
                })
            })
            .collect();
        workers
            .into_iter()
            .map(|w| w.join().expect("reader thread"))
            .collect::<std::io::Result<Vec<_>>>()
    })
    .with_context(|| format!("reading {}", path.display()))
}

/// The lines of `file` that start in `[from, to)`, whole; read in blocks,
/// each counted by `progress`.
fn read_range(
    file: &std::fs::File,
    len: u64,
    from: u64,
    to: u64,
    progress: &Progress,
) -> std::io::Result<Vec<u8>> {
    use std::os::unix::fs::FileExt;
    // One byte before `from` tells whether a line starts at `from`.
    let begin = from.saturating_sub(1);
    let mut buf = vec![0; (to - begin) as usize];
    let mut at = begin;
    for block in buf.chunks_mut(PROGRESS_BLOCK) {
        file.read_exact_at(block, at)?;
        at += block.len() as u64;
        progress.inc(block.len() as u64);
    }
    let start = if from == 0 {
        0
    } else {
        match buf.iter().position(|&b| b == b'\n') {
            Some(at) => at + 1,
            None => return Ok(Vec::new()),
        }
    };
    // The last line runs on to its end past `to`.
    let mut at = to;
    while at < len && buf.last() != Some(&b'\n') {
        let mut more = vec![0; (len - at).min(1 << 16) as usize];
        file.read_exact_at(&mut more, at)?;
        at += more.len() as u64;
        match more.iter().position(|&b| b == b'\n') {
            Some(end) => buf.extend_from_slice(&more[..=end]),
            None => buf.extend_from_slice(&more),
        }
    }
    if start > 0 {
        buf.drain(..start);
    }
    Ok(buf)
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
    let pieces = read_pieces(&args.input, threads, &progress)?;
    let pieces: Vec<&[u8]> = pieces.iter().map(Vec::as_slice).collect();
    progress.restart("parsing", Some(pieces.iter().map(|p| p.len() as u64).sum()));
    let (sessions, heartbeats, bad) =
        sessionize_pieces(&pieces, args.gap.as_millis() as i64, args.strict, &progress)?;
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
    for session in &sessions {
        serde_json::to_writer(&mut out, session)?;
        out.write_all(b"\n")?;
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
    fn a_file_read_in_ranges_gives_whole_lines_and_the_whole_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("in.jsonl");
        let mut text = String::new();
        for i in 0..200 {
            // Lines from 1 to 400 bytes: some longer than a range.
            text.push_str(&"x".repeat((i * 37) % 400 + 1));
            text.push('\n');
        }
        text.push_str("no line end");
        std::fs::write(&path, &text).unwrap();
        for n in [1, 2, 3, 7, 64, 500] {
            let pieces = read_pieces(&path, n, &Progress::hidden()).unwrap();
            assert_eq!(pieces.len(), n);
            assert_eq!(pieces.concat(), text.as_bytes(), "{n} ranges");
            assert!(pieces[..n - 1]
                .iter()
                .all(|p| p.is_empty() || p.ends_with(b"\n")));
        }
    }

    #[test]
    fn any_number_of_threads_gives_the_same_sessions_and_bad_line_numbers() {
        let mut text = String::new();
        for i in 0..3_000u64 {
            let (user, video) = (i % 7, i % 5);
            // Every 10th heartbeat is resent; every 500th line is bad.
            let copies = if i % 10 == 0 { 2 } else { 1 };
            for _ in 0..copies {
                text.push_str(&format!(
                    r#"{{"event_id":"e{i}","device_id":"d{user}","user_id":"u{user}","video_id":"v{video}","event_time":"{}","position_ms":{},"state":"PLAYING","ad_id":""}}"#,
                    hb_common::time::ms_to_rfc3339(1_767_225_600_000 + (i as i64 % 97) * 13_000 + (i as i64 / 97) * 900_000),
                    i * 1000,
                ));
                text.push('\n');
            }
            if i % 500 == 0 {
                text.push_str("{\"broken\n");
            }
        }
        let (one, heartbeats, bad) = sessionize_text(&text, 600_000, 1, false);
        assert_eq!(heartbeats, 3_300);
        assert_eq!(bad.len(), 6);
        assert!(!one.is_empty());
        for threads in [2, 3, 4] {
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
