//! A WASM `balancer` plugin as a [`Balancer`]: the plugin sees the endpoints' stats and picks, the host
//! checks its answer, and a plugin that fails falls back to [`P2cPeakEwma`] and says why.
//!
//! ```text
//! pick / pick_for (blocking) or pick_async (awaiting, for tokio tasks), on any thread
//!   ─► bounded queue ─► plugin thread: PluginInstance::pick, under deadline and memory cap
//!   ◄─ its answer, waited for at most `patience`
//!   ─► checked: an eligible endpoint, or `none` while none is eligible ─► the pick
//!      anything else, or no answer ─► on_fallback(reason), and P2cPeakEwma picks
//! ```
//!
//! The plugin runs on a thread of its own, never on the caller's: wasmtime-wasi's synchronous bindings
//! enter a tokio runtime with `block_on`, which panics on a thread that already runs one.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::view::eligible_count;
use super::{Balancer, EndpointView, P2cPeakEwma, endpoint_id};
use crate::message::Message;
use crate::metrics::Metrics;
use crate::plugin::{CompiledPlugin, EndpointRecord, PluginEngine, PluginFault, PluginInstance, PluginKind};

/// Picks that may wait for the plugin thread; one more falls back at once ([`FallbackReason::Overloaded`]).
pub const PICK_QUEUE: usize = 64;

/// Added to the plugin's own time bound when waiting for an answer: epoch ticks arrive late and threads
/// are scheduled late on a busy machine.
pub const ANSWER_MARGIN: Duration = Duration::from_millis(100);

/// Called with the reason of every pick that fell back to p2c.
pub type OnFallback = Box<dyn Fn(&FallbackReason) + Send + Sync>;

/// A [`Balancer`] that asks a WASM `balancer` plugin.
///
/// Each pick shows the plugin every endpoint as an [`EndpointRecord`] (position, address, weight from the
/// config = [`EndpointView::configured_weight`], requests in flight, latency in microseconds, and
/// `healthy` = [`EndpointView::eligible`]) and the message's head.
/// The answer is honoured when it is the `index` of an eligible endpoint, or `none` while no endpoint is
/// eligible. Otherwise, and when the plugin traps, overruns its deadline or its memory cap, this pick is
/// made by a [`P2cPeakEwma`] instead and `on_fallback` is told why. A faulted instance is thrown away and
/// a fresh one instantiated (right after the fault, or at the next pick if that fails too); so is one
/// that [outgrew](PluginInstance::outgrown) its memory, between picks. The plugin's calls, counts, faults
/// and renewed instances are counted in the `metrics` given, as a route stage's are.
///
/// The plugin runs on one thread owned by the balancer, so picks from many workers take turns. A caller
/// of [`pick`](Balancer::pick) or [`pick_for`](Self::pick_for) blocks until the answer arrives, at most
/// [`patience`](Self::patience); [`pick_async`](Self::pick_async) awaits it instead, so a tokio worker
/// thread runs other tasks meanwhile. The thread ends when the balancer is dropped (after the call in
/// progress, if any, which its deadline bounds).
pub struct PluginBalancer {
    /// The plugin version this balancer runs.
    plugin: Arc<CompiledPlugin>,
    /// Hands picks to the plugin thread; dropping it, with the balancer, ends the thread.
    requests: flume::Sender<Request>,
    /// How long a pick waits for the plugin's answer.
    patience: Duration,
    /// Picks whenever the plugin's answer cannot be used.
    fallback: P2cPeakEwma,
    /// Told why, once per pick that fell back.
    on_fallback: OnFallback,
}

/// Why a pick did not use the plugin's answer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FallbackReason {
    /// The plugin answered an index out of range or of an ineligible endpoint, or `none` while some
    /// endpoint was eligible. Its instance is kept: a wrong answer is not a fault.
    #[error(
        "the plugin answered {}, not one of the {eligible} eligible endpoints (of {endpoints})",
        answer.map_or("none".to_owned(), |index| index.to_string())
    )]
    Invalid {
        /// The plugin's answer.
        answer: Option<u32>,
        /// How many endpoints it was shown.
        endpoints: usize,
        /// How many of them were eligible.
        eligible: usize,
    },
    /// The plugin trapped, timed out or hit its memory cap (or, after such a fault, could not be
    /// instantiated again); its instance was thrown away.
    #[error("the plugin {0}")]
    Fault(PluginFault),
    /// No answer within the balancer's patience (the pick waited behind others, or the machine is
    /// overloaded). The plugin still answers, to nobody.
    #[error("the plugin did not answer within {0:?}")]
    Overdue(Duration),
    /// This many picks were already waiting for the plugin.
    #[error("{0} picks were already waiting for the plugin")]
    Overloaded(usize),
    /// The plugin thread is gone (it panicked).
    #[error("the plugin's thread has stopped")]
    Stopped,
}

impl FallbackReason {
    /// A stable snake_case name of the reason, for metrics: `invalid`, the [`PluginFault::kind`] of a
    /// fault, `overdue`, `overloaded` or `stopped`.
    pub fn kind(&self) -> &'static str {
        match self {
            FallbackReason::Invalid { .. } => "invalid",
            FallbackReason::Fault(fault) => fault.kind(),
            FallbackReason::Overdue(_) => "overdue",
            FallbackReason::Overloaded(_) => "overloaded",
            FallbackReason::Stopped => "stopped",
        }
    }
}

/// A balancer plugin that cannot serve at all.
#[derive(Debug, thiserror::Error)]
pub enum PluginBalancerError {
    /// The plugin implements another world.
    #[error("plugin \"{name}\": is a {kind}, not a balancer")]
    NotABalancer {
        /// Plugin name.
        name: String,
        /// What it is instead.
        kind: &'static str,
    },
    /// Its first instance faulted.
    #[error("plugin \"{name}\": cannot instantiate: {fault}")]
    Instantiate {
        /// Plugin name.
        name: String,
        /// What went wrong.
        fault: PluginFault,
    },
    /// The operating system refused a thread.
    #[error("plugin \"{name}\": cannot start its balancer thread: {error}")]
    Thread {
        /// Plugin name.
        name: String,
        /// Why.
        error: std::io::Error,
    },
}

impl PluginBalancerError {
    /// [`NotABalancer`](PluginBalancerError::NotABalancer) unless `plugin` is a balancer.
    pub(crate) fn unless_balancer(plugin: &CompiledPlugin) -> Result<(), PluginBalancerError> {
        match plugin.kind {
            PluginKind::Balancer => Ok(()),
            kind => Err(PluginBalancerError::NotABalancer { name: plugin.name.clone(), kind: kind.as_str() }),
        }
    }
}

/// One pick, on its way to the plugin thread.
struct Request {
    /// The message head; `None` for the blank head [`Balancer::pick`] shows, having no message.
    head: Option<Vec<u8>>,
    endpoints: Vec<EndpointView>,
    /// Where the answer goes; disconnected once the caller stopped waiting.
    reply: flume::Sender<Result<Option<u32>, PluginFault>>,
}

impl PluginBalancer {
    /// A balancer running `plugin`, a `balancer` plugin compiled by `engine`, on a thread of its own.
    ///
    /// `addresses` are the destination's configured endpoint addresses: the plugin is shown the address
    /// whose [`endpoint_id`] is the view's `id` (an empty address for an id not among them).
    /// `on_fallback` is called on the picking thread, once per pick that fell back, with no rate limit:
    /// it should be cheap and never block (count, or hand an event over without waiting).
    ///
    /// Instantiates the plugin once before returning, so a plugin that cannot start is an error here;
    /// the calling thread waits for that. On a tokio runtime use [`start`](Self::start), which awaits it.
    pub fn new(
        engine: Arc<PluginEngine>,
        metrics: Arc<Metrics>,
        plugin: Arc<CompiledPlugin>,
        addresses: Vec<String>,
        on_fallback: OnFallback,
    ) -> Result<PluginBalancer, PluginBalancerError> {
        let (balancer, started) = PluginBalancer::spawn(engine, metrics, plugin, addresses, on_fallback)?;
        balancer.started(started.recv())
    }

    /// [`new`](Self::new), awaiting the first instance instead of blocking the calling thread on it.
    pub async fn start(
        engine: Arc<PluginEngine>,
        metrics: Arc<Metrics>,
        plugin: Arc<CompiledPlugin>,
        addresses: Vec<String>,
        on_fallback: OnFallback,
    ) -> Result<PluginBalancer, PluginBalancerError> {
        let (balancer, started) = PluginBalancer::spawn(engine, metrics, plugin, addresses, on_fallback)?;
        let outcome = started.recv_async().await;
        balancer.started(outcome)
    }

    /// The balancer and its plugin thread, which says on the receiver how its first instance started.
    fn spawn(
        engine: Arc<PluginEngine>,
        metrics: Arc<Metrics>,
        plugin: Arc<CompiledPlugin>,
        addresses: Vec<String>,
        on_fallback: OnFallback,
    ) -> Result<(PluginBalancer, Started), PluginBalancerError> {
        PluginBalancerError::unless_balancer(&plugin)?;
        let name = plugin.name.clone();
        let addresses = addresses.into_iter().map(|address| (endpoint_id(&address), address)).collect();
        let (requests, queue) = flume::bounded(PICK_QUEUE);
        let (ready, started) = flume::bounded(1);
        let mut blank_head = Vec::new();
        Message::new("", "").encode(&mut blank_head, 0, false);
        let worker = Worker {
            engine,
            metrics,
            plugin: plugin.clone(),
            instance: None,
            addresses,
            blank_head,
            records: Vec::new(),
        };
        std::thread::Builder::new()
            .name(format!("switchyard-balancer-{name}"))
            .spawn(move || worker.run(&ready, &queue))
            .map_err(|error| PluginBalancerError::Thread { name, error })?;
        let patience = 2 * plugin.settings.timeout() + ANSWER_MARGIN;
        let balancer =
            PluginBalancer { plugin, requests, patience, fallback: P2cPeakEwma::new(), on_fallback };
        Ok((balancer, started))
    }

    /// This balancer once its thread said how its first instance started.
    fn started(
        self,
        outcome: Result<Result<(), PluginFault>, flume::RecvError>,
    ) -> Result<PluginBalancer, PluginBalancerError> {
        let name = self.plugin.name.clone();
        match outcome {
            Ok(Ok(())) => Ok(self),
            Ok(Err(fault)) => Err(PluginBalancerError::Instantiate { name, fault }),
            Err(flume::RecvError::Disconnected) => Err(PluginBalancerError::Instantiate {
                name,
                fault: PluginFault::Unusable("its thread stopped while instantiating".into()),
            }),
        }
    }

    /// The plugin version this balancer runs.
    pub fn plugin(&self) -> &Arc<CompiledPlugin> {
        &self.plugin
    }

    /// The longest a pick waits for the plugin: one instantiation and one call, each bounded by the
    /// plugin's deadline, plus [`ANSWER_MARGIN`].
    pub fn patience(&self) -> Duration {
        self.patience
    }

    /// Picks an endpoint for `message`, whose head (topic, headers, payload size) the plugin is shown.
    /// Like [`Balancer::pick`] otherwise: called once per dispatch attempt; returns the position of an
    /// eligible endpoint, or `None` when none is. The calling thread waits for the answer, at most
    /// [`patience`](Self::patience): on a tokio runtime use [`pick_async`](Self::pick_async).
    pub fn pick_for(&self, message: &Message, endpoints: &[EndpointView]) -> Option<usize> {
        self.pick_with_head(Some(head_of(message)), endpoints)
    }

    /// [`pick_for`](Self::pick_for), awaiting the plugin's answer instead of blocking the calling
    /// thread on it: the pick a destination makes on its runtime, whose other tasks run meanwhile.
    /// When no other pick is queued before it, it first looks for the answer for 10 µs.
    /// Falls back to p2c, telling `on_fallback` why, exactly as `pick_for` does.
    pub async fn pick_async(&self, message: &Message, endpoints: &[EndpointView]) -> Option<usize> {
        let answer = match self.send(Some(head_of(message)), endpoints) {
            Ok(answer) => self.answer_of(answer).await,
            Err(reason) => Err(reason),
        };
        self.settle(answer, endpoints)
    }

    /// The plugin's answer to a pick just sent: looked for briefly when no other pick waits before
    /// it, then awaited, at most [`patience`](Self::patience).
    async fn answer_of(&self, answer: Answer) -> Result<Option<u32>, FallbackReason> {
        // Behind other picks, the answer is far off: await it at once.
        let look = if self.requests.len() <= 1 { AWAIT_AFTER } else { Duration::ZERO };
        let answer = match briefly(&answer, look) {
            Some(answer) => answer,
            None => match tokio::time::timeout(self.patience, answer.recv_async()).await {
                Ok(answer) => answer.map_err(|_| FallbackReason::Stopped)?,
                Err(_) => return Err(FallbackReason::Overdue(self.patience)),
            },
        };
        answer.map_err(FallbackReason::Fault)
    }

    fn pick_with_head(&self, head: Option<Vec<u8>>, endpoints: &[EndpointView]) -> Option<usize> {
        let answer = self.ask(head, endpoints);
        self.settle(answer, endpoints)
    }

    /// The pick the plugin's `answer` makes, if usable; else p2c's, having told why.
    fn settle(
        &self,
        answer: Result<Option<u32>, FallbackReason>,
        endpoints: &[EndpointView],
    ) -> Option<usize> {
        match answer.and_then(|answer| checked(answer, endpoints)) {
            Ok(pick) => pick,
            Err(reason) => {
                (self.on_fallback)(&reason);
                self.fallback.pick(endpoints, None)
            }
        }
    }

    /// The plugin's answer, unchecked, waited for on this thread.
    fn ask(&self, head: Option<Vec<u8>>, endpoints: &[EndpointView]) -> Result<Option<u32>, FallbackReason> {
        let answer = self.send(head, endpoints)?;
        if let Some(answer) = briefly(&answer, STAY_AWAKE) {
            return answer.map_err(FallbackReason::Fault);
        }
        match answer.recv_timeout(self.patience) {
            Ok(answer) => answer.map_err(FallbackReason::Fault),
            Err(flume::RecvTimeoutError::Timeout) => Err(FallbackReason::Overdue(self.patience)),
            Err(flume::RecvTimeoutError::Disconnected) => Err(FallbackReason::Stopped),
        }
    }

    /// Hands a pick to the plugin thread, without waiting; the answer comes on the receiver.
    fn send(&self, head: Option<Vec<u8>>, endpoints: &[EndpointView]) -> Result<Answer, FallbackReason> {
        let (reply, answer) = flume::bounded(1);
        let request = Request { head, endpoints: endpoints.to_vec(), reply };
        self.requests.try_send(request).map_err(|error| match error {
            flume::TrySendError::Full(_) => FallbackReason::Overloaded(PICK_QUEUE),
            flume::TrySendError::Disconnected(_) => FallbackReason::Stopped,
        })?;
        Ok(answer)
    }
}

/// Where the plugin thread says how the first instance started.
type Started = flume::Receiver<Result<(), PluginFault>>;

/// Where the plugin thread answers one pick.
type Answer = flume::Receiver<Result<Option<u32>, PluginFault>>;

/// The head of `message` the plugin is shown: topic, headers and payload size, not the payload.
fn head_of(message: &Message) -> Vec<u8> {
    let mut head = Vec::new();
    message.encode(&mut head, 0, false);
    head
}

/// How long either side of a blocking pick keeps looking for the other's
/// message before it sleeps: a wake-up from sleep costs tens of microseconds
/// on a quiet machine, a wasm pick one or two. The plugin thread always
/// does; so does a caller of [`PluginBalancer::pick_for`] and [`Balancer::pick`].
const STAY_AWAKE: Duration = Duration::from_micros(50);

/// How long [`PluginBalancer::pick_async`], when no other pick waits before
/// its own, looks for the answer before it awaits it: long enough for a
/// quick plugin's answer (a sleep and wake-up would cost ~20 µs a pick),
/// short enough that the runtime thread it runs on is held no longer than a
/// small computation would hold it.
const AWAIT_AFTER: Duration = Duration::from_micros(10);

/// The next message on `channel` if one comes within `patience`, yielding
/// the processor meanwhile.
fn briefly<T>(channel: &flume::Receiver<T>, patience: Duration) -> Option<T> {
    let since = std::time::Instant::now();
    loop {
        match channel.try_recv() {
            Ok(message) => return Some(message),
            Err(flume::TryRecvError::Disconnected) => return None,
            Err(flume::TryRecvError::Empty) if since.elapsed() >= patience => return None,
            Err(flume::TryRecvError::Empty) => std::thread::yield_now(),
        }
    }
}

/// `answer` as a position in `endpoints` if the host may use it: an eligible endpoint, or none while no
/// endpoint is eligible.
fn checked(answer: Option<u32>, endpoints: &[EndpointView]) -> Result<Option<usize>, FallbackReason> {
    let eligible = eligible_count(endpoints);
    let position = answer.and_then(|index| usize::try_from(index).ok());
    match (answer, position) {
        (_, Some(position)) if endpoints.get(position).is_some_and(|endpoint| endpoint.eligible) => {
            Ok(Some(position))
        }
        (None, _) if eligible == 0 => Ok(None),
        _ => Err(FallbackReason::Invalid { answer, endpoints: endpoints.len(), eligible }),
    }
}

impl Balancer for PluginBalancer {
    /// Asks the plugin with a blank head (id 0, empty topic, no headers, empty payload): this trait
    /// carries no message. Use [`PluginBalancer::pick_for`] to show the plugin the message.
    fn pick(&self, endpoints: &[EndpointView], _key: Option<&str>) -> Option<usize> {
        self.pick_with_head(None, endpoints)
    }

    /// Shows the plugin `message`'s head: [`PluginBalancer::pick_for`].
    fn pick_message(
        &self,
        endpoints: &[EndpointView],
        _key: Option<&str>,
        message: &Message,
    ) -> Option<usize> {
        self.pick_for(message, endpoints)
    }
}

impl std::fmt::Debug for PluginBalancer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PluginBalancer")
            .field("plugin", &self.plugin)
            .field("patience", &self.patience)
            .finish_non_exhaustive()
    }
}

/// The plugin thread's state: the live instance and the records shown to the plugin.
struct Worker {
    engine: Arc<PluginEngine>,
    metrics: Arc<Metrics>,
    plugin: Arc<CompiledPlugin>,
    /// `None` after a fault or a renewal, until a new instance starts.
    instance: Option<PluginInstance>,
    /// Configured address by [`endpoint_id`].
    addresses: HashMap<u64, String>,
    /// The head shown for picks without a message: id 0, empty topic, no headers, empty payload.
    blank_head: Vec<u8>,
    /// Reused across picks, so that a pick allocates no address strings once warm.
    records: Vec<EndpointRecord>,
}

impl Worker {
    /// Instantiates, reports how that went on `ready`, then answers picks until the balancer is dropped.
    fn run(mut self, ready: &flume::Sender<Result<(), PluginFault>>, queue: &flume::Receiver<Request>) {
        let started = PluginInstance::new(&self.engine, self.plugin.clone()).map(|instance| {
            self.instance = Some(instance);
        });
        let failed = started.is_err();
        // Nobody left to tell only if the constructor is gone, which it cannot be before this send.
        let _ = ready.send(started);
        if failed {
            return;
        }
        while let Some(request) = briefly(queue, STAY_AWAKE).or_else(|| queue.recv().ok()) {
            if request.reply.is_disconnected() {
                continue; // its caller stopped waiting: the answer would go to nobody
            }
            let answer = self.pick(request.head.as_ref(), &request.endpoints);
            // The caller may have stopped waiting meanwhile; then nobody needs the answer.
            let _ = request.reply.send(answer);
            if self.instance.as_ref().is_some_and(PluginInstance::outgrown) {
                // Let it go between picks, so that the next starts afresh rather than fail at the cap.
                self.metrics.plugin_renewed(&self.plugin.name);
                self.instance = None;
            }
            if self.instance.is_none() {
                // Replace a faulted or outgrown instance now, so the next pick does not wait for it; if
                // this fails, the next pick tries again and reports the fault.
                self.instance = PluginInstance::new(&self.engine, self.plugin.clone()).ok();
            }
        }
    }

    /// The plugin's answer, counted; a fault throws the instance away.
    fn pick(
        &mut self,
        head: Option<&Vec<u8>>,
        endpoints: &[EndpointView],
    ) -> Result<Option<u32>, PluginFault> {
        self.fill(endpoints);
        let head = head.unwrap_or(&self.blank_head);
        let started = Instant::now();
        let instance = match self.instance.take() {
            Some(instance) => Ok(instance),
            None => PluginInstance::new(&self.engine, self.plugin.clone()),
        };
        let answer = instance.and_then(|instance| self.instance.insert(instance).pick(head, &self.records));
        self.metrics.plugin_called(&self.plugin, started.elapsed(), &answer);
        if answer.is_err() {
            self.instance = None;
        }
        answer
    }

    /// Turns `endpoints` into the records shown to the plugin, reusing the previous pick's strings.
    fn fill(&mut self, endpoints: &[EndpointView]) {
        self.records.truncate(endpoints.len());
        for (position, view) in endpoints.iter().enumerate() {
            if position == self.records.len() {
                self.records.push(EndpointRecord {
                    index: 0,
                    address: String::new(),
                    weight: 0,
                    in_flight: 0,
                    latency_micros: 0,
                    healthy: false,
                });
            }
            let record = &mut self.records[position];
            let address = self.addresses.get(&view.id).map_or("", String::as_str);
            if record.address != address {
                record.address.clear();
                record.address.push_str(address);
            }
            record.index = u32::try_from(position).unwrap_or(u32::MAX);
            record.weight = view.effective_configured_weight();
            record.in_flight = view.in_flight;
            record.latency_micros = u64::try_from(view.latency.as_micros()).unwrap_or(u64::MAX);
            record.healthy = view.eligible;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::balance::sim::endpoints;

    #[test]
    fn only_eligible_positions_are_accepted() {
        let mut endpoints = endpoints(3);
        endpoints[1].eligible = false;
        assert_eq!(checked(Some(0), &endpoints), Ok(Some(0)));
        assert_eq!(checked(Some(2), &endpoints), Ok(Some(2)));
        let invalid = |answer| Err(FallbackReason::Invalid { answer, endpoints: 3, eligible: 2 });
        assert_eq!(checked(Some(1), &endpoints), invalid(Some(1)), "ineligible");
        assert_eq!(checked(Some(3), &endpoints), invalid(Some(3)), "out of range");
        assert_eq!(checked(Some(u32::MAX), &endpoints), invalid(Some(u32::MAX)), "far out of range");
    }

    #[test]
    fn none_is_accepted_only_when_no_endpoint_is_eligible() {
        let mut endpoints = endpoints(2);
        endpoints[0].eligible = false;
        assert_eq!(
            checked(None, &endpoints),
            Err(FallbackReason::Invalid { answer: None, endpoints: 2, eligible: 1 })
        );
        endpoints[1].eligible = false;
        assert_eq!(checked(None, &endpoints), Ok(None));
        assert_eq!(checked(None, &[]), Ok(None));
        assert_eq!(
            checked(Some(0), &[]),
            Err(FallbackReason::Invalid { answer: Some(0), endpoints: 0, eligible: 0 })
        );
    }

    #[test]
    fn reasons_name_their_kind_and_quote_the_answer() {
        let fault = FallbackReason::Fault(PluginFault::TimedOut(Duration::from_millis(50)));
        assert_eq!(
            (fault.kind(), fault.to_string().as_str()),
            ("timed_out", "the plugin timed out after 50ms")
        );
        let overloaded = FallbackReason::Overloaded(PICK_QUEUE);
        assert_eq!(overloaded.to_string(), "64 picks were already waiting for the plugin");
        assert_eq!(FallbackReason::Overdue(Duration::from_millis(300)).kind(), "overdue");
    }
}
