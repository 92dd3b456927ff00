//! Latency: how long a message takes from `send` to the memory destination
//! while the host routes at half its measured maximum, paced by the clock.

use super::routed::{PluginDir, RoutedHost, Stages};
use super::stage::{check_redacted, check_stamped, order_message};
use super::*;

/// A delivery slower than this counts as a stall.
const STALL: Duration = Duration::from_millis(5);
/// Messages routed before the paced run, so instances and caches are warm.
const WARM_UP_MESSAGES: usize = 20_000;

/// Send-to-delivery latency at a paced rate: one sender sends each message at
/// its time on a schedule of `offered_msgs_per_sec` (in bursts of those due
/// whenever it wakes, at least every 50 µs); a latency runs from the moment
/// `send` is called until the destination's reader has the message.
#[derive(Debug, Clone, Serialize)]
pub struct Latency {
    /// The pipeline measured: `filter + stamp` or `filter + redact`, into memory.
    pub pipeline: &'static str,
    /// The rate offered: half the routed median of that pipeline, unless set.
    pub offered_msgs_per_sec: f64,
    /// Whether that rate is half the routed median (the default), the load
    /// issue 16's latency target is set at.
    pub at_half_load: bool,
    /// The rate achieved over the whole run.
    pub achieved_msgs_per_sec: f64,
    /// Messages sent and delivered.
    pub messages: u64,
    /// Median latency, µs.
    pub p50_us: f64,
    /// 99th percentile, µs.
    pub p99_us: f64,
    /// 99.9th percentile, µs.
    pub p999_us: f64,
    /// The slowest message, µs.
    pub max_us: f64,
    /// Messages slower than 5 ms: stalls.
    pub stalls: u64,
    /// CPU time of the whole process per message over the run.
    pub cpu_ns_per_message: f64,
}

/// Measure [`Latency`] for `duration` at `rate` msgs/s, by default half the
/// routed median of the stamp pipeline (of the redact one without the stamp
/// plugin).
pub(super) fn latency(
    plugins: &BenchPlugins,
    routed: &Routed,
    duration: Duration,
    rate: Option<f64>,
) -> Result<Latency, BenchError> {
    let (stages, pipeline, maximum, check): (_, _, _, stage::Check) = match &routed.stamp_msgs_per_sec {
        Some(stamp) => (Stages::Stamp, "filter + stamp", stamp.median, check_stamped),
        None => (Stages::Wasm, "filter + redact", routed.wasm_msgs_per_sec.median, check_redacted),
    };
    let (rate, at_half_load) = match rate {
        Some(rate) => (rate, false),
        None => (maximum / 2.0, true),
    };
    let total = (rate * duration.as_secs_f64()).ceil() as usize;
    let dir = PluginDir::new(plugins)?;
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    let mut host = runtime.block_on(RoutedHost::start(&dir.0, stages, true))?;
    check(&runtime.block_on(host.timed_run(WARM_UP_MESSAGES))?.delivered)?;
    let (started, cpu) = (Instant::now(), cpu_time::ProcessTime::now());
    let reader = {
        let delivered = host.delivered.clone();
        runtime.spawn(async move {
            let mut arrivals = Vec::with_capacity(total);
            for _ in 0..total {
                let message = delivered.recv_async().await.ok()?;
                arrivals.push((message.id, started.elapsed()));
            }
            Some(arrivals)
        })
    };
    let sender = {
        let (client, handle, payload) = (host.host.clone(), runtime.handle().clone(), host.payload());
        std::thread::spawn(move || paced_sends(&client, &handle, payload, rate, total, started))
    };
    let sends = sender.join().map_err(|_| BenchError::Check("the paced sender panicked".into()))??;
    let deadline = Duration::from_secs(60);
    let arrivals = runtime
        .block_on(async { tokio::time::timeout(deadline, reader).await })
        .map_err(|_| {
            BenchError::Check(format!("not every message arrived within {deadline:?} of the last send"))
        })?
        .map_err(|err| BenchError::Check(format!("the reader failed: {err}")))?
        .ok_or_else(|| BenchError::Check("the destination's channel closed".into()))?;
    let (elapsed, cpu) = (started.elapsed(), cpu.elapsed());
    host.count_sent(total as u64);
    runtime.block_on(host.finish())?;
    let mut latencies = Vec::with_capacity(total);
    for (id, arrived) in arrivals {
        let sent = id.checked_sub(sends.first_id).and_then(|seq| sends.at.get(seq as usize));
        let sent = sent.ok_or_else(|| BenchError::Check(format!("message {id} was not sent by this run")))?;
        latencies.push(arrived.saturating_sub(*sent));
    }
    latencies.sort_unstable();
    let percentile =
        |p: f64| latencies[((latencies.len() - 1) as f64 * p).round() as usize].as_secs_f64() * 1e6;
    Ok(Latency {
        pipeline,
        offered_msgs_per_sec: rate,
        at_half_load,
        achieved_msgs_per_sec: total as f64 / elapsed.as_secs_f64(),
        messages: total as u64,
        p50_us: percentile(0.5),
        p99_us: percentile(0.99),
        p999_us: percentile(0.999),
        max_us: percentile(1.0),
        stalls: latencies.iter().filter(|latency| **latency > STALL).count() as u64,
        cpu_ns_per_message: cpu.as_nanos() as f64 / total as f64,
    })
}

/// When each message was sent, since the run started, by sequence; the first
/// message's id (the host numbers one sender's messages consecutively).
struct Sends {
    first_id: crate::message::MessageId,
    at: Vec<Duration>,
}

/// Send `total` messages carrying `payload` at `rate` a second from `started`
/// on, each when its time has come: whenever the thread wakes, every message
/// due is sent, then it sleeps for 50 µs at most.
fn paced_sends(
    host: &Host,
    runtime: &tokio::runtime::Handle,
    payload: bytes::Bytes,
    rate: f64,
    total: usize,
    started: Instant,
) -> Result<Sends, BenchError> {
    let mut sends = Sends { first_id: 0, at: Vec::with_capacity(total) };
    while sends.at.len() < total {
        let due = ((started.elapsed().as_secs_f64() * rate) as usize + 1).min(total);
        if sends.at.len() == due {
            std::thread::sleep(Duration::from_micros(50));
            continue;
        }
        runtime.block_on(async {
            while sends.at.len() < due {
                let at = started.elapsed();
                let id = host.send(order_message(payload.clone())).await?;
                if sends.at.is_empty() {
                    sends.first_id = id;
                }
                if id != sends.first_id + sends.at.len() as u64 {
                    return Err(BenchError::Check(format!("message ids are not consecutive at {id}")));
                }
                sends.at.push(at);
            }
            Ok(())
        })?;
    }
    Ok(sends)
}
