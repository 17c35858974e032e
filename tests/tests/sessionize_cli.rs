//! `hbmesh sessionize`: the whole file is the input, so any line order gives
//! the exact sessions of SPEC 5, and bad lines are reported, not fatal.

use hb_testkit::fleet::{Fleet, FleetConfig};
use hbmesh::sessionize::{run, SessionizeArgs};
use std::io::Write;
use std::time::Duration;
use svc_stream::sessionizer::{sessionize_all, Event, Session};

fn line(hb: &hb_proto::v1::Heartbeat) -> String {
    let state = hb_proto::v1::PlaybackState::try_from(hb.state).unwrap();
    serde_json::json!({
        "event_id": hb.event_id,
        "device_id": hb.device_id,
        "user_id": hb.user_id,
        "video_id": hb.video_id,
        "event_time": hb_common::time::ms_to_rfc3339(hb_common::time::timestamp_to_ms(hb.event_time.as_ref().unwrap())),
        "position_ms": hb.position_ms,
        "state": state.as_str_name(),
        "ad_id": hb.ad_id,
    })
    .to_string()
}

#[test]
fn a_shuffled_file_gives_the_exact_sessions_and_skips_bad_lines() {
    let heartbeats: Vec<_> = Fleet::new(FleetConfig {
        devices: 30,
        users: 20,
        videos: 10,
        seed: 4,
        ..FleetConfig::default()
    })
    .heartbeats(2_000)
    .collect();
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in.jsonl");
    let output = dir.path().join("out.jsonl");
    let mut file = std::fs::File::create(&input).unwrap();
    // Reverse order: the worst case for a streaming sessionizer.
    for hb in heartbeats.iter().rev() {
        writeln!(file, "{}", line(hb)).unwrap();
    }
    writeln!(file, "{{\"not\": \"a heartbeat\"}}").unwrap();
    drop(file);

    run(SessionizeArgs {
        input,
        output: Some(output.clone()),
        gap: svc_stream::config::SessionGap {
            session_gap: Duration::from_secs(600),
        },
        strict: false,
        threads: None,
    })
    .unwrap();

    let got: Vec<Session> = std::fs::read_to_string(output)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let events = heartbeats
        .iter()
        .map(|hb| Event::from_proto(hb).unwrap())
        .collect();
    assert_eq!(got, sessionize_all(events, 600_000));
    assert!(!got.is_empty());
}
