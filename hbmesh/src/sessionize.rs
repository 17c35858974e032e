//! `hbmesh sessionize --input FILE`: offline, exact sessionization of heartbeat
//! JSON Lines with the stream service's own sessionizer. The whole file is the
//! input, so line order does not matter and no lateness limit applies.

use anyhow::Context;
use hb_common::duration::parse_duration;
use serde::Deserialize;
use std::io::{BufRead, BufWriter, Write};
use std::path::PathBuf;
use std::time::Duration;
use svc_stream::sessionizer::{sessionize_all, Event, PlaybackState};

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
}

/// One input line. `state` may be the enum name or its number.
#[derive(Deserialize)]
struct Line {
    event_id: String,
    device_id: String,
    user_id: String,
    video_id: String,
    event_time: String,
    #[serde(default)]
    position_ms: u64,
    state: serde_json::Value,
    #[serde(default)]
    ad_id: String,
}

fn parse_state(value: &serde_json::Value) -> Result<PlaybackState, String> {
    match value {
        serde_json::Value::String(name) => {
            name.strip_prefix("PLAYBACK_STATE_").unwrap_or(name).parse()
        }
        serde_json::Value::Number(n) => n
            .as_i64()
            .and_then(|n| i32::try_from(n).ok())
            .ok_or_else(|| format!("invalid state {n}"))
            .and_then(PlaybackState::try_from),
        other => Err(format!("invalid state {other}")),
    }
}

/// Parses one line into an event, with a reason when it is not one.
pub fn parse_line(text: &str) -> Result<Event, String> {
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
    Ok(Event {
        time_ms: hb_common::time::rfc3339_to_ms(&line.event_time)?,
        position_ms: i64::try_from(line.position_ms)
            .map_err(|_| "position_ms out of range".to_string())?,
        state: parse_state(&line.state)?,
        event_id: line.event_id,
        user_id: line.user_id,
        video_id: line.video_id,
        device_id: line.device_id,
        ad_id: line.ad_id,
    })
}

pub fn run(args: SessionizeArgs) -> anyhow::Result<()> {
    let reader: Box<dyn BufRead> = if args.input.as_os_str() == "-" {
        Box::new(std::io::BufReader::new(std::io::stdin()))
    } else {
        let file = std::fs::File::open(&args.input)
            .with_context(|| format!("opening {}", args.input.display()))?;
        Box::new(std::io::BufReader::with_capacity(1 << 20, file))
    };
    let mut events = Vec::new();
    let mut skipped = 0usize;
    for (number, line) in reader.lines().enumerate() {
        let line = line.with_context(|| format!("reading line {}", number + 1))?;
        if line.trim().is_empty() {
            continue;
        }
        match parse_line(&line) {
            Ok(event) => events.push(event),
            Err(reason) if args.strict => anyhow::bail!("line {}: {reason}", number + 1),
            Err(reason) => {
                skipped += 1;
                if skipped <= 20 {
                    eprintln!("hbmesh sessionize: skipping line {}: {reason}", number + 1);
                }
            }
        }
    }
    let heartbeats = events.len();
    let sessions = sessionize_all(events, args.gap.as_millis() as i64);
    let sink: Box<dyn Write> = match &args.output {
        Some(path) => Box::new(
            std::fs::File::create(path).with_context(|| format!("creating {}", path.display()))?,
        ),
        None => Box::new(std::io::stdout().lock()),
    };
    let mut out = BufWriter::new(sink);
    for session in &sessions {
        serde_json::to_writer(&mut out, session)?;
        out.write_all(b"\n")?;
    }
    out.flush()?;
    eprintln!(
        "hbmesh sessionize: {heartbeats} heartbeats -> {} sessions{}",
        sessions.len(),
        if skipped > 0 {
            format!(" ({skipped} bad lines skipped)")
        } else {
            String::new()
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

    #[test]
    fn numeric_and_prefixed_states_parse() {
        assert_eq!(
            parse_state(&serde_json::json!(2)).unwrap(),
            PlaybackState::Paused
        );
        assert_eq!(
            parse_state(&serde_json::json!("PLAYBACK_STATE_ENDED")).unwrap(),
            PlaybackState::Ended
        );
        assert!(parse_state(&serde_json::json!("PLAYBACK_STATE_UNSPECIFIED")).is_err());
    }

    #[test]
    fn bad_lines_say_why() {
        assert!(parse_line("not json").is_err());
        let missing = parse_line(
            r#"{"event_id":"","device_id":"d","user_id":"u","video_id":"v","event_time":"2026-01-01T00:00:05Z","state":"PLAYING"}"#,
        );
        assert_eq!(missing.unwrap_err(), "event_id is empty");
    }
}
