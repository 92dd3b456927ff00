//! How a host stops: serving its ingress until told to, then draining within the grace period.

use super::*;

/// How long the listeners have, once a shutdown past its grace period settled every message, to
/// send the answers of the requests that waited for them.
const ANSWERS_AFTER_SHUTDOWN: Duration = Duration::from_secs(1);

/// How long a stop waits, at least, for each write to the state directory it ends with (past
/// its grace period too) before it gives up on one a hung disk holds.
const HUNG_DISK_WAIT: Duration = Duration::from_secs(1);

impl Host {
    /// Serve the configured ingress (HTTP, NATS) until `shutdown` completes, then drain: the
    /// ingress stops first (a NATS subscription admitting what its server had sent), then the host
    /// (a JetStream ingress waits for the host's stop to end to acknowledge, or hand back, what it
    /// pulled).
    ///
    /// Dropped before it returns (a `select!`, an aborted task), it stops the ingress as a
    /// shutdown would, without waiting for it: the host itself runs on until
    /// [`shutdown`](Self::shutdown).
    pub async fn run(&self, shutdown: impl Future<Output = ()> + Send + 'static) -> Result<(), BuildError> {
        let config = self.config();
        let http = match &config.ingress.http {
            Some(http) => Some(crate::ingress::HttpIngress::bind(self.clone(), http.listen).await?),
            None => None,
        };
        let grpc = match &config.ingress.grpc {
            Some(grpc) => Some(crate::ingress::GrpcIngress::bind(self.clone(), grpc.listen).await?),
            None => None,
        };
        let mut nats = Vec::new();
        for entry in &config.ingress.nats {
            nats.push(crate::ingress::NatsIngress::connect(self.clone(), entry.clone()).await?);
        }
        let stop = CancellationToken::new();
        // The ingress serves on tasks of its own: were `run` dropped without telling them to stop,
        // its listeners and subscriptions would run on for good.
        let _stop_if_dropped = stop.clone().drop_guard();
        let serving = nats.into_iter().map(|nats| tokio::spawn(nats.serve(stop.clone().cancelled_owned())));
        let mut serving: Vec<_> = serving.collect();
        if let Some(http) = http {
            serving.push(tokio::spawn(http.serve(stop.clone().cancelled_owned())));
        }
        if let Some(grpc) = grpc {
            serving.push(tokio::spawn(grpc.serve(stop.clone().cancelled_owned())));
        }
        shutdown.await;
        let ingress_stopped = async {
            for ingress in serving {
                if ingress.await.is_err() {
                    tracing::error!("an ingress panicked");
                }
            }
        };
        let stopped = self.shutdown_after(ingress_stopped);
        stop.cancel();
        stopped.await;
        Ok(())
    }

    /// Shut down once `listeners` (told to stop: finishing the requests in flight) are done, or
    /// when the grace period that began with the stop ends, whichever comes first: a request that
    /// waits for its message's delivery (`?wait=true`) or a client that stalls cannot hold the
    /// stop past it. The host's own grace period is what is left of it. What `listeners` gave, if
    /// they finished in time.
    ///
    /// The host is stopping, and the grace period running, from the call on, before the returned
    /// future is first polled: a JetStream ingress among `listeners` waits for the end of the
    /// host's stop rather than give up at a timer of its own, and the spool's start-up redelivery
    /// admits no more (what it did not admit stays in the spool for the next start).
    ///
    /// A request still waiting at the grace period's end has its answer once the shutdown settled
    /// its message: the listeners get a second more to send it.
    pub fn shutdown_after<T>(&self, listeners: impl Future<Output = T>) -> impl Future<Output = Option<T>> {
        let (host, grace, stopping) = (self.clone(), self.shutdown_grace(), Instant::now());
        self.inner.stopping.cancel();
        async move {
            tokio::pin!(listeners);
            if let Ok(stopped) = tokio::time::timeout(grace, &mut listeners).await {
                host.shutdown_within(grace.saturating_sub(stopping.elapsed())).await;
                return Some(stopped);
            }
            tracing::warn!(
                ?grace,
                "requests still in flight at the end of the shutdown grace period: shutting down without them"
            );
            host.shutdown_within(Duration::ZERO).await;
            tokio::time::timeout(ANSWERS_AFTER_SHUTDOWN, listeners).await.ok()
        }
    }

    /// SIGKILL, at once, the processes this host's `subprocess` destinations started and that still
    /// run (each with the process group it leads: what a wrapper started goes with it), and each
    /// they start from now on; for a process about to exit without a shutdown, as a second Ctrl-C
    /// asks: `std::process::exit` runs no destructor, and the terminal's Ctrl-C reaches the
    /// host's process group only, so they would run on without their host.
    pub fn kill_subprocesses(&self) {
        self.inner.reloader.pipeline.dispatch.process_groups().kill_all();
    }

    pub(super) fn shutdown_grace(&self) -> Duration {
        Duration::from_millis(self.config().host.shutdown_grace_ms)
    }

    /// Stop accepting, finish every message already accepted, stop the workers. The first call
    /// begins the shutdown, on a task of its own; it and every later call return once it ended, and
    /// a caller that gives up waiting (a timeout) leaves it running.
    pub async fn shutdown(&self) {
        self.shutdown_within(self.shutdown_grace()).await;
    }

    /// [`shutdown`](Self::shutdown), with a grace period of `grace` if this call begins it. A second
    /// shutdown running beside the first, or after one cancelled half-way, found the workers gone
    /// and went on: it closed the queues and the spool while the first one's workers still
    /// delivered, and returned before they were done.
    pub(super) async fn shutdown_within(&self, grace: Duration) {
        let mut stopped = {
            let mut stopped = self.inner.stopped.lock().unwrap_or_else(|poison| poison.into_inner());
            stopped
                .get_or_insert_with(|| {
                    let (tell, stopped) = tokio::sync::watch::channel(false);
                    let host = self.clone();
                    host.inner.stopping.cancel();
                    tokio::spawn(async move {
                        host.stop_within(grace).await;
                        host.inner.stop_ended.cancel();
                        let _ = tell.send(true);
                    });
                    stopped
                })
                .clone()
        };
        // An error: the shutdown's task panicked (the runtime logs it); there is nothing to wait for.
        let _ = stopped.wait_for(|stopped| *stopped).await;
    }

    /// Resolves once the host is stopping: [`shutdown_after`](Self::shutdown_after) was called
    /// ([`run`](Self::run)'s shutdown came), or a shutdown began.
    pub(crate) async fn stopping(&self) {
        self.inner.stopping.cancelled().await;
    }

    /// Resolves once the host's stop has ended: every receipt is resolved by then, settled or
    /// handed back.
    pub(crate) async fn stop_ended(&self) {
        self.inner.stop_ended.cancelled().await;
    }

    /// The shutdown itself, run once.
    pub(super) async fn stop_within(&self, grace: Duration) {
        // A config applied from here on would start tasks (health checks, dispatchers) nothing
        // stops: it is refused.
        self.inner.reloader.close();
        if let Some(alerting) = self.inner.alerting.lock().unwrap_or_else(|poison| poison.into_inner()).take()
        {
            alerting.abort();
        }
        self.inner.watcher.lock().unwrap_or_else(|poison| poison.into_inner()).take();
        self.inner.sender.write().unwrap_or_else(|poison| poison.into_inner()).take();
        // The sends waiting for room in the intake try again, and are refused.
        self.inner.reloader.pipeline.intake_taken.notify_waiters();
        // The grace period runs from here: a delivery waiting for room in a full destination queue
        // holds its worker (or its hand-over) up, and it is the grace's end that lets it go.
        let pipeline = &self.inner.reloader.pipeline;
        let (past_grace, letters_cut, engine) = (
            pipeline.dispatch.past_grace.clone(),
            pipeline.dispatch.letters_cut.clone(),
            pipeline.engine.clone(),
        );
        let grace_timer = tokio::spawn(async move {
            tokio::time::sleep(grace).await;
            past_grace.cancel();
            // The plugin calls under way end now, as at their deadline, and none starts: the workers
            // shut down what they hold, and what waits in the intake, rather than run it through
            // their stages past the grace period.
            engine.cut_calls();
            // The dead letters it makes get a moment more to reach a dead-letter destination.
            tokio::time::sleep(crate::pipeline::LETTERS_AFTER_GRACE).await;
            letters_cut.cancel();
        });
        // A hung disk holds a write to the state directory for good (a dead letter's append to the
        // file, a re-delivery pass rewriting it, the spool's last removes and fsync, alerts.json):
        // the stop waits for each at most what is left of its grace period (once the grace timer
        // cut what else it waits for), a second at least, then goes on without it. Blocking file
        // I/O cannot be cancelled, only left to go on on its thread: the state directory then
        // stays locked while the process lives.
        let stopping = Instant::now();
        let left = || grace.saturating_sub(stopping.elapsed()).max(HUNG_DISK_WAIT);
        let mut given_up = false;
        let mut give_up = |what: &str| {
            tracing::warn!(
                ?grace,
                "the stop gave up on {what}: not done within the shutdown grace period, or a second past it (a hung disk?)"
            );
            given_up = true;
        };
        let settled = async {
            let workers =
                std::mem::take(&mut *self.inner.workers.lock().unwrap_or_else(|poison| poison.into_inner()));
            let joined = tokio::task::spawn_blocking(move || {
                workers.into_iter().map(|w| w.join()).collect::<Vec<_>>()
            });
            for result in joined.await.expect("joining workers does not panic") {
                if result.is_err() {
                    tracing::error!("a pipeline worker panicked");
                }
            }
            // Every accepted message is now delivered, queued or dead-lettered: drain the queues.
            pipeline.topology.load().close_queues();
            pipeline.dispatch.tracker.close();
            let past_grace = &pipeline.dispatch.past_grace;
            tokio::select! {
                () = pipeline.dispatch.tracker.wait() => {}
                () = past_grace.cancelled() => {
                    tracing::warn!(?grace, "deliveries outlasted the shutdown grace period: dead-lettering the rest");
                    pipeline.dispatch.tracker.wait().await;
                }
            }
        };
        // The dead letters a stop makes try their dead-letter destinations until the letters' cut,
        // then go to the dead-letter file.
        let letters_cut = &pipeline.dispatch.letters_cut;
        if !unless_hung(settled, letters_cut, left).await {
            give_up("the dead letters still being appended to the dead-letter file");
        }
        // Every dead letter is now with a destination or in the file. A re-delivery pass stuck in a
        // dead-letter destination is cut by the grace timer, so it runs until the pass ended: the
        // letter cut stays in the file.
        let redelivery = self.inner.redelivery.lock().await.take();
        if let Some(redelivery) = redelivery
            && !unless_hung(redelivery.stop(), letters_cut, left).await
        {
            give_up("the re-delivery pass over the dead-letter file");
        }
        grace_timer.abort();
        // Every message is settled: its spool record's remove is on disk, and the spool unlocked,
        // before we return.
        if let Some(spool) = &self.inner.spool
            && !spool.close_within(left()).await
        {
            give_up("the spool's last removes and fsync (settled messages may be delivered again)");
        }
        // The firing alerts' last state is written.
        if tokio::time::timeout(left(), self.inner.alerts.close()).await.is_err() {
            give_up("the firing alerts' last state (alerts.json)");
        }
        if given_up {
            tracing::warn!(
                "the state directory stays locked while this process lives: a write given up on may still land there"
            );
            return;
        }
        // Nothing writes to the state directory any more: another host may have it.
        self.inner.state_lock.release();
    }
}

/// Tell the host as `runtime` ends: a task that never ends holds a [`RuntimeEndGuard`], which the
/// runtime drops with its other tasks as it shuts down (dropped, or `shutdown_timeout`), before it
/// stops its timers and I/O. The guard holds the host's intake `sender` and its `pipeline` weakly:
/// it keeps neither alive.
pub(super) fn watch_runtime(
    runtime: &tokio::runtime::Handle,
    sender: &Arc<RwLock<Option<flume::Sender<Envelope>>>>,
    pipeline: &Arc<crate::pipeline::Pipeline>,
) {
    let guard = RuntimeEndGuard { sender: Arc::downgrade(sender), pipeline: Arc::downgrade(pipeline) };
    runtime.spawn(async move {
        let _guard = guard;
        std::future::pending::<()>().await;
    });
}

/// Ends what waits on the host's runtime as it is dropped with the runtime (see [`watch_runtime`]):
/// its tasks are gone (the dispatchers, the deliveries, the spool's re-delivery), and with them
/// whatever would have settled a message, or made room for one. What is in flight then is dropped
/// rather than waited on for good: each message keeps its spool record (with `durability =
/// "spool"`, the next start delivers it), and a request's caller is told
/// [`RequestError::HostGone`]. Quick: it takes locks that are only held briefly, and waits on
/// nothing.
struct RuntimeEndGuard {
    sender: std::sync::Weak<RwLock<Option<flume::Sender<Envelope>>>>,
    pipeline: std::sync::Weak<crate::pipeline::Pipeline>,
}

impl Drop for RuntimeEndGuard {
    fn drop(&mut self) {
        // Sends are refused first, as a shutdown refuses them: a queue emptied below meets no
        // more pushes from a send, and the workers end once they have emptied the intake.
        if let Some(sender) = self.sender.upgrade() {
            sender.write().unwrap_or_else(|poison| poison.into_inner()).take();
        }
        let Some(pipeline) = self.pipeline.upgrade() else { return };
        // The sends waiting for room in the intake try again, and are refused.
        pipeline.intake_taken.notify_waiters();
        // The workers give up what they wait on, and a dispatcher dropped from here on empties
        // its queue; those dropped already are emptied here.
        pipeline.dispatch.runtime_gone.cancel();
        pipeline.topology.load().empty_queues();
    }
}

/// Await `work` until `cut` (the grace timer's cut of what it waits for but the disk), then at
/// most `left()` more: whether it ended. Given up on, it is dropped, not joined: what it left on a
/// blocking thread goes on there.
async fn unless_hung(
    work: impl Future<Output = ()>,
    cut: &CancellationToken,
    left: impl Fn() -> Duration,
) -> bool {
    tokio::pin!(work);
    tokio::select! {
        () = &mut work => return true,
        () = cut.cancelled() => {}
    }
    tokio::time::timeout(left(), work).await.is_ok()
}
