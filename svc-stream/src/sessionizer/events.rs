//! The heartbeat as the sessionizer takes it, owned ([`Event`]) or borrowed
//! ([`EventRef`]), and its conversions from the wire type.

use hb_proto::v1::Heartbeat;

/// Player state of a heartbeat. `PLAYBACK_STATE_UNSPECIFIED` is rejected at
/// ingest, so it has no variant here.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum PlaybackState {
    Playing,
    Paused,
    Buffering,
    Ended,
}

impl PlaybackState {
    /// The proto enum name (`"PLAYING"`, ...), as used in JSON Lines.
    pub fn as_str(self) -> &'static str {
        match self {
            PlaybackState::Playing => "PLAYING",
            PlaybackState::Paused => "PAUSED",
            PlaybackState::Buffering => "BUFFERING",
            PlaybackState::Ended => "ENDED",
        }
    }

    /// The proto enum number.
    pub fn to_proto(self) -> i32 {
        use hb_proto::v1::PlaybackState as Proto;
        match self {
            PlaybackState::Playing => Proto::Playing as i32,
            PlaybackState::Paused => Proto::Paused as i32,
            PlaybackState::Buffering => Proto::Buffering as i32,
            PlaybackState::Ended => Proto::Ended as i32,
        }
    }
}

impl TryFrom<i32> for PlaybackState {
    type Error = String;

    fn try_from(value: i32) -> Result<Self, Self::Error> {
        use hb_proto::v1::PlaybackState as Proto;
        match Proto::try_from(value) {
            Ok(Proto::Playing) => Ok(PlaybackState::Playing),
            Ok(Proto::Paused) => Ok(PlaybackState::Paused),
            Ok(Proto::Buffering) => Ok(PlaybackState::Buffering),
            Ok(Proto::Ended) => Ok(PlaybackState::Ended),
            Ok(Proto::Unspecified) => Err("playback state is unspecified".to_owned()),
            Err(_) => Err(format!("unknown playback state {value}")),
        }
    }
}

impl std::str::FromStr for PlaybackState {
    type Err = String;

    /// Parses the proto enum name (`"PLAYING"`, `"PAUSED"`, `"BUFFERING"`, `"ENDED"`).
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        match text {
            "PLAYING" => Ok(PlaybackState::Playing),
            "PAUSED" => Ok(PlaybackState::Paused),
            "BUFFERING" => Ok(PlaybackState::Buffering),
            "ENDED" => Ok(PlaybackState::Ended),
            other => Err(format!("unknown playback state {other:?}")),
        }
    }
}

/// One accepted heartbeat, as the sessionizer needs it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Event {
    pub event_id: String,
    pub user_id: String,
    pub video_id: String,
    pub device_id: String,
    /// Device clock, epoch milliseconds.
    pub time_ms: i64,
    pub position_ms: i64,
    pub state: PlaybackState,
    /// Non-empty while an ad plays.
    pub ad_id: String,
}

impl Event {
    /// Converts a wire heartbeat; fails for an unspecified state, a missing
    /// `event_time` or a position beyond `i64::MAX`.
    pub fn from_proto(hb: &Heartbeat) -> Result<Event, String> {
        let (time_ms, position_ms, state) = Self::scalars(hb)?;
        Ok(Event {
            event_id: hb.event_id.clone(),
            user_id: hb.user_id.clone(),
            video_id: hb.video_id.clone(),
            device_id: hb.device_id.clone(),
            time_ms,
            position_ms,
            state,
            ad_id: hb.ad_id.clone(),
        })
    }

    /// The time, position and state of a wire heartbeat, checked as by
    /// [`Event::from_proto`].
    pub fn scalars(hb: &Heartbeat) -> Result<Scalars, String> {
        let state = PlaybackState::try_from(hb.state)?;
        let time = hb.event_time.as_ref().ok_or("event_time is missing")?;
        let position_ms = i64::try_from(hb.position_ms)
            .map_err(|_| format!("position_ms {} is out of range", hb.position_ms))?;
        Ok((hb_common::time::timestamp_to_ms(time), position_ms, state))
    }
}

/// A wire heartbeat's time (epoch ms), position (ms) and state.
pub type Scalars = (i64, i64, PlaybackState);

/// A heartbeat borrowed from the caller, for the push methods that do not take
/// ownership ([`Sessionizer::push_ref`], [`Sessionizer::push_events`],
/// [`Sessionizer::push_event_refs`]): the caller keeps (and can reuse) the
/// buffers, and the sessionizer copies only what it keeps.
///
/// [`Sessionizer::push_ref`]: super::Sessionizer::push_ref
/// [`Sessionizer::push_events`]: super::Sessionizer::push_events
/// [`Sessionizer::push_event_refs`]: super::Sessionizer::push_event_refs
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EventRef<'a> {
    pub event_id: &'a str,
    pub user_id: &'a str,
    pub video_id: &'a str,
    pub device_id: &'a str,
    /// Device clock, epoch milliseconds.
    pub time_ms: i64,
    pub position_ms: i64,
    pub state: PlaybackState,
    /// Non-empty while an ad plays.
    pub ad_id: &'a str,
}

impl<'a> EventRef<'a> {
    /// Borrows a wire heartbeat; fails like [`Event::from_proto`].
    pub fn from_proto(hb: &'a Heartbeat) -> Result<EventRef<'a>, String> {
        Ok(EventRef::with_scalars(hb, Event::scalars(hb)?))
    }

    /// Borrows a wire heartbeat whose [`Event::scalars`] were already taken.
    pub fn with_scalars(hb: &'a Heartbeat, (time_ms, position_ms, state): Scalars) -> EventRef<'a> {
        EventRef {
            event_id: &hb.event_id,
            user_id: &hb.user_id,
            video_id: &hb.video_id,
            device_id: &hb.device_id,
            time_ms,
            position_ms,
            state,
            ad_id: &hb.ad_id,
        }
    }

    /// An owned copy.
    pub fn to_owned_event(&self) -> Event {
        Event {
            event_id: self.event_id.to_owned(),
            user_id: self.user_id.to_owned(),
            video_id: self.video_id.to_owned(),
            device_id: self.device_id.to_owned(),
            time_ms: self.time_ms,
            position_ms: self.position_ms,
            state: self.state,
            ad_id: self.ad_id.to_owned(),
        }
    }
}

impl Event {
    /// Borrows this event.
    #[inline]
    pub fn to_ref(&self) -> EventRef<'_> {
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

impl TryFrom<Heartbeat> for Event {
    type Error = String;

    /// Like [`Event::from_proto`], moving the ids instead of copying them.
    fn try_from(hb: Heartbeat) -> Result<Self, Self::Error> {
        let (time_ms, position_ms, state) = Event::scalars(&hb)?;
        Ok(Event {
            event_id: hb.event_id,
            user_id: hb.user_id,
            video_id: hb.video_id,
            device_id: hb.device_id,
            time_ms,
            position_ms,
            state,
            ad_id: hb.ad_id,
        })
    }
}
