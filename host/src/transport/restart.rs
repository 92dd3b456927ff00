//! One long-lived peer per endpoint — a child process, a WebSocket connection — started on demand, and
//! started again after it ends, waiting a backoff that doubles from 100 ms to 10 s (with jitter) while
//! it keeps ending young. Meanwhile attempts to it fail as refused connections do, so the destination
//! core leaves the endpoint out rather than spend attempts on it.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;

/// First wait before starting a peer again that ended young, doubling to [`MAX_BACKOFF`].
const FIRST_BACKOFF: Duration = Duration::from_millis(100);

/// Longest wait before starting a peer again.
const MAX_BACKOFF: Duration = Duration::from_secs(10);

/// A peer that lived this long before it ended starts again without waiting.
const LIVED_LONG: Duration = Duration::from_secs(10);

/// What [`Restarting`] needs to know of a running peer.
pub(super) trait Peer: Send + Sync {
    /// Whether it ended (exited, disconnected).
    fn ended(&self) -> bool;
}

/// The peer of one endpoint; see the module docs.
#[derive(Debug)]
pub(super) struct Restarting<P>(tokio::sync::Mutex<State<P>>);

#[derive(Debug)]
struct State<P> {
    running: Option<(Arc<P>, Instant)>,
    /// The wait before the next start, after the last peer ended young.
    backoff: Option<Duration>,
    /// No start before this.
    not_before: Option<Instant>,
    /// Why the last start failed, while no start has succeeded since: the reason attempts fail meanwhile.
    failed: Option<String>,
}

impl<P> Default for Restarting<P> {
    fn default() -> Restarting<P> {
        Restarting(tokio::sync::Mutex::new(State {
            running: None,
            backoff: None,
            not_before: None,
            failed: None,
        }))
    }
}

impl<P: Peer> Restarting<P> {
    /// The running peer, or one `start` makes now if none runs and no backoff holds it back; why
    /// not otherwise.
    pub(super) async fn get<F, Fut, E>(&self, start: F) -> Result<Arc<P>, NotRunning<E>>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<P, E>>,
        E: std::fmt::Display,
    {
        let mut state = self.0.lock().await;
        if let Some((peer, _)) = state.running.as_ref().filter(|(peer, _)| !peer.ended()) {
            return Ok(peer.clone());
        }
        if let Some((_, started)) = state.running.take() {
            state.backoff = match started.elapsed() >= LIVED_LONG {
                true => None,
                false => Some(state.backoff.map_or(FIRST_BACKOFF, |backoff| (backoff * 2).min(MAX_BACKOFF))),
            };
            state.not_before = state.backoff.map(|backoff| Instant::now() + jittered(backoff));
        }
        let now = Instant::now();
        if let Some(at) = state.not_before.filter(|at| *at > now) {
            let last = state.failed.clone().unwrap_or_else(|| "it ended".to_owned());
            return Err(NotRunning::Waiting(format!("{last}; starting again in {:?}", at - now)));
        }
        let started = start().await;
        let peer = match started {
            Ok(peer) => Arc::new(peer),
            Err(err) => {
                // A failed start counts as one that ended at once.
                let backoff = state.backoff.map_or(FIRST_BACKOFF, |backoff| (backoff * 2).min(MAX_BACKOFF));
                (state.backoff, state.not_before) = (Some(backoff), Some(now + jittered(backoff)));
                state.failed = Some(err.to_string());
                return Err(NotRunning::Failed(err));
            }
        };
        (state.running, state.failed) = (Some((peer.clone(), now)), None);
        Ok(peer)
    }

    /// The running peer, if one runs (without starting one).
    pub(super) fn running(&self) -> Option<Arc<P>> {
        let state = self.0.try_lock().ok()?;
        state.running.as_ref().map(|(peer, _)| peer.clone())
    }
}

/// Why [`Restarting::get`] has no peer to give.
#[derive(Debug)]
pub(super) enum NotRunning<E> {
    /// Starting one failed just now.
    Failed(E),
    /// None runs and the backoff holds back the next start: why the last ended or failed to start, and
    /// when it starts again.
    Waiting(String),
}

impl<E: std::fmt::Display> std::fmt::Display for NotRunning<E> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            NotRunning::Failed(err) => err.fmt(f),
            NotRunning::Waiting(why) => f.write_str(why),
        }
    }
}

/// `backoff`, less up to a fifth at random: peers that ended together do not all start again at once.
fn jittered(backoff: Duration) -> Duration {
    backoff.mul_f64(1.0 - rand::random::<f64>() * 0.2)
}
