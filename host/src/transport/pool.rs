//! A connection pool for one endpoint: at most `max_size` connections, the
//! idle ones kept for reuse, and an owned guard per acquisition.
//!
//! [`Pool::acquire`] waits (at most `acquire_timeout`) for a slot, then hands
//! out the freshest idle connection that has not aged out, or connects. The
//! [`Pooled`] guard holds the slot and the connection. Dropping it closes the
//! connection, so one whose exchange errored or was cancelled half-way is never
//! reused; only [`Pooled::release`], called after a complete good exchange,
//! returns it to the idle list. An idle connection is closed once it has been
//! idle for `idle_timeout` or lived for `max_lifetime`, by a task that wakes
//! when the first one is due ([`Pool::reap`]), so a quiet pool does not keep
//! its peer's sockets open. [`Pool::close_idle`] closes the idle
//! connections and keeps those in use now from coming back (an endpoint that
//! turned unhealthy). A transport keeps one pool per endpoint in [`Pools`].
//! Acquisitions that waited for a slot are counted where [`Pools::count_waits`]
//! says: in the host's metrics, which outlive the pools of a rebuilt destination.

use super::progress::{AttemptProgress, Step, Wait};
use crate::metrics::PoolWaits;
use crate::resilience::{Outcome, RetryReason};
use prometheus_client::metrics::counter::Counter;
use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::io;
use std::ops::{Deref, DerefMut};
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::sync::{Arc, Mutex, MutexGuard, RwLock, Weak};
use std::time::Duration;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;

/// How a [`Pool`] sizes and ages its connections.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PoolConfig {
    /// Most connections open at once, in use and idle together; an
    /// acquisition beyond it waits for one to be released or closed.
    pub max_size: usize,
    /// Most idle connections kept; one released beyond it is closed.
    pub max_idle: usize,
    /// An idle connection unused this long is closed, not reused. Shorter
    /// than peers' keep-alive (60 s and more is common), so that the pool, not
    /// the peer, closes it and a request never races the peer's close.
    pub idle_timeout: Duration,
    /// A connection this old is closed, not reused, so traffic follows new
    /// DNS answers and rebalanced peers.
    pub max_lifetime: Duration,
    /// Longest wait for a free slot before [`PoolError::Timeout`].
    pub acquire_timeout: Duration,
}

impl From<&crate::config::PoolSettings> for PoolConfig {
    fn from(settings: &crate::config::PoolSettings) -> PoolConfig {
        PoolConfig {
            max_size: settings.max_size,
            max_idle: settings.max_idle,
            idle_timeout: Duration::from_millis(settings.idle_timeout_ms),
            max_lifetime: Duration::from_millis(settings.max_lifetime_ms),
            acquire_timeout: Duration::from_millis(settings.acquire_timeout_ms),
        }
    }
}

impl Default for PoolConfig {
    /// 64 connections, all may stay idle, idle for 30 s, 10 min old, 1 s to acquire.
    fn default() -> PoolConfig {
        PoolConfig {
            max_size: 64,
            max_idle: 64,
            idle_timeout: Duration::from_secs(30),
            max_lifetime: Duration::from_secs(600),
            acquire_timeout: Duration::from_secs(1),
        }
    }
}

/// Why [`Pool::acquire`] gave no connection.
#[derive(Debug, thiserror::Error)]
pub enum PoolError {
    /// Every slot stayed taken for `waited`: the work was shed here, the
    /// endpoint never saw it.
    #[error("no connection free within {waited:?} (pool of {max_size})")]
    Timeout {
        /// How long the acquisition waited ([`PoolConfig::acquire_timeout`]).
        waited: Duration,
        /// The pool's [`PoolConfig::max_size`].
        max_size: usize,
    },
    /// Connecting failed; nothing was sent.
    #[error(transparent)]
    Connect(io::Error),
}

impl PoolError {
    /// How a transport's attempt to `address` fails on this error: a timeout
    /// is load shed locally, a connect error is retryable.
    pub(crate) fn into_attempt_error(self, address: &str) -> (Outcome, String) {
        match self {
            PoolError::Timeout { waited, max_size } => (
                Outcome::Shed,
                format!("no connection to {address} free within {waited:?} (pool of {max_size})"),
            ),
            PoolError::Connect(err) => (Outcome::Retryable(RetryReason::Connect), err.to_string()),
        }
    }
}

/// A snapshot of one pool's connections, from [`Pool::stats`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct PoolStats {
    /// Connections open: idle and in use.
    pub size: usize,
    /// Idle connections kept.
    pub idle: usize,
    /// Connections handed out and not yet released or dropped.
    pub in_use: usize,
    /// Acquisitions so far that found every slot taken and had to wait: for a pool counting
    /// into a host's metrics ([`Pools::count_waits`]), since the host started (or, for an endpoint
    /// a reload removed and added back, since it came back), over every pool its destination had
    /// to this endpoint.
    pub waits: u64,
}

/// The connections to one endpoint. Shared as an `Arc` by the guards it hands out.
pub struct Pool<C> {
    config: PoolConfig,
    /// One permit per connection in use or being made: bounds them at
    /// `max_size`, and since a connection is only made when no idle one is
    /// left, bounds idle and in use together too.
    slots: Arc<Semaphore>,
    idle: Mutex<Idle<C>>,
    is_open: fn(&C) -> bool,
    /// Guards alive; atomic so that stats need not take the idle lock twice.
    in_use: AtomicUsize,
    /// Acquisitions that waited: the pool's own count, or a series of the host's metrics.
    waits: Counter,
}

/// The idle list and the generation it belongs to.
struct Idle<C> {
    /// In release order: the oldest release at the front, the freshest at the back.
    connections: VecDeque<IdleConnection<C>>,
    /// Bumped by [`Pool::close_idle`]; a connection made (or last taken from
    /// the list) in an older generation is not taken back.
    generation: u64,
    /// Whether a task is waiting to close the connections as they age out
    /// ([`Pool::reap`]): set when one is spawned, cleared when it finds none left.
    reaping: bool,
}

struct IdleConnection<C> {
    connection: C,
    created: Instant,
    since: Instant,
}

impl<C> Pool<C> {
    /// An empty pool. `is_open` is asked about an idle connection before it is
    /// handed out again (has the peer closed it while it sat idle?); one that
    /// is not open is closed and the next one tried.
    pub fn new(config: PoolConfig, is_open: fn(&C) -> bool) -> Pool<C> {
        Pool::counting_waits(config, is_open, Counter::default())
    }

    /// [`Pool::new`], counting the acquisitions that wait in `waits`.
    fn counting_waits(config: PoolConfig, is_open: fn(&C) -> bool, waits: Counter) -> Pool<C> {
        Pool {
            config,
            slots: Arc::new(Semaphore::new(config.max_size)),
            idle: Mutex::new(Idle { connections: VecDeque::new(), generation: 0, reaping: false }),
            is_open,
            in_use: AtomicUsize::new(0),
            waits,
        }
    }

    /// The pool's settings.
    pub fn config(&self) -> &PoolConfig {
        &self.config
    }

    /// A connection: the freshest idle one, or a new one from `connect`
    /// (called only when no idle one is left), once a slot is free. Waits at
    /// most `acquire_timeout` for the slot; the connect itself is bounded by
    /// the caller. Cancelling the acquisition frees the slot.
    pub async fn acquire<F, Fut>(self: &Arc<Self>, connect: F) -> Result<Pooled<C>, PoolError>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = io::Result<C>>,
    {
        // The attempt's deadline may cut the waits below: nothing is sent in them.
        let mark = AttemptProgress::mark_current;
        mark(Step::Waiting(Wait::Connection));
        let slot = match self.slots.clone().try_acquire_owned() {
            Ok(slot) => slot,
            Err(_) => {
                self.waits.inc();
                let waited = self.config.acquire_timeout;
                match tokio::time::timeout(waited, self.slots.clone().acquire_owned()).await {
                    Ok(slot) => slot.expect("a pool never closes its semaphore"),
                    Err(_) => return Err(PoolError::Timeout { waited, max_size: self.config.max_size }),
                }
            }
        };
        let generation = loop {
            match self.take_idle(Instant::now()) {
                (Some(idle), generation) if (self.is_open)(&idle.connection) => {
                    mark(Step::MaySend);
                    return Ok(self.guard(idle.connection, idle.created, generation, true, slot));
                }
                (Some(closed), _) => drop(closed),
                (None, generation) => break generation,
            }
        };
        mark(Step::Connecting);
        let connection = connect().await.map_err(PoolError::Connect)?;
        mark(Step::MaySend);
        Ok(self.guard(connection, Instant::now(), generation, false, slot))
    }

    /// Close every idle connection, and keep every connection in use now from
    /// returning: called when the endpoint turns unhealthy.
    pub fn close_idle(&self) {
        let closed = {
            let mut idle = self.lock_idle();
            idle.generation += 1;
            std::mem::take(&mut idle.connections)
        };
        drop(closed);
    }

    /// How many connections are open, idle and in use now.
    pub fn stats(&self) -> PoolStats {
        let idle = self.lock_idle().connections.len();
        let in_use = self.in_use.load(Relaxed);
        PoolStats { size: idle + in_use, idle, in_use, waits: self.waits.get() }
    }

    fn guard(
        self: &Arc<Self>,
        connection: C,
        created: Instant,
        generation: u64,
        reused: bool,
        slot: OwnedSemaphorePermit,
    ) -> Pooled<C> {
        self.in_use.fetch_add(1, Relaxed);
        Pooled { connection: Some(connection), created, generation, reused, pool: self.clone(), _slot: slot }
    }

    /// The freshest idle connection that has not aged out (closing the aged
    /// ones met on the way and at the old end), and the current generation.
    fn take_idle(&self, now: Instant) -> (Option<IdleConnection<C>>, u64) {
        let mut aged = Vec::new();
        let mut idle = self.lock_idle();
        while idle.connections.front().is_some_and(|oldest| !self.is_fresh(oldest, now)) {
            aged.extend(idle.connections.pop_front());
        }
        let found = loop {
            match idle.connections.pop_back() {
                Some(freshest) if self.is_fresh(&freshest, now) => break Some(freshest),
                Some(stale) => aged.push(stale),
                None => break None,
            }
        };
        let generation = idle.generation;
        drop(idle);
        drop(aged);
        (found, generation)
    }

    fn is_fresh(&self, idle: &IdleConnection<C>, now: Instant) -> bool {
        self.due(idle).is_none_or(|due| now < due)
    }

    /// When `idle` is to be closed: idle for `idle_timeout`, or `max_lifetime`
    /// old; `None` when both are past what an instant can hold.
    fn due(&self, idle: &IdleConnection<C>) -> Option<Instant> {
        let idled = idle.since.checked_add(self.config.idle_timeout);
        let aged = idle.created.checked_add(self.config.max_lifetime);
        idled.into_iter().chain(aged).min()
    }

    /// Close the idle connections that are due, and tell when the next one
    /// is; `None` (the reaper ends) once none is left.
    fn reap_due(&self, now: Instant) -> Option<Instant> {
        let mut idle = self.lock_idle();
        let (due, kept): (VecDeque<_>, VecDeque<_>) =
            std::mem::take(&mut idle.connections).into_iter().partition(|idle| !self.is_fresh(idle, now));
        idle.connections = kept;
        let next = idle.connections.iter().filter_map(|idle| self.due(idle)).min();
        idle.reaping = next.is_some();
        drop(idle);
        drop(due);
        next
    }

    fn lock_idle(&self) -> MutexGuard<'_, Idle<C>> {
        self.idle.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

impl<C: Send + 'static> Pool<C> {
    /// Take `connection` back unless the list is full, it aged out, or the
    /// pool was closed since it was made; start the reaper if none is waiting
    /// (and the caller is in a runtime: otherwise what aged out is closed at
    /// the next acquisition).
    fn put_idle(self: &Arc<Self>, connection: C, created: Instant, generation: u64) {
        let now = Instant::now();
        let (refused, reap) = {
            let mut idle = self.lock_idle();
            let young = now.saturating_duration_since(created) < self.config.max_lifetime;
            if young && generation == idle.generation && idle.connections.len() < self.config.max_idle {
                idle.connections.push_back(IdleConnection { connection, created, since: now });
                let reap = !idle.reaping && tokio::runtime::Handle::try_current().is_ok();
                idle.reaping |= reap;
                (None, reap)
            } else {
                (Some(connection), false)
            }
        };
        drop(refused);
        if reap {
            tokio::spawn(Pool::reap(Arc::downgrade(self)));
        }
    }

    /// Close each idle connection when it is due, until none is left or the
    /// pool is gone (it holds the pool weakly: a dropped pool closes its own).
    async fn reap(pool: Weak<Pool<C>>) {
        while let Some(next) = pool.upgrade().and_then(|pool| pool.reap_due(Instant::now())) {
            tokio::time::sleep_until(next).await;
        }
    }
}

impl<C> std::fmt::Debug for Pool<C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pool").field("config", &self.config).field("stats", &self.stats()).finish()
    }
}

/// A connection taken from a [`Pool`], with its slot. Dropping it closes the
/// connection and frees the slot; [`release`](Pooled::release) returns it.
pub struct Pooled<C> {
    /// `Some` until released.
    connection: Option<C>,
    created: Instant,
    generation: u64,
    reused: bool,
    pool: Arc<Pool<C>>,
    _slot: OwnedSemaphorePermit,
}

impl<C: Send + 'static> Pooled<C> {
    /// Return the connection to the pool for reuse; call only after a complete,
    /// good exchange that left it ready for the next one.
    pub fn release(mut self) {
        let connection = self.connection.take().expect("present until released");
        self.pool.put_idle(connection, self.created, self.generation);
    }

    /// Whether the connection served an earlier acquisition (so an error on it
    /// may be the peer having closed it while idle).
    pub fn is_reused(&self) -> bool {
        self.reused
    }
}

impl<C> Deref for Pooled<C> {
    type Target = C;

    fn deref(&self) -> &C {
        self.connection.as_ref().expect("present until released")
    }
}

impl<C> DerefMut for Pooled<C> {
    fn deref_mut(&mut self) -> &mut C {
        self.connection.as_mut().expect("present until released")
    }
}

impl<C> Drop for Pooled<C> {
    fn drop(&mut self) {
        self.pool.in_use.fetch_sub(1, Relaxed);
    }
}

impl<C> std::fmt::Debug for Pooled<C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pooled").field("reused", &self.reused).finish_non_exhaustive()
    }
}

/// One [`Pool`] per endpoint address, made on first use, all with one config.
pub struct Pools<C> {
    config: PoolConfig,
    is_open: fn(&C) -> bool,
    /// Where each pool counts its waits; `None`: in the pool.
    waits: Option<PoolWaits>,
    by_address: RwLock<HashMap<String, Arc<Pool<C>>>>,
}

impl<C> Pools<C> {
    /// No pools yet; each will have `config` and ask `is_open` (see [`Pool::new`]).
    pub fn new(config: PoolConfig, is_open: fn(&C) -> bool) -> Pools<C> {
        Pools { config, is_open, waits: None, by_address: RwLock::default() }
    }

    /// Count the acquisitions that wait in `waits` (from [`Metrics::pool_waits`], its series per
    /// endpoint address) rather than in each pool: a transport built again for a changed
    /// destination counts on from where the old one was. Call it before the first [`get`](Self::get).
    ///
    /// [`Metrics::pool_waits`]: crate::metrics::Metrics::pool_waits
    pub fn count_waits(self, waits: PoolWaits) -> Pools<C> {
        Pools { waits: Some(waits), ..self }
    }

    /// The pool of `address`, made now if it has none.
    pub fn get(&self, address: &str) -> Arc<Pool<C>> {
        let pools = self.by_address.read().unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some(pool) = pools.get(address) {
            return pool.clone();
        }
        drop(pools);
        let mut pools = self.by_address.write().unwrap_or_else(|poisoned| poisoned.into_inner());
        let pool = pools.entry(address.to_owned()).or_insert_with(|| {
            let waits = self.waits.as_ref().map_or_else(Counter::default, |waits| waits.endpoint(address));
            Arc::new(Pool::counting_waits(self.config, self.is_open, waits))
        });
        pool.clone()
    }

    /// [`Pool::close_idle`] on the pool of `address`, if it has one.
    pub fn close_idle(&self, address: &str) {
        if let Some(pool) = self.existing(address) {
            pool.close_idle();
        }
    }

    /// [`Pool::stats`] of the pool of `address`, if it has one.
    pub fn stats(&self, address: &str) -> Option<PoolStats> {
        self.existing(address).map(|pool| pool.stats())
    }

    fn existing(&self, address: &str) -> Option<Arc<Pool<C>>> {
        self.by_address.read().unwrap_or_else(|poisoned| poisoned.into_inner()).get(address).cloned()
    }
}

impl<C> std::fmt::Debug for Pools<C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pools").field("config", &self.config).finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::future::{Ready, ready};
    use std::sync::atomic::AtomicU32;

    /// A pool of numbered connections (the number says which connect made it).
    fn pool(config: PoolConfig) -> (Arc<Pool<u32>>, Arc<AtomicU32>) {
        (Arc::new(Pool::new(config, |_| true)), Arc::new(AtomicU32::new(0)))
    }

    /// A connect that numbers its connection 1, 2, 3… in order.
    fn connect(made: &AtomicU32) -> impl FnOnce() -> Ready<io::Result<u32>> + '_ {
        move || ready(Ok(made.fetch_add(1, Relaxed) + 1))
    }

    async fn take(pool: &Arc<Pool<u32>>, made: &AtomicU32) -> Pooled<u32> {
        pool.acquire(connect(made)).await.expect("a free slot")
    }

    fn config(max_size: usize, max_idle: usize) -> PoolConfig {
        PoolConfig { max_size, max_idle, ..PoolConfig::default() }
    }

    #[tokio::test(start_paused = true)]
    async fn released_connection_is_reused() {
        let (pool, made) = pool(PoolConfig::default());
        let first = take(&pool, &made).await;
        assert_eq!((*first, first.is_reused()), (1, false));
        first.release();
        let again = take(&pool, &made).await;
        assert_eq!((*again, again.is_reused()), (1, true));
        assert_eq!(made.load(Relaxed), 1, "no second connect");
    }

    #[tokio::test(start_paused = true)]
    async fn the_freshest_idle_connection_is_reused_first() {
        let (pool, made) = pool(PoolConfig::default());
        let (one, two) = (take(&pool, &made).await, take(&pool, &made).await);
        one.release();
        two.release();
        assert_eq!(*take(&pool, &made).await, 2);
    }

    #[tokio::test(start_paused = true)]
    async fn dropped_guard_discards_its_connection() {
        let (pool, made) = pool(PoolConfig::default());
        drop(take(&pool, &made).await);
        assert_eq!(pool.stats(), PoolStats { size: 0, idle: 0, in_use: 0, waits: 0 });
        assert_eq!(*take(&pool, &made).await, 2, "a new connection, not the dropped one");
    }

    #[tokio::test(start_paused = true)]
    async fn max_size_obeyed_waiter_gets_the_released_connection() {
        let (pool, made) = pool(config(1, 1));
        let held = take(&pool, &made).await;
        let waiter = tokio::spawn({
            let (pool, made) = (pool.clone(), made.clone());
            async move { *take(&pool, &made).await }
        });
        while pool.stats().waits == 0 {
            tokio::task::yield_now().await;
        }
        held.release();
        assert_eq!(waiter.await.unwrap(), 1, "the waiter reuses the one connection");
        assert_eq!(made.load(Relaxed), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn max_size_violated_acquisition_times_out() {
        let (pool, made) = pool(PoolConfig { acquire_timeout: Duration::from_millis(250), ..config(2, 2) });
        let _held = (take(&pool, &made).await, take(&pool, &made).await);
        let started = Instant::now();
        let err = pool.acquire(connect(&made)).await.unwrap_err();
        assert!(
            matches!(err, PoolError::Timeout { waited, max_size: 2 } if waited == Duration::from_millis(250))
        );
        assert_eq!(started.elapsed(), Duration::from_millis(250));
        assert_eq!(err.to_string(), "no connection free within 250ms (pool of 2)");
        let (outcome, message) = err.into_attempt_error("10.0.0.1:80");
        assert_eq!(outcome, Outcome::Shed);
        assert_eq!(message, "no connection to 10.0.0.1:80 free within 250ms (pool of 2)");
        assert_eq!(pool.stats(), PoolStats { size: 2, idle: 0, in_use: 2, waits: 1 });
        assert_eq!(made.load(Relaxed), 2);
    }

    #[tokio::test(start_paused = true)]
    async fn failed_or_cancelled_connect_frees_its_slot() {
        let (pool, made) = pool(config(1, 1));
        let refused = pool.acquire(|| ready(Err(io::ErrorKind::ConnectionRefused.into()))).await;
        let Err(PoolError::Connect(err)) = refused else { panic!("expected a connect error") };
        assert_eq!(err.kind(), io::ErrorKind::ConnectionRefused);
        let hung = pool.acquire(std::future::pending);
        assert!(tokio::time::timeout(Duration::from_secs(5), hung).await.is_err());
        assert_eq!(*take(&pool, &made).await, 1, "the slot came back both times");
        assert_eq!(pool.stats().waits, 0);
    }

    #[tokio::test(start_paused = true)]
    async fn an_attempt_tells_whether_it_waited_connected_or_got_its_connection() {
        /// Whether `acquisition` was cut at a 100 ms deadline, and its step then.
        async fn step_at_deadline(acquisition: impl Future) -> (bool, Step) {
            let progress = AttemptProgress::default();
            let cut = tokio::time::timeout(Duration::from_millis(100), progress.scope(acquisition)).await;
            (cut.is_err(), progress.abandon())
        }
        let (pool, made) = pool(config(1, 1));
        let connecting = pool.acquire(std::future::pending::<io::Result<u32>>);
        assert_eq!(step_at_deadline(connecting).await, (true, Step::Connecting));
        let held = take(&pool, &made).await;
        let waiting = pool.acquire(connect(&made));
        assert_eq!(step_at_deadline(waiting).await, (true, Step::Waiting(Wait::Connection)));
        held.release();
        let reused = async { drop(pool.acquire(connect(&made)).await.expect("idle")) };
        assert_eq!(step_at_deadline(reused).await, (false, Step::MaySend), "handed out: it may send");
    }

    #[tokio::test(start_paused = true)]
    async fn idle_connection_past_idle_timeout_is_closed() {
        let (pool, made) = pool(PoolConfig::default());
        take(&pool, &made).await.release();
        tokio::time::advance(Duration::from_secs(29)).await;
        let reused = take(&pool, &made).await;
        assert_eq!(*reused, 1, "still fresh after 29 s");
        reused.release();
        tokio::time::advance(Duration::from_secs(30)).await;
        let fresh = take(&pool, &made).await;
        assert_eq!(*fresh, 2, "idle for 30 s: not reused");
        assert_eq!(pool.stats(), PoolStats { size: 1, idle: 0, in_use: 1, waits: 0 }, "and closed");
    }

    #[tokio::test(start_paused = true)]
    async fn an_idle_connection_is_closed_when_due_though_nothing_is_acquired() {
        let lifetime = PoolConfig { max_lifetime: Duration::from_secs(60), ..PoolConfig::default() };
        let (pool, made) = pool(lifetime);
        let (one, two) = (take(&pool, &made).await, take(&pool, &made).await);
        one.release();
        tokio::time::sleep(Duration::from_secs(20)).await;
        two.release();
        tokio::time::sleep(Duration::from_secs(9)).await;
        assert_eq!(pool.stats().idle, 2, "29 s: both still fresh");
        tokio::time::sleep(Duration::from_secs(2)).await;
        assert_eq!(pool.stats(), PoolStats { size: 1, idle: 1, in_use: 0, waits: 0 }, "idle 30 s: closed");
        let old = take(&pool, &made).await;
        assert_eq!(*old, 2);
        tokio::time::sleep(Duration::from_secs(20)).await;
        old.release();
        tokio::time::sleep(Duration::from_secs(11)).await;
        assert_eq!(pool.stats().idle, 0, "60 s old, idle only 11 s: closed at its lifetime");
        let tasks = tokio::runtime::Handle::current().metrics();
        assert_eq!(tasks.num_alive_tasks(), 0, "the reaper ended with nothing left to close");
        take(&pool, &made).await.release();
        assert_eq!(tasks.num_alive_tasks(), 1, "and a connection released again starts one");
        drop(pool);
        tokio::time::sleep(Duration::from_secs(31)).await;
        assert_eq!(tasks.num_alive_tasks(), 0, "a dropped pool's reaper ends");
    }

    #[tokio::test(start_paused = true)]
    async fn connection_past_max_lifetime_is_closed_though_busy() {
        let lifetime = PoolConfig { max_lifetime: Duration::from_secs(60), ..PoolConfig::default() };
        let (pool, made) = pool(lifetime);
        for _ in 0..3 {
            let connection = take(&pool, &made).await;
            assert_eq!(*connection, 1);
            connection.release();
            tokio::time::advance(Duration::from_secs(20)).await;
        }
        assert_eq!(*take(&pool, &made).await, 2, "60 s old: closed, though never idle 30 s");
        let old = take(&pool, &made).await;
        tokio::time::advance(Duration::from_secs(60)).await;
        old.release();
        assert_eq!(pool.stats().idle, 0, "released past its lifetime: not kept");
    }

    #[tokio::test(start_paused = true)]
    async fn max_idle_violated_extra_connection_is_closed() {
        let (pool, made) = pool(config(4, 1));
        let (one, two) = (take(&pool, &made).await, take(&pool, &made).await);
        one.release();
        two.release();
        assert_eq!(pool.stats(), PoolStats { size: 1, idle: 1, in_use: 0, waits: 0 });
        assert_eq!(*take(&pool, &made).await, 1, "the first kept; the second closed");
    }

    #[tokio::test(start_paused = true)]
    async fn close_idle_closes_idle_and_refuses_older_connections_in_use() {
        let (pool, made) = pool(PoolConfig::default());
        let (idle, busy) = (take(&pool, &made).await, take(&pool, &made).await);
        idle.release();
        pool.close_idle();
        assert_eq!(pool.stats(), PoolStats { size: 1, idle: 0, in_use: 1, waits: 0 });
        busy.release();
        assert_eq!(pool.stats().idle, 0, "made before close_idle: not taken back");
        let fresh = take(&pool, &made).await;
        assert_eq!(*fresh, 3);
        fresh.release();
        assert_eq!(pool.stats().idle, 1, "made after close_idle: kept");
    }

    #[tokio::test(start_paused = true)]
    async fn idle_connection_the_peer_closed_is_skipped() {
        let pool = Arc::new(Pool::new(PoolConfig::default(), |id: &u32| *id != 2));
        let made = AtomicU32::new(0);
        let (one, two) = (take(&pool, &made).await, take(&pool, &made).await);
        one.release();
        two.release();
        let open = take(&pool, &made).await;
        assert_eq!(*open, 1, "2 is closed: skipped");
        assert_eq!(pool.stats(), PoolStats { size: 1, idle: 0, in_use: 1, waits: 0 }, "and dropped");
    }

    #[tokio::test(start_paused = true)]
    async fn stats_count_open_idle_and_in_use_connections() {
        let (pool, made) = pool(PoolConfig::default());
        let guards: Vec<_> =
            [take(&pool, &made).await, take(&pool, &made).await, take(&pool, &made).await].into();
        assert_eq!(pool.stats(), PoolStats { size: 3, idle: 0, in_use: 3, waits: 0 });
        let mut guards = guards.into_iter();
        guards.next().unwrap().release();
        drop(guards.next());
        assert_eq!(pool.stats(), PoolStats { size: 2, idle: 1, in_use: 1, waits: 0 });
    }

    #[tokio::test(start_paused = true)]
    async fn pools_keep_one_pool_per_address() {
        let pools: Pools<u32> = Pools::new(PoolConfig::default(), |_| true);
        assert_eq!(pools.stats("a:1"), None, "no pool before first use");
        let made = AtomicU32::new(0);
        take(&pools.get("a:1"), &made).await.release();
        assert!(Arc::ptr_eq(&pools.get("a:1"), &pools.get("a:1")));
        assert_eq!(pools.stats("a:1").map(|stats| stats.idle), Some(1));
        assert_eq!(pools.stats("b:1"), None);
        pools.close_idle("a:1");
        pools.close_idle("b:1");
        assert_eq!(pools.stats("a:1").map(|stats| stats.idle), Some(0));
    }

    #[tokio::test(start_paused = true)]
    async fn pools_built_again_count_on_in_the_waits_they_were_given() {
        let metrics = crate::metrics::Metrics::default();
        let config = PoolConfig { acquire_timeout: Duration::from_millis(10), ..config(1, 1) };
        let pools: Pools<u32> = Pools::new(config, |_| true).count_waits(metrics.pool_waits("api"));
        let made = AtomicU32::new(0);
        let _held = take(&pools.get("a:1"), &made).await;
        pools.get("a:1").acquire(connect(&made)).await.unwrap_err();
        let again: Pools<u32> = Pools::new(config, |_| true).count_waits(metrics.pool_waits("api"));
        take(&again.get("a:1"), &made).await.release();
        assert_eq!(again.stats("a:1").map(|stats| stats.waits), Some(1));
        let waits = "switchyard_endpoint_pool_waits_total{destination=\"api\",endpoint=\"a:1\"} 1\n";
        assert!(metrics.encode().contains(waits), "{}", metrics.encode());
    }

    #[test]
    #[ignore = "a measurement, not a check: run by hand in release mode, see the report it prints"]
    fn report_acquire_ns() {
        use std::hint::black_box;
        const BATCH: usize = 1_000;
        const BATCHES: usize = 2_000;
        const SINGLES: usize = 1_000_000;
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        runtime.block_on(async {
            let pools: Pools<u64> = Pools::new(PoolConfig::default(), |_| true);
            let pool = pools.get("10.0.0.1:9000");
            let cycle = async |pool: &Arc<Pool<u64>>| {
                let connection = pool.acquire(|| ready(Ok(7))).await.expect("uncontended");
                black_box(&*connection);
                connection.release();
            };
            for _ in 0..BATCH * 100 {
                cycle(&pool).await;
            }
            assert_eq!(pool.stats().size, 1, "every acquisition reused the one idle connection");
            let mut batches: Vec<f64> = Vec::with_capacity(BATCHES);
            for _ in 0..BATCHES {
                let start = std::time::Instant::now();
                for _ in 0..BATCH {
                    cycle(black_box(&pool)).await;
                }
                batches.push(start.elapsed().as_nanos() as f64 / BATCH as f64);
            }
            let mut with_lookup: Vec<f64> = Vec::with_capacity(BATCHES);
            for _ in 0..BATCHES {
                let start = std::time::Instant::now();
                for _ in 0..BATCH {
                    cycle(&pools.get(black_box("10.0.0.1:9000"))).await;
                }
                with_lookup.push(start.elapsed().as_nanos() as f64 / BATCH as f64);
            }
            let (mut singles, mut clock): (Vec<u64>, Vec<u64>) = (Vec::new(), Vec::new());
            for _ in 0..SINGLES {
                let start = std::time::Instant::now();
                cycle(&pool).await;
                singles.push(start.elapsed().as_nanos() as u64);
                let start = std::time::Instant::now();
                clock.push(black_box(start).elapsed().as_nanos() as u64);
            }
            assert_eq!(pool.stats().waits, 0);
            let quantile = |sorted: &[f64], q: f64| sorted[((sorted.len() - 1) as f64 * q).round() as usize];
            let sorted = |mut values: Vec<f64>| {
                values.sort_by(f64::total_cmp);
                values
            };
            let (batches, with_lookup) = (sorted(batches), sorted(with_lookup));
            let singles = sorted(singles.into_iter().map(|ns| ns as f64).collect());
            let clock = sorted(clock.into_iter().map(|ns| ns as f64).collect());
            println!("pool acquire + release of an idle connection, uncontended, current-thread runtime:");
            println!("{:<44} {:>10} {:>10}", "", "median ns", "p99 ns");
            for (name, values) in [
                ("per acquisition, batches of 1000", &batches),
                ("  with Pools::get(address) lookup", &with_lookup),
                ("single acquisition (Instant around each)", &singles),
                ("  clock overhead (empty Instant pair)", &clock),
            ] {
                println!("{name:<44} {:>10.1} {:>10.1}", quantile(values, 0.5), quantile(values, 0.99));
            }
        });
    }
}
