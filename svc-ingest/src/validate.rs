//! Per-heartbeat validation (SPEC 4). Pure: the caller passes server time.
//! Each rule yields a [`Reason`] whose code labels the rejection metric and
//! starts the reason text sent back to the device.

use hb_common::auth::Role;
use hb_common::time::timestamp_to_ms;
use hb_proto::v1::{Heartbeat, PlaybackState};

/// Largest accepted encoded heartbeat.
pub const MAX_MESSAGE_BYTES: usize = 4 * 1024;
/// Largest id in bytes.
pub const MAX_ID_BYTES: usize = 128;
/// How far ahead of server time an `event_time` may be.
pub const MAX_CLOCK_SKEW_MS: i64 = 5 * 60 * 1000;

/// Why a heartbeat was rejected.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Reason {
    MissingId(&'static str),
    IdTooLong(&'static str),
    IdNotPrintable(&'static str),
    EventTimeMissing,
    EventTimeInFuture { ahead_ms: i64 },
    EventTimeTooOld { age_ms: i64 },
    StateUnspecified,
    MessageTooLarge { bytes: usize },
    DeviceMismatch,
}

impl Reason {
    /// Stable code, used as the metric label.
    pub fn code(&self) -> &'static str {
        match self {
            Reason::MissingId(_) => "missing_id",
            Reason::IdTooLong(_) => "id_too_long",
            Reason::IdNotPrintable(_) => "id_not_printable",
            Reason::EventTimeMissing => "event_time_missing",
            Reason::EventTimeInFuture { .. } => "event_time_in_future",
            Reason::EventTimeTooOld { .. } => "event_time_too_old",
            Reason::StateUnspecified => "state_unspecified",
            Reason::MessageTooLarge { .. } => "message_too_large",
            Reason::DeviceMismatch => "device_mismatch",
        }
    }

    /// Every code, for pre-registering metric label sets.
    pub const CODES: [&'static str; 9] = [
        "missing_id",
        "id_too_long",
        "id_not_printable",
        "event_time_missing",
        "event_time_in_future",
        "event_time_too_old",
        "state_unspecified",
        "message_too_large",
        "device_mismatch",
    ];
}

impl std::fmt::Display for Reason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let code = self.code();
        match self {
            Reason::MissingId(field) => write!(f, "{code}: {field} is required"),
            Reason::IdTooLong(field) => {
                write!(f, "{code}: {field} is longer than {MAX_ID_BYTES} bytes")
            }
            Reason::IdNotPrintable(field) => {
                write!(f, "{code}: {field} must be printable UTF-8")
            }
            Reason::EventTimeMissing => write!(f, "{code}: event_time is required"),
            Reason::EventTimeInFuture { ahead_ms } => write!(
                f,
                "{code}: event_time is {}s ahead of server time (max 300s)",
                ahead_ms / 1000
            ),
            Reason::EventTimeTooOld { age_ms } => write!(
                f,
                "{code}: event_time is {}s old, older than HB_MAX_EVENT_AGE",
                age_ms / 1000
            ),
            Reason::StateUnspecified => write!(f, "{code}: state must be specified"),
            Reason::MessageTooLarge { bytes } => write!(
                f,
                "{code}: heartbeat is {bytes} bytes, larger than {MAX_MESSAGE_BYTES}"
            ),
            Reason::DeviceMismatch => {
                write!(f, "{code}: device_id does not match the device token")
            }
        }
    }
}

/// Server-side facts a heartbeat is checked against.
#[derive(Clone, Debug)]
pub struct Limits {
    pub now_ms: i64,
    pub max_age_ms: i64,
}

/// Checks one heartbeat of `encoded_len` bytes sent under `role` (`None` in open mode).
pub fn validate(
    hb: &Heartbeat,
    encoded_len: usize,
    limits: &Limits,
    role: Option<&Role>,
) -> Result<(), Reason> {
    if encoded_len > MAX_MESSAGE_BYTES {
        return Err(Reason::MessageTooLarge { bytes: encoded_len });
    }
    for (field, value) in [
        ("event_id", &hb.event_id),
        ("device_id", &hb.device_id),
        ("user_id", &hb.user_id),
        ("video_id", &hb.video_id),
    ] {
        check_id(field, value, true)?;
    }
    check_id("ad_id", &hb.ad_id, false)?;
    let Some(event_time) = hb.event_time.as_ref() else {
        return Err(Reason::EventTimeMissing);
    };
    let event_ms = timestamp_to_ms(event_time);
    let ahead_ms = event_ms.saturating_sub(limits.now_ms);
    if ahead_ms > MAX_CLOCK_SKEW_MS {
        return Err(Reason::EventTimeInFuture { ahead_ms });
    }
    let age_ms = limits.now_ms.saturating_sub(event_ms);
    if age_ms > limits.max_age_ms {
        return Err(Reason::EventTimeTooOld { age_ms });
    }
    match PlaybackState::try_from(hb.state) {
        Ok(PlaybackState::Unspecified) | Err(_) => return Err(Reason::StateUnspecified),
        Ok(_) => {}
    }
    if let Some(Role::Device(device)) = role {
        if *device != hb.device_id {
            return Err(Reason::DeviceMismatch);
        }
    }
    Ok(())
}

fn check_id(field: &'static str, value: &str, required: bool) -> Result<(), Reason> {
    if value.is_empty() {
        return if required {
            Err(Reason::MissingId(field))
        } else {
            Ok(())
        };
    }
    if value.len() > MAX_ID_BYTES {
        return Err(Reason::IdTooLong(field));
    }
    // prost already guarantees valid UTF-8; printable means no control chars
    // and no whitespace other than the plain space.
    if value
        .chars()
        .any(|c| c.is_control() || (c.is_whitespace() && c != ' '))
    {
        return Err(Reason::IdNotPrintable(field));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use hb_common::time::ms_to_timestamp;
    use prost::Message;

    const NOW: i64 = 1_700_000_000_000;
    const WEEK: i64 = 7 * 86_400_000;

    fn limits() -> Limits {
        Limits {
            now_ms: NOW,
            max_age_ms: WEEK,
        }
    }

    fn good() -> Heartbeat {
        Heartbeat {
            event_id: "e-1".into(),
            device_id: "d-1".into(),
            user_id: "u-1".into(),
            video_id: "v-1".into(),
            event_time: Some(ms_to_timestamp(NOW - 1_000)),
            position_ms: 5_000,
            state: PlaybackState::Playing as i32,
            ..Default::default()
        }
    }

    fn check(hb: &Heartbeat) -> Result<(), Reason> {
        validate(hb, hb.encoded_len(), &limits(), None)
    }

    #[test]
    fn a_well_formed_heartbeat_passes() {
        assert_eq!(check(&good()), Ok(()));
    }

    #[test]
    fn each_required_id_must_be_present() {
        for field in ["event_id", "device_id", "user_id", "video_id"] {
            let mut hb = good();
            match field {
                "event_id" => hb.event_id.clear(),
                "device_id" => hb.device_id.clear(),
                "user_id" => hb.user_id.clear(),
                _ => hb.video_id.clear(),
            }
            assert_eq!(check(&hb), Err(Reason::MissingId(field)));
        }
    }

    #[test]
    fn ids_are_at_most_128_bytes() {
        let mut hb = good();
        hb.user_id = "u".repeat(128);
        assert_eq!(check(&hb), Ok(()));
        hb.user_id = "é".repeat(65); // 130 bytes, 65 chars
        assert_eq!(check(&hb), Err(Reason::IdTooLong("user_id")));
    }

    #[test]
    fn ids_must_be_printable() {
        let mut hb = good();
        hb.video_id = "v\u{7}1".into();
        assert_eq!(check(&hb), Err(Reason::IdNotPrintable("video_id")));
        hb.video_id = "v\n1".into();
        assert_eq!(check(&hb), Err(Reason::IdNotPrintable("video_id")));
        hb.video_id = "vidéo 1".into();
        assert_eq!(check(&hb), Ok(()));
        let mut hb = good();
        hb.ad_id = "ad\t1".into();
        assert_eq!(check(&hb), Err(Reason::IdNotPrintable("ad_id")));
    }

    #[test]
    fn event_time_is_required() {
        let mut hb = good();
        hb.event_time = None;
        assert_eq!(check(&hb), Err(Reason::EventTimeMissing));
    }

    #[test]
    fn event_time_may_be_at_most_five_minutes_ahead() {
        let mut hb = good();
        hb.event_time = Some(ms_to_timestamp(NOW + MAX_CLOCK_SKEW_MS));
        assert_eq!(check(&hb), Ok(()));
        hb.event_time = Some(ms_to_timestamp(NOW + MAX_CLOCK_SKEW_MS + 1));
        assert_eq!(check(&hb).unwrap_err().code(), "event_time_in_future");
    }

    #[test]
    fn event_time_may_be_at_most_max_age_old() {
        let mut hb = good();
        hb.event_time = Some(ms_to_timestamp(NOW - WEEK));
        assert_eq!(check(&hb), Ok(()));
        hb.event_time = Some(ms_to_timestamp(NOW - WEEK - 1));
        assert_eq!(check(&hb).unwrap_err().code(), "event_time_too_old");
    }

    #[test]
    fn state_must_be_specified() {
        let mut hb = good();
        hb.state = PlaybackState::Unspecified as i32;
        assert_eq!(check(&hb), Err(Reason::StateUnspecified));
        hb.state = 42;
        assert_eq!(check(&hb), Err(Reason::StateUnspecified));
    }

    #[test]
    fn messages_over_4_kib_are_rejected() {
        let mut hb = good();
        hb.platform = "p".repeat(5_000);
        assert_eq!(check(&hb).unwrap_err().code(), "message_too_large");
    }

    #[test]
    fn a_device_token_only_sends_for_its_own_device() {
        let hb = good();
        let mine = Role::Device("d-1".into());
        let other = Role::Device("d-2".into());
        assert_eq!(validate(&hb, 10, &limits(), Some(&mine)), Ok(()));
        assert_eq!(
            validate(&hb, 10, &limits(), Some(&other)),
            Err(Reason::DeviceMismatch)
        );
        assert_eq!(validate(&hb, 10, &limits(), Some(&Role::Gateway)), Ok(()));
    }

    #[test]
    fn reasons_start_with_their_code() {
        let reason = Reason::EventTimeInFuture { ahead_ms: 400_000 };
        assert!(reason.to_string().starts_with("event_time_in_future: "));
        assert!(Reason::CODES.contains(&reason.code()));
    }

    proptest::proptest! {
        /// Random bytes never panic the decoder or the validator.
        #[test]
        fn random_bytes_never_panic(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..600)) {
            if let Ok(hb) = Heartbeat::decode(bytes.as_slice()) {
                let _ = validate(&hb, bytes.len(), &limits(), Some(&Role::Device("x".into())));
            }
        }

        /// Arbitrary field values yield Ok or a reason, never a panic.
        #[test]
        fn arbitrary_fields_never_panic(
            id in ".{0,140}", secs in proptest::num::i64::ANY, nanos in proptest::num::i32::ANY, state in proptest::num::i32::ANY
        ) {
            let hb = Heartbeat {
                event_id: id.clone(), device_id: id.clone(), user_id: id.clone(), video_id: id,
                event_time: Some(hb_proto::Timestamp { seconds: secs, nanos }),
                state,
                ..Default::default()
            };
            let _ = validate(&hb, hb.encoded_len(), &limits(), None);
        }
    }
}
