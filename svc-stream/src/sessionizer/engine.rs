//! The engine: [`Sessionizer`] routes each heartbeat to its key's slot,
//! merges it into that key's sessions, freezes what fell behind the horizon,
//! finalizes by watermark (advanced with processing time while the partition
//! is idle), and hands the changes out.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashSet, VecDeque};

use super::config::SessionConfig;
use super::events::{Event, EventRef, PlaybackState};
use super::fxhash::{fingerprint, key_fingerprint, FxBuildHasher};
use super::id::Id;
use super::prefetch;
use super::sessions::{Change, ChangeRef, Outcome, Session, SessionKey, Share};
use super::state::{KeySlot, LiveSession};
use super::tables::{IdTable, KeyTable, SlotIndex, SlotSet};
use super::tail::{Held, NewHeld, Point, Tail};

/// The hashes a push needs, computed once.
#[derive(Clone, Copy, Debug)]
pub(super) struct Fingerprints {
    pub(super) key: u64,
    pub(super) id: u64,
}

impl Fingerprints {
    /// The hashes of `event`; its id is hashed only when `checks_ids`.
    #[inline]
    pub(super) fn of(event: &EventRef<'_>, checks_ids: bool) -> Self {
        Fingerprints {
            key: key_fingerprint(event.user_id, event.video_id),
            id: if checks_ids {
                fingerprint(event.event_id.as_bytes())
            } else {
                0
            },
        }
    }
}

/// Tail buffers kept for reuse.
const SPARE_TAILS: usize = 4_096;

/// Capacity of a new tail: enough for its first heartbeats to show their
/// pace, from which it grows to what its session holds over the lateness
/// window (30 at one heartbeat per 5 s and 2 minutes; see `Tail`); starting
/// small keeps a crowd of new viewers (a live event's start) at about a
/// hundred bytes each.
const TAIL_CAPACITY: usize = 4;

/// What the drain reads of a slot: up to the first session's frozen summary.
const SLOT_DRAIN_BYTES: usize =
    std::mem::offset_of!(KeySlot, sessions) + std::mem::offset_of!(LiveSession, frozen);

/// Changed slots the drain asks for ahead of the one it writes out.
const DRAIN_AHEAD: usize = 8;

/// The most processing time one [`Sessionizer::advance`] counts as quiet: a
/// stage that did not run (a paused process, a long write) saw nothing, so
/// the time between two advances counts only up to this.
pub const MAX_QUIET_STEP_MS: i64 = 1_000;

/// Incremental, exact sessionizer of one partition (see the module docs).
#[derive(Debug)]
pub struct Sessionizer {
    config: SessionConfig,
    watermark_ms: Option<i64>,
    pub(super) slots: Vec<KeySlot>,
    free_slots: Vec<SlotIndex>,
    pub(super) keys: KeyTable,
    /// Ids of recent heartbeats (every unfrozen one among them).
    pub(super) ids: IdTable,
    /// Heartbeats in the tails.
    held: usize,
    /// Emptied tail buffers of finalized sessions, for new ones: a tail
    /// allocation is large enough to be slow in common allocators.
    spare_tails: Vec<VecDeque<Held>>,
    pub(super) next_uid: u32,
    /// `(deadline, slot, uid)`: once the watermark passes `deadline`, a
    /// session may be final (`end + gap + lateness`) or idle (`end + hold`,
    /// see `let_go_idle`); both re-checked when popped. An entry per session,
    /// and stale ones of sessions gone.
    watermark_queue: BinaryHeap<Reverse<(i64, SlotIndex, u32)>>,
    /// Processing time of the last advance.
    last_advance_ms: Option<i64>,
    /// A heartbeat came in since the last advance.
    pushed_since_advance: bool,
    /// Processing time counted as quiet since the last heartbeat came in.
    quiet_ms: i64,
    /// Record upserts (off for the offline batch, which only wants finals).
    pub(super) track_upserts: bool,
    /// Look up and file each heartbeat's id (off for the offline batch,
    /// whose input holds one copy per id).
    pub(super) checks_ids: bool,
    /// Slots holding a session changed since the last drain: the drain walks
    /// them in slot order without sorting a list of changes.
    changed: SlotSet,
    /// Scratch of `drain_changes_with`: the changed slots, in order.
    drained: Vec<SlotIndex>,
    deleted: Vec<SessionKey>,
    pub(super) finals: Vec<Session>,
    open_sessions: usize,
    open_keys: usize,
}

impl Sessionizer {
    /// A sessionizer with no state. Negative durations count as zero.
    pub fn new(config: SessionConfig) -> Self {
        let config = SessionConfig {
            gap_ms: config.gap_ms.max(0),
            lateness_ms: config.lateness_ms.max(0),
            idle_timeout_ms: config.idle_timeout_ms.max(0),
        };
        Sessionizer {
            config,
            watermark_ms: None,
            slots: Vec::new(),
            free_slots: Vec::new(),
            keys: KeyTable::default(),
            ids: IdTable::new(config.lateness_ms),
            held: 0,
            spare_tails: Vec::new(),
            next_uid: 0,
            watermark_queue: BinaryHeap::new(),
            last_advance_ms: None,
            pushed_since_advance: false,
            quiet_ms: 0,
            track_upserts: true,
            checks_ids: true,
            changed: SlotSet::default(),
            drained: Vec::new(),
            deleted: Vec::new(),
            finals: Vec::new(),
            open_sessions: 0,
            open_keys: 0,
        }
    }

    /// The configuration in force.
    pub fn config(&self) -> SessionConfig {
        self.config
    }

    /// Feeds one heartbeat. Processing time plays no part here: only
    /// [`Sessionizer::advance`] reads it, since idleness is the partition's.
    pub fn push(&mut self, event: Event) -> Outcome {
        self.push_ref(event.to_ref())
    }

    /// Like [`Sessionizer::push`], borrowing the heartbeat.
    pub fn push_ref(&mut self, event: EventRef<'_>) -> Outcome {
        let fingerprints = Fingerprints::of(&event, self.checks_ids);
        self.push_fingerprinted(event, fingerprints)
    }

    pub(super) fn push_fingerprinted(
        &mut self,
        event: EventRef<'_>,
        fingerprints: Fingerprints,
    ) -> Outcome {
        self.pushed_since_advance = true;
        if self.is_late(event.time_ms) {
            return Outcome::Late;
        }
        let id_fingerprint = fingerprints.id;
        if self.checks_ids && self.holds_id(id_fingerprint, event.event_id) {
            return Outcome::Duplicate;
        }
        let slot_index = self.slot_for(fingerprints.key, event.user_id, event.video_id);
        let watermark_ms = self
            .watermark_ms
            .map_or(event.time_ms, |wm| wm.max(event.time_ms));
        self.watermark_ms = Some(watermark_ms);
        let target = self.merge(slot_index, event, id_fingerprint);
        let (horizon_ms, freeze_before_ms) = (self.horizon_ms(), self.freeze_before_ms());
        let session = &mut self.slots[slot_index as usize].sessions.as_mut_slice()[target];
        if session.tail_front_ms < freeze_before_ms {
            self.held -= session.freeze_before(horizon_ms);
        }
        Outcome::Merged
    }

    /// Finalizes sessions whose end + gap + lateness the watermark passed.
    /// Idleness belongs to the partition: once no heartbeat has come in for
    /// `idle_timeout_ms` of processing time, the watermark advances with
    /// processing time, so an idle partition still closes its sessions. While
    /// heartbeats keep coming, sessions close by event time only. Quiet time
    /// is counted between advances, at most [`MAX_QUIET_STEP_MS`] each, so a
    /// stall of the stage itself (it did not look) is never idleness: call
    /// this about once a second or more often.
    pub fn advance(&mut self, now_ms: i64) {
        let step_ms = self.last_advance_ms.map_or(0, |last_ms| {
            now_ms.saturating_sub(last_ms).clamp(0, MAX_QUIET_STEP_MS)
        });
        self.last_advance_ms = Some(now_ms);
        if std::mem::take(&mut self.pushed_since_advance) {
            self.quiet_ms = 0;
        } else {
            let idle_timeout_ms = self.config.idle_timeout_ms;
            let idle_before_ms = self.quiet_ms.saturating_sub(idle_timeout_ms).max(0);
            self.quiet_ms = self.quiet_ms.saturating_add(step_ms);
            let idle_ms = self.quiet_ms.saturating_sub(idle_timeout_ms).max(0);
            if idle_ms > idle_before_ms {
                self.watermark_ms = self
                    .watermark_ms
                    .map(|wm| wm.saturating_add(idle_ms - idle_before_ms));
            }
        }
        if let Some(watermark_ms) = self.watermark_ms {
            self.finalize_by_watermark(watermark_ms);
        }
    }

    /// Changes since the last drain, coalesced to at most one per session key:
    /// first the `Delete`s (sorted by key, none for a key written again in the
    /// same batch), then the `Upsert`s (ordered by internal key slot), then the
    /// `Final`s in order of finalization. Deterministic for a given input.
    pub fn drain_changes(&mut self) -> Vec<Change> {
        self.drain_share(Share::ALL)
    }

    /// The changes of [`Sessionizer::drain_changes`] for the keys in `share`
    /// only, in the same order; the other keys' changes stay for later
    /// drains. Each key's changes go out together.
    pub fn drain_share(&mut self, share: Share) -> Vec<Change> {
        let mut changes = Vec::with_capacity(self.finals.len());
        self.drain_share_with(share, |change| {
            changes.push(match change {
                ChangeRef::Upsert(session) => Change::Upsert(session.to_session()),
                ChangeRef::Final(session) => Change::Final(session),
                ChangeRef::Delete(key) => Change::Delete(key),
            })
        });
        changes
    }

    /// The changes of [`Sessionizer::drain_changes`], in the same order, handed
    /// to `visit` one by one with each open session borrowed from the state:
    /// nothing is copied for an upsert the consumer only reads.
    pub fn drain_changes_with(&mut self, visit: impl FnMut(ChangeRef<'_>)) {
        self.drain_share_with(Share::ALL, visit)
    }

    fn drain_share_with(&mut self, share: Share, mut visit: impl FnMut(ChangeRef<'_>)) {
        let mut deleted = std::mem::take(&mut self.deleted);
        let kept_deletes = take_outside(&mut deleted, share, |key| (&key.user_id, &key.video_id));
        if !deleted.is_empty() {
            deleted.sort_unstable();
            deleted.dedup();
            // A key written again in this drain is no delete: one of the
            // finals, or a changed session of the key's live slot.
            let finals: HashSet<(&str, &str, i64), FxBuildHasher> = self
                .finals
                .iter()
                .map(|session| {
                    (
                        session.user_id.as_str(),
                        session.video_id.as_str(),
                        session.start_ms,
                    )
                })
                .collect();
            let (keys, slots) = (&self.keys, &self.slots);
            deleted.retain(|key| {
                let (user_id, video_id) = (key.user_id.as_str(), key.video_id.as_str());
                if finals.contains(&(user_id, video_id, key.start_ms)) {
                    return false;
                }
                let Some(slot_index) =
                    keys.find(key_fingerprint(user_id, video_id), |slot_index| {
                        let slot = &slots[slot_index as usize];
                        slot.user_id.is(user_id) && slot.video_id.is(video_id)
                    })
                else {
                    return true;
                };
                !slots[slot_index as usize]
                    .sessions
                    .as_slice()
                    .iter()
                    .any(|session| session.dirty && session.start_ms == key.start_ms)
            });
            for key in deleted.drain(..) {
                visit(ChangeRef::Delete(key));
            }
        }
        self.deleted = if kept_deletes.is_empty() {
            deleted
        } else {
            kept_deletes
        };
        // One pass by slot, a walk through memory in order rather than at
        // random. Sessions that were changed and then merged away or
        // finalized are no longer in their slot; a released slot holds none.
        // (Keys the store holds under an older start were queued for delete
        // when the start moved.)
        let mut changed = std::mem::take(&mut self.drained);
        changed.clear();
        self.changed.drain(|slot_index| changed.push(slot_index));
        if share != Share::ALL {
            let (slots, kept) = (&self.slots, &mut self.changed);
            changed.retain(|&slot_index| {
                let slot = &slots[slot_index as usize];
                let ours = share.holds(slot.user_id.as_str(), slot.video_id.as_str());
                if !ours {
                    kept.insert(slot_index);
                }
                ours
            });
        }
        for (at, &slot_index) in changed.iter().enumerate() {
            if let Some(slot) = changed
                .get(at + DRAIN_AHEAD)
                .and_then(|&ahead| self.slots.get(ahead as usize))
            {
                prefetch::lines(slot, SLOT_DRAIN_BYTES);
            }
            let slot = &mut self.slots[slot_index as usize];
            let (user_id, video_id) = (&slot.user_id, &slot.video_id);
            for session in slot.sessions.as_mut_slice() {
                if session.dirty {
                    session.dirty = false;
                    session.set_stored_start_ms(Some(session.start_ms));
                    visit(ChangeRef::Upsert(session.to_session_ref(user_id, video_id)));
                }
            }
        }
        self.drained = changed;
        let kept_finals = take_outside(&mut self.finals, share, |session| {
            (&session.user_id, &session.video_id)
        });
        for session in self.finals.drain(..) {
            visit(ChangeRef::Final(session));
        }
        if !kept_finals.is_empty() {
            self.finals = kept_finals;
        }
    }

    /// Finalizes every open session: the end of a batch run. (A service
    /// shutting down keeps its sessions open and restores them on restart.)
    pub fn finish(&mut self) {
        for slot_index in 0..self.slots.len() as SlotIndex {
            while !self.slots[slot_index as usize].sessions.is_empty() {
                self.finalize(slot_index, 0);
            }
            self.release_if_empty(slot_index);
        }
    }

    /// Newest event time accepted (or restored), if any.
    pub fn watermark_ms(&self) -> Option<i64> {
        self.watermark_ms
    }

    /// Re-seeds state after a restart with the heartbeats of the open sessions
    /// (in any order; read back from the raw mirror, late ones excluded) and
    /// the stored watermark: [`Sessionizer::start_restore`] after sorting
    /// them by time.
    pub fn restore(&mut self, mut events: Vec<Event>, watermark_ms: Option<i64>) {
        events.sort_unstable_by(|a, b| {
            (a.time_ms, a.event_id.as_str()).cmp(&(b.time_ms, b.event_id.as_str()))
        });
        let mut restoring = self.start_restore();
        for event in events {
            restoring.push(event.to_ref());
        }
        restoring.finish(watermark_ms);
    }

    /// Re-seeds state after a restart, one heartbeat at a time in
    /// non-decreasing event time (one further back than the lateness behind
    /// an earlier one would be late), so a restore holds no more than the
    /// running state: each tail freezes as the restore passes it. Emits no
    /// changes for them: the store already holds these sessions under their
    /// current keys. Duplicates among them are ignored. Meant for a fresh
    /// sessionizer; on one that already holds state, heartbeats behind its
    /// lateness horizon are skipped and the rest are merged (and reported)
    /// like pushes.
    pub fn start_restore(&mut self) -> Restoring<'_> {
        Restoring {
            fresh: self.open_sessions == 0
                && self.changed.is_empty()
                && self.deleted.is_empty()
                && self.finals.is_empty(),
            pushed_since_advance: self.pushed_since_advance,
            sessionizer: self,
        }
    }

    /// The videos of the keys of `user_id` held now.
    pub fn videos_of(&self, user_id: &str) -> Vec<String> {
        self.slots
            .iter()
            .filter(|slot| slot.live && slot.user_id.is(user_id))
            .map(|slot| slot.video_id.as_str().to_owned())
            .collect()
    }

    /// Forgets everything held of `user_id` (an erased user): the open
    /// sessions and held heartbeats of each of the user's keys, and the
    /// user's changes not drained yet. Nothing is reported for them: the
    /// store's rows of the user are removed by the erasure. Heartbeats of the
    /// user pushed afterwards start new sessions, and ids seen before no
    /// longer count as duplicates. Returns how many open sessions went.
    pub fn forget_user(&mut self, user_id: &str) -> usize {
        let mut forgotten = 0;
        for slot_index in 0..self.slots.len() as SlotIndex {
            let slot = &mut self.slots[slot_index as usize];
            if !slot.live || !slot.user_id.is(user_id) {
                continue;
            }
            let sessions = std::mem::take(&mut slot.sessions);
            let count = sessions.as_slice().len();
            if count > 0 {
                self.held -= sessions
                    .as_slice()
                    .iter()
                    .map(|session| session.tail.len())
                    .sum::<usize>();
                self.open_sessions -= count;
                self.open_keys -= 1;
                forgotten += count;
            }
            self.release_if_empty(slot_index);
        }
        self.deleted.retain(|key| key.user_id != user_id);
        self.finals.retain(|session| session.user_id != user_id);
        forgotten
    }

    /// After a restore that did not rebuild the stored open session `key`
    /// (its heartbeats were pushed as new ones): the live session starting
    /// there takes the stored row over, so a later move of its start deletes
    /// that row; with none (its start moved, or it merged into another
    /// session) the row's delete is queued, and dropped again should a
    /// session be written under the same key in the same drain.
    pub fn note_stored(&mut self, key: &SessionKey) {
        let (user_id, video_id) = (key.user_id.as_str(), key.video_id.as_str());
        let slots = &self.slots;
        let found = self
            .keys
            .find(key_fingerprint(user_id, video_id), |slot_index| {
                let slot = &slots[slot_index as usize];
                slot.user_id.is(user_id) && slot.video_id.is(video_id)
            });
        if let Some(slot_index) = found {
            let slot = &mut self.slots[slot_index as usize];
            if let Some(session) = slot
                .sessions
                .as_mut_slice()
                .iter_mut()
                .find(|session| session.start_ms == key.start_ms)
            {
                session.set_stored_start_ms(Some(key.start_ms));
                return;
            }
        }
        self.deleted.push(key.clone());
    }

    /// Number of open sessions.
    pub fn open_sessions(&self) -> usize {
        self.open_sessions
    }

    /// Whether the key `(user_id, video_id)` has an open session here.
    pub fn holds_key(&self, user_id: &str, video_id: &str) -> bool {
        self.keys
            .find(key_fingerprint(user_id, video_id), |slot_index| {
                let slot = &self.slots[slot_index as usize];
                slot.user_id.is(user_id) && slot.video_id.is(video_id)
            })
            .is_some_and(|slot_index| !self.slots[slot_index as usize].sessions.is_empty())
    }

    /// Number of `(user_id, video_id)` keys with at least one open session.
    pub fn open_keys(&self) -> usize {
        self.open_keys
    }

    /// Heartbeats held in full (the unfrozen tails); the rest of the state is
    /// per session. Bounded by what arrives within the lateness window.
    pub fn held_events(&self) -> usize {
        debug_assert_eq!(
            self.held,
            self.slots
                .iter()
                .flat_map(|slot| slot.sessions.as_slice())
                .map(|session| session.tail.len())
                .sum::<usize>()
        );
        self.held
    }

    #[inline]
    fn is_late(&self, time_ms: i64) -> bool {
        self.watermark_ms
            .is_some_and(|wm| time_ms < wm.saturating_sub(self.config.lateness_ms))
    }

    /// Heartbeats older than this are late (and may be frozen).
    #[inline]
    fn horizon_ms(&self) -> i64 {
        self.watermark_ms
            .map_or(i64::MIN, |wm| wm.saturating_sub(self.config.lateness_ms))
    }

    #[inline]
    fn holds_id(&self, id_fingerprint: u64, event_id: &str) -> bool {
        let slots = &self.slots;
        self.ids
            .contains(id_fingerprint, self.horizon_ms(), |slot_index| {
                slots[slot_index as usize].holds_id(event_id)
            })
    }

    /// A push freezes its session's tail once the front is older than this:
    /// an eighth of the lateness behind the horizon, so runs are frozen at
    /// once and the tail's front is read once per run.
    #[inline]
    pub(super) fn freeze_before_ms(&self) -> i64 {
        self.watermark_ms
            .map_or(i64::MIN, |wm| wm.saturating_sub(self.hold_ms()))
    }

    /// How far behind the newest heartbeat a tail's front may fall before
    /// a push freezes it: the lateness and an eighth of it.
    #[inline]
    fn hold_ms(&self) -> i64 {
        self.config
            .lateness_ms
            .saturating_add(self.config.lateness_ms / 8)
    }

    /// The slot of `(user_id, video_id)`, created if needed.
    #[inline]
    fn slot_for(&mut self, key_fingerprint: u64, user_id: &str, video_id: &str) -> SlotIndex {
        let slots = &self.slots;
        let found = self.keys.find(key_fingerprint, |slot_index| {
            let slot = &slots[slot_index as usize];
            slot.user_id.is(user_id) && slot.video_id.is(video_id)
        });
        if let Some(slot_index) = found {
            return slot_index;
        }
        let slot_index = match self.free_slots.pop() {
            Some(slot_index) => slot_index,
            None => {
                self.slots.push(KeySlot::default());
                SlotIndex::try_from(self.slots.len() - 1).expect("fewer than 2^32 open keys")
            }
        };
        self.keys.insert(key_fingerprint, slot_index);
        let slot = &mut self.slots[slot_index as usize];
        slot.user_id = Id::new(user_id);
        slot.video_id = Id::new(video_id);
        slot.live = true;
        slot_index
    }

    /// Adds a heartbeat to its key's sessions (SPEC 5.3: it joins the session
    /// before it and/or after it when within the gap); returns the index of
    /// the session that now holds it.
    fn merge(&mut self, slot_index: SlotIndex, event: EventRef<'_>, id_fingerprint: u64) -> usize {
        let EventRef {
            event_id,
            device_id,
            time_ms,
            position_ms,
            state,
            ad_id,
            ..
        } = event;
        let horizon_ms = self.horizon_ms();
        if self.checks_ids {
            self.ids
                .insert(id_fingerprint, time_ms, slot_index, horizon_ms);
        }
        self.held += 1;
        let held = NewHeld {
            point: Point {
                time_ms,
                position_ms,
                playing: state == PlaybackState::Playing,
                has_ad: !ad_id.is_empty(),
            },
            event_id,
            hold_ms: self.hold_ms(),
        };
        let gap_ms = self.config.gap_ms;
        let slot = &mut self.slots[slot_index as usize];
        let id = event_id.as_bytes();
        let sessions = slot.sessions.as_slice();
        let after = sessions.partition_point(|s| s.starts_before(time_ms, id));
        let inside = after > 0 && sessions[after - 1].ends_after(time_ms, id);
        let joins_previous =
            after > 0 && time_ms.saturating_sub(sessions[after - 1].last.time_ms) < gap_ms;
        let joins_next =
            after < sessions.len() && sessions[after].start_ms.saturating_sub(time_ms) < gap_ms;
        let target = match (inside, joins_previous, joins_next) {
            (true, _, _) => {
                slot.sessions.as_mut_slice()[after - 1].insert_within(held);
                after - 1
            }
            (false, true, true) => {
                let later = slot.sessions.remove(after);
                if let Some(stored_ms) = later.stored_start_ms() {
                    self.deleted.push(slot.key(stored_ms));
                }
                let previous = &mut slot.sessions.as_mut_slice()[after - 1];
                previous.append(held);
                previous.absorb(later);
                self.open_sessions -= 1;
                after - 1
            }
            (false, true, false) => {
                slot.sessions.as_mut_slice()[after - 1].append(held);
                after - 1
            }
            (false, false, true) => {
                let session = &mut slot.sessions.as_mut_slice()[after];
                session.prepend(held);
                // The store holds it under its old start (queued once: the
                // start only moves earlier).
                if let Some(stored_ms) = session.stored_start_ms() {
                    session.set_stored_start_ms(None);
                    self.deleted.push(slot.key(stored_ms));
                }
                after
            }
            (false, false, false) => {
                let uid = self.next_uid;
                self.next_uid = uid.wrapping_add(1);
                let deadline_ms = time_ms.saturating_add(held.hold_ms);
                self.watermark_queue
                    .push(Reverse((deadline_ms, slot_index, uid)));
                if slot.sessions.is_empty() {
                    self.open_keys += 1;
                }
                let tail = Tail::in_buffer(
                    self.spare_tails
                        .pop()
                        .unwrap_or_else(|| VecDeque::with_capacity(TAIL_CAPACITY)),
                );
                slot.sessions
                    .insert(after, LiveSession::new(uid, held, device_id, tail));
                self.open_sessions += 1;
                after
            }
        };
        let session = &mut slot.sessions.as_mut_slice()[target];
        session.devices.add(device_id);
        session.add_ad(ad_id);
        if self.track_upserts && !session.dirty {
            session.dirty = true;
            self.changed.insert(slot_index);
        }
        target
    }

    fn finalize_by_watermark(&mut self, watermark_ms: i64) {
        let lateness_ms = self.config.lateness_ms;
        while let Some(&Reverse((deadline_ms, slot_index, uid))) = self.watermark_queue.peek() {
            if deadline_ms >= watermark_ms {
                break;
            }
            self.watermark_queue.pop();
            // Every session of the slot with this uid: the entry's own (none
            // once it was finalized or merged away, or its slot released),
            // and any other that shares its uid after the counter wrapped.
            // A session is finalized only once its own due time has passed,
            // else queued again, so an entry that finds the wrong session
            // costs a check and nothing else.
            let mut index = 0;
            while let Some(found) = self.slots[slot_index as usize].sessions.as_slice()[index..]
                .iter()
                .position(|session| session.uid == uid)
            {
                index += found;
                let due_ms = self.slots[slot_index as usize].sessions.as_slice()[index]
                    .last
                    .time_ms
                    .saturating_add(self.config.gap_ms)
                    .saturating_add(lateness_ms);
                if due_ms < watermark_ms {
                    self.finalize(slot_index, index);
                } else {
                    let next_ms = self.let_go_idle(slot_index, index, due_ms, watermark_ms);
                    self.watermark_queue
                        .push(Reverse((next_ms, slot_index, uid)));
                    index += 1;
                }
            }
            self.release_if_empty(slot_index);
        }
    }

    /// Freezes the whole tail of a session that has had no heartbeat for
    /// the hold (`end + hold` behind the watermark: whatever comes next for
    /// it sorts after all it holds) and gives the buffer back, so a viewer
    /// who moved on costs its summary, not a lateness window of heartbeats,
    /// until the gap closes the session. Returns when to look at the session
    /// next: when it may be idle, or else final (`due_ms`).
    fn let_go_idle(
        &mut self,
        slot_index: SlotIndex,
        index: usize,
        due_ms: i64,
        watermark_ms: i64,
    ) -> i64 {
        let (hold_ms, horizon_ms) = (self.hold_ms(), self.horizon_ms());
        let session = &mut self.slots[slot_index as usize].sessions.as_mut_slice()[index];
        let idle_ms = session.last.time_ms.saturating_add(hold_ms);
        if !session.tail.is_empty() && idle_ms >= watermark_ms {
            return idle_ms.min(due_ms);
        }
        // Also a tail a restore emptied, which still has its buffer.
        self.held -= session.freeze_before(horizon_ms);
        debug_assert!(
            session.tail.is_empty(),
            "an idle tail is all behind the horizon"
        );
        let tail = std::mem::take(&mut session.tail);
        self.keep_spare(tail);
        due_ms
    }

    /// Keeps the buffer of a tail let go for a new session, while the pool
    /// has room.
    fn keep_spare(&mut self, tail: Tail) {
        let buffer = Tail::into_buffer(tail);
        if buffer.capacity() > 0 && self.spare_tails.len() < SPARE_TAILS {
            self.spare_tails.push(buffer);
        }
    }

    /// Closes a session for good: its state is dropped and a `Final` queued.
    fn finalize(&mut self, slot_index: SlotIndex, index: usize) {
        let slot = &mut self.slots[slot_index as usize];
        let mut session = slot.sessions.remove(index);
        self.held -= session.tail.len();
        let tail = std::mem::take(&mut session.tail);
        if let Some(stored_ms) = session
            .stored_start_ms()
            .filter(|&stored_ms| stored_ms != session.start_ms)
        {
            self.deleted.push(slot.key(stored_ms));
        }
        self.finals
            .push(session.to_session(&slot.user_id, &slot.video_id));
        self.open_sessions -= 1;
        if slot.sessions.is_empty() {
            self.open_keys -= 1;
        }
        self.keep_spare(tail);
    }

    /// Frees a slot that holds nothing any more.
    fn release_if_empty(&mut self, slot_index: SlotIndex) {
        let slot = &mut self.slots[slot_index as usize];
        if !slot.live || !slot.sessions.is_empty() {
            return;
        }
        self.keys.remove(
            key_fingerprint(slot.user_id.as_str(), slot.video_id.as_str()),
            slot_index,
        );
        slot.live = false;
        slot.user_id = Id::default();
        slot.video_id = Id::default();
        self.free_slots.push(slot_index);
    }
}

/// A restore under way: see [`Sessionizer::start_restore`].
pub struct Restoring<'a> {
    sessionizer: &'a mut Sessionizer,
    fresh: bool,
    /// A restore is not a push: idleness continues as it was.
    pushed_since_advance: bool,
}

impl Restoring<'_> {
    /// Merges one restored heartbeat.
    pub fn push(&mut self, event: EventRef<'_>) {
        self.sessionizer
            .push_fingerprinted(event, Fingerprints::of(&event, self.sessionizer.checks_ids));
    }

    /// Ends the restore at the stored watermark (or the newest restored
    /// heartbeat's time, if later): tails are frozen up to its horizon.
    pub fn finish(self, watermark_ms: Option<i64>) {
        let sessionizer = self.sessionizer;
        sessionizer.pushed_since_advance = self.pushed_since_advance;
        sessionizer.watermark_ms = sessionizer.watermark_ms.max(watermark_ms);
        let horizon_ms = sessionizer.horizon_ms();
        for slot in &mut sessionizer.slots {
            for session in slot.sessions.as_mut_slice() {
                sessionizer.held -= session.freeze_before(horizon_ms);
                if self.fresh {
                    session.dirty = false;
                    session.set_stored_start_ms(Some(session.start_ms));
                }
            }
        }
        if self.fresh {
            sessionizer.changed.clear();
        }
    }
}

/// Moves the items of `items` whose key is outside `share` into the returned
/// list, keeping the order of both.
fn take_outside<T>(
    items: &mut Vec<T>,
    share: Share,
    key: impl Fn(&T) -> (&String, &String),
) -> Vec<T> {
    if share == Share::ALL || items.is_empty() {
        return Vec::new();
    }
    let (ours, kept): (Vec<T>, Vec<T>) = std::mem::take(items).into_iter().partition(|item| {
        let (user_id, video_id) = key(item);
        share.holds(user_id, video_id)
    });
    *items = ours;
    kept
}
