//! In-order delivery of the rooms a node listens to, shared by the remote
//! engines' readers: per room the last delivered position (see
//! [`crate::rooms`]) drops duplicates; a gap is filled from history by a
//! task *owning* the room (what the subscription brings meanwhile waits in
//! the owner's backlog); after a reconnect or a lag every listened room
//! catches up from history. Offsets history no longer holds are counted as
//! missed when the next delivery shows they were skipped.
//!
//! The reader itself never waits on the backend nor writes a socket: the
//! sink only queues and the writes it returns run on their own task, and at
//! most [`ROOM_WORKERS`] owners read history at once. Resyncs coalesce: a
//! room already owned is only asked to catch up once more before its owner
//! lets go.
//!
//! The engine supplies what is its own through [`Backend`]: reading a page
//! of history, renewing a room's subscription, its metrics.

use crate::history::{Page, MAX_READ};
use crate::rooms::{Gate, Next, Offer, Rooms, Verdict};
use herald_core::{BrokerError, Publication, PublicationSink, RoomKey};
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Semaphore;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// Reconnect events may come in bursts (one per server): wait this long
/// for the rest before resyncing once.
pub const RESYNC_DEBOUNCE: Duration = Duration::from_millis(20);
/// First and longest wait before a room's owner retries a catch-up that
/// failed.
const RETRY_MIN: Duration = Duration::from_millis(200);
const RETRY_MAX: Duration = Duration::from_secs(5);
/// Bounds one room's catch-up (pages read) so a stream that keeps changing
/// epochs cannot hold its owner.
const MAX_CATCHUP_PAGES: usize = 64;
/// Rooms whose owners read history at once; the others wait their turn
/// (their publications queued behind them), so a resync of many rooms
/// cannot flood the backend.
pub const ROOM_WORKERS: usize = 8;

/// What an engine's broker supplies to the shared delivery logic.
pub trait Backend: Send + Sync + 'static {
    /// The state a room's gate holds (see [`Backend::is_live`]).
    type Live: Default + Send + Sync + 'static;
    /// Where history lives, for log lines ("history", "the stream").
    const SOURCE: &'static str;

    /// The rooms this node listens to.
    fn rooms(&self) -> &Rooms<Self::Live>;
    /// Where delivered publications go.
    fn sink(&self) -> &dyn PublicationSink;
    /// Whether a gate's state says the room's subscription is live.
    fn is_live(live: &Self::Live) -> bool;
    /// `Err(Unavailable)` at once while the backend is disconnected.
    fn check_connected(&self) -> Result<(), BrokerError>;
    /// The room's position and up to `limit` stored publications after
    /// `since`, oldest first.
    fn read(
        &self,
        room: &RoomKey,
        since: u64,
        limit: usize,
    ) -> impl Future<Output = Result<Page, BrokerError>> + Send;
    /// Makes sure the room's subscription is live again after a reconnect;
    /// called under the room's gate.
    fn renew(&self, room: &RoomKey) -> impl Future<Output = Result<(), BrokerError>> + Send;
    /// Counts offsets gone from history before they could be delivered.
    fn count_missed(&self, n: u64);
    /// Counts publications delivered from history.
    fn count_catchup(&self, n: u64);
}

/// Where the work off the reader runs: the node's task tracker and
/// cancellation, and the permits bounding history reads.
#[derive(Clone)]
pub struct Workers {
    tasks: TaskTracker,
    cancel: CancellationToken,
    reads: Arc<Semaphore>,
}

impl Workers {
    /// Workers on the node's `tasks`, stopping on `cancel`.
    pub fn new(tasks: TaskTracker, cancel: CancellationToken) -> Self {
        Self {
            tasks,
            cancel,
            reads: Arc::new(Semaphore::new(ROOM_WORKERS)),
        }
    }

    /// The node's task tracker.
    pub fn tasks(&self) -> &TaskTracker {
        &self.tasks
    }

    /// The node's cancellation.
    pub fn cancel(&self) -> &CancellationToken {
        &self.cancel
    }
}

/// A pending resync of every listened room.
#[derive(Default)]
pub struct Resync {
    /// When to run it; `None` when nothing is pending.
    due: Option<Instant>,
    /// Whether subscriptions must be renewed (after a reconnect) or only
    /// history caught up on (after a lag).
    resubscribe: bool,
}

impl Resync {
    /// Asks for a resync in `delay` (the earliest asked wins).
    pub fn request(&mut self, resubscribe: bool, delay: Duration) {
        let at = Instant::now() + delay;
        self.due = Some(self.due.map_or(at, |d| d.min(at)));
        self.resubscribe |= resubscribe;
    }

    /// When the pending resync is due.
    pub fn due(&self) -> Option<Instant> {
        self.due
    }

    /// Takes the pending resync when it is due: whether to re-subscribe.
    pub fn take_due(&mut self) -> Option<bool> {
        if self.due.is_none_or(|d| d > Instant::now()) {
            return None;
        }
        self.due = None;
        Some(std::mem::take(&mut self.resubscribe))
    }
}

/// Sleeps until `at` (for a reader's `select!`, guarded by `at.is_some()`).
pub async fn sleep_until(at: Option<Instant>) {
    if let Some(at) = at {
        tokio::time::sleep_until(at).await;
    }
}

/// A room owner's first piece of work.
enum Work<L> {
    /// Fill the offsets after `after` from history, then offer `p`.
    Fill(Arc<Publication>, u64),
    /// Catch up from history, under the room's gate.
    CatchUp { gate: Gate<L>, resubscribe: bool },
}

/// On the reader: delivers `p` at once when it is next, or leaves it to the
/// room's owner (starting one to fill a gap).
pub fn on_publication<B: Backend>(backend: &Arc<B>, p: Arc<Publication>, workers: &Workers) {
    match backend.rooms().classify(&p) {
        Verdict::Drop | Verdict::Queued => {}
        Verdict::Deliver => {
            // Queued here, in order; the sockets are written elsewhere.
            let writes = backend.sink().deliver(p);
            if !writes.is_empty() {
                workers.tasks.spawn(async move { writes.run() });
            }
        }
        Verdict::Gap { after, owner } => {
            let room = p.room.clone();
            start_owner(backend, room, owner, Some(Work::Fill(p, after)), workers);
        }
    }
}

/// On the reader: catches every listened room up from history (renewing
/// its subscription first when asked), each by an owner of its own; a room
/// already owned only gets its owner to catch up once more.
pub fn resync<B: Backend>(backend: &Arc<B>, resubscribe: bool, workers: &Workers) {
    for (room, _gate) in backend.rooms().listened() {
        if let Some(owner) = backend.rooms().claim_catch_up(&room, resubscribe) {
            start_owner(backend, room, owner, None, workers);
        }
    }
}

/// Runs the owner `id` of `room` on its own task, until the room has
/// nothing left for it (or the node shuts down).
fn start_owner<B: Backend>(
    backend: &Arc<B>,
    room: RoomKey,
    id: u64,
    first: Option<Work<B::Live>>,
    w: &Workers,
) {
    let backend = backend.clone();
    let (cancel, reads) = (w.cancel.clone(), w.reads.clone());
    w.tasks.spawn(async move {
        tokio::select! {
            biased;
            () = cancel.cancelled() => {}
            () = own(&*backend, &room, id, first, &reads) => {}
        }
    });
}

/// The owner's loop: its first work, then the room's backlog in order and
/// any catch-up asked meanwhile. A catch-up that fails is retried (with
/// backoff) while the room is still this owner's.
async fn own<B: Backend>(
    b: &B,
    room: &RoomKey,
    id: u64,
    first: Option<Work<B::Live>>,
    reads: &Semaphore,
) {
    let mut work = first;
    let mut retry = RETRY_MIN;
    loop {
        if let Some(job) = work.take() {
            let Ok(permit) = reads.acquire().await else {
                return;
            };
            match job {
                Work::Fill(p, after) => {
                    if let Err(e) = fill(b, &p, after, id).await {
                        tracing::warn!(room = %p.room, error = %e, "could not fill a gap from {}", B::SOURCE);
                    }
                    offer(b, p, false, id);
                }
                Work::CatchUp { gate, resubscribe } => {
                    let result = resync_room(b, room, &gate, resubscribe, id).await;
                    drop(permit);
                    if let Err(e) = result {
                        tracing::warn!(room = %room, error = %e, "catch-up failed; retrying");
                        tokio::time::sleep(retry).await;
                        retry = (retry * 2).min(RETRY_MAX);
                        if !b.rooms().owns(room, id) {
                            return;
                        }
                        work = Some(Work::CatchUp { gate, resubscribe });
                        continue;
                    }
                    retry = RETRY_MIN;
                }
            }
        }
        match b.rooms().next(room, id) {
            Next::Publication(p) => match b.rooms().classify_owned(&p, id) {
                Verdict::Deliver => b.sink().deliver(p).run(),
                Verdict::Gap { after, .. } => work = Some(Work::Fill(p, after)),
                Verdict::Drop | Verdict::Queued => {}
            },
            Next::CatchUp { gate, resubscribe } => {
                work = Some(Work::CatchUp { gate, resubscribe });
            }
            Next::Done => return,
        }
    }
}

/// Delivers the stored publications between `after` and `p`.
async fn fill<B: Backend>(
    b: &B,
    p: &Publication,
    after: u64,
    owner: u64,
) -> Result<(), BrokerError> {
    let before = p.position.offset;
    let mut since = after;
    while since + 1 < before {
        let want = usize::try_from(before - since - 1).unwrap_or(MAX_READ);
        let page = b.read(&p.room, since, want).await?;
        if page.position.epoch != p.position.epoch {
            return Ok(());
        }
        let Some(last) = page.publications.last().map(|q| q.position.offset) else {
            return Ok(());
        };
        for q in page.publications {
            if q.position.offset >= before {
                return Ok(());
            }
            offer(b, q, true, owner);
        }
        since = last;
    }
    Ok(())
}

/// Delivers `p` if it is new, counting offsets skipped over; by the room's
/// owner, which writes the sockets itself (off the reader).
fn offer<B: Backend>(b: &B, p: Arc<Publication>, from_history: bool, owner: u64) {
    let Offer::Deliver { missed } = b.rooms().offer(&p, owner) else {
        return;
    };
    if missed > 0 {
        b.count_missed(missed);
        tracing::warn!(
            room = %p.room,
            missed,
            before = p.position.offset,
            "publications gone from {} before delivery",
            B::SOURCE
        );
    }
    if from_history {
        b.count_catchup(1);
    }
    b.sink().deliver(p).run();
}

/// Renews one room's subscription (when asked) and catches up on it, under
/// its gate so a concurrent unsubscribe cannot interleave.
async fn resync_room<B: Backend>(
    b: &B,
    room: &RoomKey,
    gate: &Gate<B::Live>,
    resubscribe: bool,
    owner: u64,
) -> Result<(), BrokerError> {
    b.check_connected()?;
    let live = gate.lock().await;
    if !B::is_live(&live) || !b.rooms().is_wanted(room, gate) {
        return Ok(());
    }
    if resubscribe {
        b.renew(room).await?;
    }
    catch_up(b, room, owner).await
}

/// Delivers what `room` published since the last delivered position; after
/// an epoch change, everything of the new epoch history holds.
async fn catch_up<B: Backend>(b: &B, room: &RoomKey, owner: u64) -> Result<(), BrokerError> {
    let Some(cursor) = b.rooms().cursor(room) else {
        let page = b.read(room, 0, 0).await?;
        b.rooms().set_baseline(room, page.position);
        return Ok(());
    };
    let (mut epoch, mut since) = (cursor.epoch, cursor.offset);
    for _ in 0..MAX_CATCHUP_PAGES {
        let page = b.read(room, since, MAX_READ).await?;
        if page.position.epoch != epoch {
            epoch = page.position.epoch;
            since = 0;
            continue;
        }
        let Some(last) = page.publications.last().map(|p| p.position.offset) else {
            return Ok(());
        };
        for p in page.publications {
            offer(b, p, true, owner);
        }
        if last >= page.position.offset {
            return Ok(());
        }
        since = last;
    }
    Ok(())
}
