//! Routed throughput: the whole host pipeline, WASM stages against native ones.

use super::native::{native_filter, native_transform};
use super::stage::{
    check_redacted, check_stamped, filter_config, order_message, stamp_config, transform_config,
};
use super::*;

/// What the routed pipeline runs between admission and delivery.
#[derive(Debug, Clone, Copy)]
pub(super) enum Stages {
    /// The two plugins.
    Wasm,
    /// The filter plugin and the stamp transform plugin, on 256 B payloads.
    Stamp,
    /// Their native twins.
    Native,
    /// Nothing: the route goes straight to the destination.
    None,
}

/// How a run sends its messages.
#[derive(Debug, Clone, Copy)]
pub(super) enum Sending {
    /// All of them, as fast as the host takes them: batches fill.
    AllAtOnce,
    /// Each once the one before it was delivered: each is a batch of its own.
    OneAtATime,
}

/// A host routing `orders.*` through its [`Stages`] into a memory destination.
pub(super) struct RoutedHost {
    pub(super) host: Host,
    pub(super) delivered: flume::Receiver<Message>,
    sent: u64,
    /// The payload of the messages its timed runs send.
    payload: bytes::Bytes,
    /// Its state directory: one of its own, thrown away after the run.
    _state: tempfile::TempDir,
}

/// Throughput of the three pipelines, each with metrics on and off, built
/// side by side; their timed runs alternate so that drift on the machine
/// affects all alike.
pub(super) fn routed(plugins: &BenchPlugins, messages: usize) -> Result<Routed, BenchError> {
    let dir = PluginDir::new(plugins)?;
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    runtime.block_on(async {
        let none = dir.without_plugins();
        let mut hosts = Vec::new();
        for metrics in [true, false] {
            hosts.push(RoutedHost::start(&dir.0, Stages::Wasm, metrics).await?);
            hosts.push(RoutedHost::start(&none, Stages::Native, metrics).await?);
            hosts.push(RoutedHost::start(&none, Stages::None, metrics).await?);
        }
        let warm_up = (messages / 4).max(1);
        let mut outputs = Vec::new();
        for host in &mut hosts {
            outputs.push(host.timed_run(warm_up).await?.delivered);
        }
        check_redacted(&outputs[0])?;
        // Every message carries its own unique `x-sy-id`: the rest must match.
        let same = |m: &Message| {
            let headers: Vec<_> = m.headers.iter().filter(|(name, _)| name != "x-sy-id").cloned().collect();
            (m.topic.clone(), headers, m.payload.clone(), m.priority)
        };
        if same(&outputs[0]) != same(&outputs[1]) {
            return Err(BenchError::Check(format!(
                "the native stages do other work than the plugins: {:?} vs {:?}",
                outputs[0], outputs[1]
            )));
        }
        let (mut rates, mut cpu) = (vec![Vec::new(); hosts.len()], vec![Vec::new(); hosts.len()]);
        for _ in 0..ROUTED_RUNS {
            for (index, host) in hosts.iter_mut().enumerate() {
                let run = host.timed_run(messages).await?;
                rates[index].push(run.msgs_per_sec);
                cpu[index].push(run.cpu_ns_per_message);
            }
        }
        let stamp = match &plugins.stamp {
            None => None,
            Some(_) => Some(stamp_runs(&dir.0, messages, warm_up).await?),
        };
        for host in hosts {
            host.finish().await?;
        }
        let cpu_cost: Vec<f64> = (0..3).map(|index| paired_cost(&cpu[index], &cpu[index + 3])).collect();
        let mut samples = rates.into_iter().map(Sample::new);
        let mut next = || samples.next().expect("one sample per host");
        let (wasm, native, none) = (next(), next(), next());
        let mut cpu = cpu.into_iter().map(Sample::new);
        let mut next_cpu = || cpu.next().expect("one sample per host");
        let cpu_on = [next_cpu(), next_cpu(), next_cpu()];
        let metrics_off = MetricsOff::new(
            [&wasm, &native, &none],
            [next(), next(), next()],
            [next_cpu(), next_cpu(), next_cpu()],
            [cpu_cost[0], cpu_cost[1], cpu_cost[2]],
        );
        Ok(Routed {
            messages,
            workers: std::thread::available_parallelism().map_or(2, |n| n.get()),
            senders: SENDERS,
            wasm_to_native: wasm.median / native.median,
            stamp_cpu_ns_per_message: stamp.as_ref().map(|(_, cpu)| cpu.clone()),
            stamp_msgs_per_sec: stamp.map(|(rates, _)| rates),
            wasm_msgs_per_sec: wasm,
            native_msgs_per_sec: native,
            no_stages_msgs_per_sec: none,
            cpu_ns_per_message: cpu_on,
            metrics_off,
        })
    })
}

/// The stamp pipeline's rates and CPU time per message, over its own
/// [`ROUTED_RUNS`] timed runs.
async fn stamp_runs(dir: &Path, messages: usize, warm_up: usize) -> Result<(Sample, Sample), BenchError> {
    let mut host = RoutedHost::start(dir, Stages::Stamp, true).await?;
    check_stamped(&host.timed_run(warm_up).await?.delivered)?;
    let (mut rates, mut cpu) = (Vec::new(), Vec::new());
    for _ in 0..ROUTED_RUNS {
        let run = host.timed_run(messages).await?;
        rates.push(run.msgs_per_sec);
        cpu.push(run.cpu_ns_per_message);
    }
    host.finish().await?;
    Ok((Sample::new(rates), Sample::new(cpu)))
}

/// What `on` costs over `off`, percent of `off`: the median over the rounds
/// of `on[round] / off[round]`, runs made one right after the other, so that
/// drift on the machine between rounds cancels out.
fn paired_cost(on: &[f64], off: &[f64]) -> f64 {
    let ratios = on.iter().zip(off).map(|(on, off)| 100.0 * (on / off - 1.0)).collect();
    Sample::new(ratios).median
}

impl MetricsOff {
    /// The figures without metrics, and what metrics cost of the
    /// throughput against `on`.
    fn new(
        on: [&Sample; 3],
        [wasm, native, none]: [Sample; 3],
        cpu_ns_per_message: [Sample; 3],
        cpu_cost_percent: [f64; 3],
    ) -> MetricsOff {
        let cost = |on: &Sample, off: &Sample| 100.0 * (1.0 - on.median / off.median);
        MetricsOff {
            cost_percent: [cost(on[0], &wasm), cost(on[1], &native), cost(on[2], &none)],
            wasm_msgs_per_sec: wasm,
            native_msgs_per_sec: native,
            no_stages_msgs_per_sec: none,
            cpu_ns_per_message,
            cpu_cost_percent,
        }
    }
}

/// One timed run of a routed pipeline.
pub(super) struct Run {
    msgs_per_sec: f64,
    /// CPU time of the whole process (every thread) per message.
    cpu_ns_per_message: f64,
    /// One of the messages delivered.
    pub(super) delivered: Message,
}

impl RoutedHost {
    pub(super) async fn start(
        plugin_dir: &Path,
        stages: Stages,
        metrics: bool,
    ) -> Result<RoutedHost, BenchError> {
        let (out, delivered) = MemoryDestination::new();
        let plugins = vec![filter_config(), transform_config(), stamp_config()];
        let mut config = Config { plugins, ..Config::default() };
        config.host.metrics = metrics;
        // Steady state is measured: no watcher thread, no compile cache on disk.
        config.host.watch = false;
        config.host.cache_dir = PathBuf::new();
        let state = tempfile::tempdir()?;
        let builder = Host::builder()
            .config("<bench>", config)
            .plugin_dir(plugin_dir)
            .state_dir(state.path())
            .destination("out", out);
        let route = RouteConfig::new("orders", "orders.*", "out");
        let builder = match stages {
            Stages::Wasm => builder
                .route(route.stage(&format!("filter:{FILTER}")).stage(&format!("transform:{TRANSFORM}"))),
            Stages::Stamp => {
                builder.route(route.stage(&format!("filter:{FILTER}")).stage(&format!("transform:{STAMP}")))
            }
            Stages::Native => builder
                .filter("native-filter", native_filter)
                .transform("native-transform", native_transform)
                .route(route.stage("filter:native-filter").stage("transform:native-transform")),
            Stages::None => builder.route(route),
        };
        let host = builder.build().await?;
        if let Some(error) = host.load_errors().first() {
            return Err(BenchError::Check(format!("a plugin did not load: {error}")));
        }
        let payload = match stages {
            Stages::Stamp => bytes::Bytes::from(vec![b'x'; STAMP_PAYLOAD]),
            _ => bytes::Bytes::from_static(ORDER.as_bytes()),
        };
        Ok(RoutedHost { host, delivered, sent: 0, payload, _state: state })
    }

    /// Send `messages` from [`SENDERS`] tasks and time until the destination
    /// has all of them, by the clock and by the process's CPU time.
    pub(super) async fn timed_run(&mut self, messages: usize) -> Result<Run, BenchError> {
        let shares: Vec<Vec<Message>> = (0..SENDERS)
            .map(|sender| {
                (sender..messages).step_by(SENDERS).map(|_| order_message(self.payload.clone())).collect()
            })
            .collect();
        let (started, cpu) = (Instant::now(), cpu_time::ProcessTime::now());
        let senders: Vec<_> = shares
            .into_iter()
            .map(|share| {
                let host = self.host.clone();
                tokio::spawn(async move {
                    for message in share {
                        host.send(message).await?;
                    }
                    Ok::<_, SendError>(())
                })
            })
            .collect();
        let deadline =
            Duration::from_secs(30) + Duration::from_nanos(50_000u64.saturating_mul(messages as u64));
        let received = tokio::time::timeout(deadline, async {
            let first = self.delivered.recv_async().await;
            for _ in 1..messages {
                self.delivered.recv_async().await.ok()?;
            }
            first.ok()
        });
        let first = received.await.ok().flatten();
        let (elapsed, cpu) = (started.elapsed(), cpu.elapsed());
        self.sent += messages as u64;
        let Some(first) = first else {
            return Err(BenchError::Check(format!(
                "not all {messages} messages reached the destination within {deadline:?}: {:?}",
                self.host.stats()
            )));
        };
        for sender in senders {
            sender.await.map_err(|err| BenchError::Check(format!("a sender task failed: {err}")))??;
        }
        Ok(Run {
            msgs_per_sec: messages as f64 / elapsed.as_secs_f64(),
            cpu_ns_per_message: cpu.as_nanos() as f64 / messages as f64,
            delivered: first,
        })
    }

    /// Send `messages` one after the other from one task and wait until the
    /// destination has all of them (read as they arrive: its channel is bounded).
    pub(super) async fn deliver(&mut self, messages: Vec<Message>) -> Result<(), BenchError> {
        let count = messages.len();
        let host = self.host.clone();
        let sender = tokio::spawn(async move {
            for message in messages {
                host.send(message).await?;
            }
            Ok::<_, SendError>(())
        });
        self.sent += count as u64;
        let deadline = Duration::from_secs(60) + Duration::from_micros(500u64.saturating_mul(count as u64));
        let received = tokio::time::timeout(deadline, async {
            for _ in 0..count {
                self.delivered.recv_async().await.ok()?;
            }
            Some(())
        });
        if received.await != Ok(Some(())) {
            return Err(BenchError::Check(format!(
                "not all {count} messages reached the destination within {deadline:?}: {:?}",
                self.host.stats()
            )));
        }
        sender.await.map_err(|err| BenchError::Check(format!("the sender task failed: {err}")))??;
        Ok(())
    }

    /// Send `messages` as `sending` says, and wait until the destination has all of them.
    pub(super) async fn deliver_sending(
        &mut self,
        sending: Sending,
        messages: Vec<Message>,
    ) -> Result<(), BenchError> {
        match sending {
            Sending::AllAtOnce => self.deliver(messages).await,
            Sending::OneAtATime => self.deliver_one_at_a_time(messages).await,
        }
    }

    /// Send `messages` one after the other, each once the one before it
    /// reached the destination, so that each is a batch of its own.
    async fn deliver_one_at_a_time(&mut self, messages: Vec<Message>) -> Result<(), BenchError> {
        let count = messages.len();
        let deadline = Duration::from_secs(60) + Duration::from_millis(5u64.saturating_mul(count as u64));
        let delivered = tokio::time::timeout(deadline, async {
            for message in messages {
                self.host.send(message).await?;
                self.sent += 1;
                self.delivered.recv_async().await.map_err(|_| {
                    BenchError::Check("the memory destination closed before the message arrived".into())
                })?;
            }
            Ok::<_, BenchError>(())
        });
        match delivered.await {
            Ok(result) => result,
            Err(_) => Err(BenchError::Check(format!(
                "{count} messages, one at a time, did not all reach the destination within {deadline:?}: {:?}",
                self.host.stats()
            ))),
        }
    }

    /// The payload its messages carry.
    pub(super) fn payload(&self) -> bytes::Bytes {
        self.payload.clone()
    }

    /// Count `messages` more sent by the caller through [`RoutedHost::host`].
    pub(super) fn count_sent(&mut self, messages: u64) {
        self.sent += messages;
    }

    /// Shut down and check that every message sent was delivered, none lost.
    pub(super) async fn finish(self) -> Result<(), BenchError> {
        shut_down_and_account(&self.host, self.sent).await
    }
}

/// A temporary plugin directory holding the two plugins under their names;
/// removed on drop.
pub(super) struct PluginDir(pub(super) PathBuf);

impl PluginDir {
    pub(super) fn new(plugins: &BenchPlugins) -> Result<PluginDir, BenchError> {
        let dir = std::env::temp_dir().join(format!("switchyard-bench-{}", std::process::id()));
        std::fs::create_dir_all(&dir)?;
        let dir = PluginDir(dir);
        std::fs::copy(&plugins.filter, dir.0.join(format!("{FILTER}.wasm")))?;
        std::fs::copy(&plugins.transform, dir.0.join(format!("{TRANSFORM}.wasm")))?;
        if let Some(stamp) = &plugins.stamp {
            std::fs::copy(stamp, dir.0.join(format!("{STAMP}.wasm")))?;
        }
        Ok(dir)
    }

    /// Where a host finds no plugins (a directory that does not exist): for native stages.
    pub(super) fn without_plugins(&self) -> PathBuf {
        self.0.join("none")
    }
}

impl Drop for PluginDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
