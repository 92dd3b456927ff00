//! A lane: one thread owning one instance of one transport plugin version,
//! making that instance's calls in the order they come. Connections belong to
//! the lane (and the instance) that opened them. Every call is counted as a
//! pipeline stage's is (`switchyard_plugin_*`); an instance that faulted, or
//! that outgrew its memory, is replaced. A lane counts the sockets its
//! instance holds, and those it was chosen to open, so that a new connection
//! can be given the lane with the most room.
//!
//! Calls run here, never on a tokio runtime thread: wasmtime-wasi's
//! synchronous bindings enter a runtime with `block_on` inside WASI calls,
//! and a plugin blocked in a socket read must not hold a runtime thread.

use crate::metrics::Metrics;
use crate::plugin::{
    CompiledPlugin, NetGrant, PluginEngine, PluginError, PluginFault, PluginInstance, TransportConnection,
};
use crate::transport::{AttemptProgress, Step, Wait};
use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::time::{Duration, Instant};

/// What one call through a lane gives: the plugin's own answer (which may
/// be an error it returned), or why there is none.
pub(super) type Answer<T> = Result<Result<T, PluginError>, LaneError>;

/// One call, on its way to a lane.
enum Request {
    Open {
        address: String,
        deadline: Instant,
        claim: SocketClaim,
        reply: flume::Sender<Answer<(u64, u64)>>,
    },
    Send {
        id: u64,
        generation: u64,
        message: Arc<Vec<u8>>,
        deadline: Instant,
        /// The attempt's, claimed before the plugin is called.
        progress: Option<AttemptProgress>,
        reply: flume::Sender<Answer<Option<Vec<u8>>>>,
    },
    Close {
        id: u64,
        generation: u64,
    },
    Probe {
        address: String,
        deadline: Instant,
        claim: SocketClaim,
        reply: flume::Sender<Answer<()>>,
    },
}

/// Why a call got no answer from its lane.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(super) enum LaneError {
    /// The plugin misbehaved; its instance was replaced.
    #[error("the plugin {0}")]
    Fault(PluginFault),
    /// The instance that opened the connection was replaced since: the
    /// connection is gone.
    #[error("its connection was lost when the plugin's instance was replaced")]
    Lost,
    /// The call's deadline passed while it waited for the lane (or the
    /// attempt was cut at its deadline first): it was not made.
    #[error("the call waited for the plugin past its deadline; it was not made")]
    Overdue,
    /// The lane's thread is gone (it panicked, or could not start).
    #[error("the plugin's lane thread has stopped")]
    Stopped,
}

/// The handle to one lane, shared by the connections it opened. The thread
/// ends once every handle is gone and the calls queued before are made.
pub(super) struct Lane {
    requests: flume::Sender<Request>,
    state: Arc<LaneState>,
}

/// What a lane's thread and its handles both see.
#[derive(Default)]
struct LaneState {
    /// Bumped each time the lane's instance is replaced (after a fault, or
    /// once it outgrew its memory): a connection of an older generation is gone.
    generation: AtomicU64,
    /// Set when a newer version of the plugin serves: this lane's
    /// connections are not reused.
    retired: AtomicBool,
    /// The sockets the instance held after the lane's last call, plus one
    /// for each [`SocketClaim`] not yet let go: never fewer than the lane
    /// holds and has been asked to open.
    sockets: AtomicUsize,
}

/// A socket a lane was chosen to open (for a connection or a probe): counted
/// in [`Lane::sockets`] from that choice until the lane has made the call and
/// counted what its instance holds after it (or the call is dropped), so that
/// lanes chosen meanwhile see it.
pub(super) struct SocketClaim(Arc<LaneState>);

impl Drop for SocketClaim {
    fn drop(&mut self) {
        self.0.sockets.fetch_sub(1, Relaxed);
    }
}

/// The sockets a lane whose thread is gone counts: more than any lane holds
/// (so the choice of a lane passes it over while another lives), with room
/// for the claims still made on it.
const GONE: usize = usize::MAX / 2;

/// Held by a lane's thread: when the thread ends (a panic; or every handle
/// gone, when no one chooses the lane any more), the lane counts [`GONE`]
/// sockets, so that new connections and probes go to a lane that can serve
/// them rather than all to one whose count stopped where it was.
struct CountedFullOnceGone(Arc<LaneState>);

impl Drop for CountedFullOnceGone {
    fn drop(&mut self) {
        self.0.sockets.store(GONE, Relaxed);
    }
}

impl Lane {
    /// Start a lane running `plugin`, allowed to connect to what `grants`
    /// resolves to only, its calls counted in `metrics`.
    pub(super) fn start(
        name: String,
        engine: Arc<PluginEngine>,
        metrics: Arc<Metrics>,
        plugin: Arc<CompiledPlugin>,
        grants: Arc<NetGrant>,
    ) -> std::io::Result<Lane> {
        let (requests, queue) = flume::unbounded();
        let state = Arc::new(LaneState::default());
        let worker = Worker {
            engine,
            metrics,
            plugin,
            grants,
            instance: None,
            connections: HashMap::new(),
            next_id: 0,
            counted_sockets: 0,
            state: state.clone(),
        };
        let gone = CountedFullOnceGone(state.clone());
        std::thread::Builder::new().name(name).spawn(move || {
            let _gone = gone;
            worker.run(&queue);
        })?;
        Ok(Lane { requests, state })
    }

    /// The generation connections opened now belong to.
    pub(super) fn generation(&self) -> u64 {
        self.state.generation.load(Relaxed)
    }

    /// Whether a newer version of the plugin serves.
    pub(super) fn is_retired(&self) -> bool {
        self.state.retired.load(Relaxed)
    }

    /// Keep this lane's connections from being reused: a newer version serves.
    pub(super) fn retire(&self) {
        self.state.retired.store(true, Relaxed);
    }

    /// The sockets the lane holds, and those claimed on it to be opened.
    pub(super) fn sockets(&self) -> usize {
        self.state.sockets.load(Relaxed)
    }

    /// Count one more socket on this lane until the call given the claim is made.
    pub(super) fn claim_socket(&self) -> SocketClaim {
        self.state.sockets.fetch_add(1, Relaxed);
        SocketClaim(self.state.clone())
    }

    /// Open a connection to `address` on the socket `claim`ed: its id and generation.
    pub(super) async fn open(
        &self,
        claim: SocketClaim,
        address: &str,
        deadline: Instant,
    ) -> Answer<(u64, u64)> {
        let (reply, answer) = flume::bounded(1);
        self.call(Request::Open { address: address.to_owned(), deadline, claim, reply }, answer).await
    }

    /// Send `message` on connection `id` of `generation`, for the attempt
    /// the calling task runs: until the lane takes the call, the attempt
    /// waits (nothing sent), and the lane makes it only if the attempt's
    /// deadline did not abandon it first.
    pub(super) async fn send(
        &self,
        (id, generation): (u64, u64),
        message: Arc<Vec<u8>>,
        deadline: Instant,
    ) -> Answer<Option<Vec<u8>>> {
        let (reply, answer) = flume::bounded(1);
        let progress = AttemptProgress::current();
        progress.iter().for_each(|progress| progress.mark(Step::Waiting(Wait::Lane)));
        self.call(Request::Send { id, generation, message, deadline, progress, reply }, answer).await
    }

    /// Run the plugin's probe of `address`, on the socket `claim`ed.
    pub(super) async fn probe(&self, claim: SocketClaim, address: &str, deadline: Instant) -> Answer<()> {
        let (reply, answer) = flume::bounded(1);
        self.call(Request::Probe { address: address.to_owned(), deadline, claim, reply }, answer).await
    }

    /// Close connection `id` of `generation`, without waiting.
    pub(super) fn close(&self, (id, generation): (u64, u64)) {
        // A stopped lane has no connections left to close.
        let _ = self.requests.send(Request::Close { id, generation });
    }

    async fn call<T>(&self, request: Request, answer: flume::Receiver<Answer<T>>) -> Answer<T> {
        self.requests.send(request).map_err(|_| LaneError::Stopped)?;
        answer.recv_async().await.unwrap_or(Err(LaneError::Stopped))
    }
}

/// The lane thread's state.
struct Worker {
    engine: Arc<PluginEngine>,
    metrics: Arc<Metrics>,
    plugin: Arc<CompiledPlugin>,
    grants: Arc<NetGrant>,
    /// `None` after a fault or a renewal, until a new instance starts.
    instance: Option<PluginInstance>,
    /// The connections the current instance holds, by id.
    connections: HashMap<u64, TransportConnection>,
    next_id: u64,
    /// The instance's sockets as last counted in [`LaneState::sockets`].
    counted_sockets: usize,
    state: Arc<LaneState>,
}

impl Worker {
    /// Instantiate, then make calls until every handle is gone.
    fn run(mut self, queue: &flume::Receiver<Request>) {
        // A failure here is reported to the first call, which tries again.
        self.instance = self.instantiate().ok();
        while let Ok(request) = queue.recv() {
            let claim = self.serve(request);
            self.renew_if_outgrown();
            if self.instance.is_none() {
                // Replace a faulted or outgrown instance now, so the next call does not wait for it.
                self.instance = self.instantiate().ok();
            }
            self.count_sockets();
            // Let go once what the call opened is counted: the lane is never counted short.
            drop(claim);
        }
    }

    /// Count the sockets the instance holds now in [`LaneState::sockets`]
    /// (the claims not yet let go stay counted).
    fn count_sockets(&mut self) {
        let sockets = self.instance.as_ref().map_or(0, PluginInstance::open_sockets);
        // Added before the old count is taken away, so the count is never short meanwhile.
        self.state.sockets.fetch_add(sockets, Relaxed);
        self.state.sockets.fetch_sub(std::mem::replace(&mut self.counted_sockets, sockets), Relaxed);
    }

    fn instantiate(&self) -> Result<PluginInstance, PluginFault> {
        PluginInstance::with_connect_grants(&self.engine, self.plugin.clone(), self.grants.clone())
    }

    /// Make the call `request` asks for; the socket it claimed, if any, to be let go once counted.
    fn serve(&mut self, request: Request) -> Option<SocketClaim> {
        // Each answer may go to nobody: its caller stopped waiting.
        match request {
            Request::Open { address, deadline, claim, reply } => {
                let opened =
                    self.call(deadline, |instance, timeout| instance.open_connection(&address, timeout));
                let generation = self.state.generation.load(Relaxed);
                let opened = opened.map(|opened| {
                    opened.map(|connection| {
                        self.next_id += 1;
                        self.connections.insert(self.next_id, connection);
                        (self.next_id, generation)
                    })
                });
                // Nobody took it (the attempt was given up): close it now, or it would stay open unused.
                if let Err(flume::SendError(Ok(Ok(key)))) = reply.send(opened) {
                    self.serve(Request::Close { id: key.0, generation: key.1 });
                }
                Some(claim)
            }
            Request::Send { id, generation, message, deadline, progress, reply } => {
                let cut =
                    Instant::now() >= deadline || progress.is_some_and(|progress| !progress.start_sending());
                if cut {
                    let _ = reply.send(Err(LaneError::Overdue));
                    return None;
                }
                let current = generation == self.state.generation.load(Relaxed);
                let Some(connection) = self.connections.remove(&id).filter(|_| current) else {
                    let _ = reply.send(Err(LaneError::Lost));
                    return None;
                };
                let sent =
                    self.call(deadline, |instance, timeout| instance.send_on(&connection, &message, timeout));
                if self.instance.is_some() {
                    self.connections.insert(id, connection);
                }
                let _ = reply.send(sent);
                None
            }
            Request::Close { id, generation } => {
                let current = generation == self.state.generation.load(Relaxed);
                if let Some(connection) = self.connections.remove(&id).filter(|_| current) {
                    let instance = self.instance.as_mut().expect("connections live with their instance");
                    if instance.close_connection(connection).is_err() {
                        self.discard();
                    }
                }
                None
            }
            Request::Probe { address, deadline, claim, reply } => {
                let probed =
                    self.call(deadline, |instance, timeout| instance.probe_endpoint(&address, timeout));
                let _ = reply.send(probed);
                Some(claim)
            }
        }
    }

    /// Make one call with the time left until `deadline`; a fault throws
    /// the instance and its connections away. A call whose deadline passed
    /// while it waited in the queue is not made: it timed out.
    fn call<T>(
        &mut self,
        deadline: Instant,
        call: impl FnOnce(&mut PluginInstance, Duration) -> Result<Result<T, PluginError>, PluginFault>,
    ) -> Answer<T> {
        let started = Instant::now();
        let left = deadline.saturating_duration_since(started);
        if left.is_zero() {
            return Err(LaneError::Overdue);
        }
        let instance = match self.instance.take() {
            Some(instance) => Ok(instance),
            None => self.instantiate(),
        };
        let answer = instance.and_then(|instance| call(self.instance.insert(instance), left));
        self.metrics.plugin_called(&self.plugin, started.elapsed(), &answer);
        if let Ok(Err(error)) = &answer {
            self.metrics.plugin_problem(&self.plugin.name, error.kind());
        }
        if answer.is_err() {
            self.discard();
        }
        // Before the caller hears the answer: one told of a fault finds the lane's sockets gone.
        self.count_sockets();
        answer.map_err(LaneError::Fault)
    }

    /// Between calls, let an instance that has [outgrown](PluginInstance::outgrown)
    /// its memory go, its connections closed by the plugin first, so that the
    /// next call starts a fresh one rather than fail at the cap, perhaps with
    /// a message half sent.
    fn renew_if_outgrown(&mut self) {
        let Some(instance) = self.instance.as_mut().filter(|instance| instance.outgrown()) else {
            return;
        };
        for (_, connection) in self.connections.drain() {
            // A fault here changes nothing: the instance goes anyway.
            let _ = instance.close_connection(connection);
        }
        self.metrics.plugin_renewed(&self.plugin.name);
        self.discard();
    }

    /// Throw the instance away, and with it its connections.
    fn discard(&mut self) {
        self.instance = None;
        self.connections.clear();
        self.state.generation.fetch_add(1, Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_lane_whose_thread_panicked_counts_more_sockets_than_any_lane_holds_with_its_claims_after() {
        let state = Arc::new(LaneState::default());
        let gone = CountedFullOnceGone(state.clone());
        let panicked = std::thread::spawn(move || {
            let _gone = gone;
            panic!("a lane's thread panics");
        });
        assert!(panicked.join().is_err());
        assert_eq!(state.sockets.load(Relaxed), GONE);
        let lane = Lane { requests: flume::unbounded().0, state };
        let claim = lane.claim_socket();
        assert!(lane.sockets() > crate::plugin::MAX_SOCKETS * 1024);
        drop(claim);
        assert_eq!(lane.sockets(), GONE);
    }
}
