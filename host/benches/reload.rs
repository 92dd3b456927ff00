//! Hot-reload benchmark: how fast a dropped-in file serves (cold and cached
//! compile), start-up with 20 plugins (cold and warm cache), and routed
//! throughput while a plugin is swapped continuously versus not at all.
//!
//! `cargo bench -p switchyard --bench reload`

use std::path::Path;
use std::time::{Duration, Instant};
use switchyard::{Config, Host, HostEvent, Message};
use switchyard_plugin_artifacts as artifacts;
use tokio::sync::broadcast;

const SWAPS: usize = 20;
const MESSAGES: u64 = 1_000_000;

#[tokio::main]
async fn main() {
    let (cold, cold_compile) = landed_to_serving(false).await;
    let (cached, cached_compile) = landed_to_serving(true).await;
    println!(
        "file landed -> new version serving (median of {SWAPS} swaps, includes the {:?} settle window):",
        switchyard::reload::SETTLE
    );
    println!("  cold compile:   {:>7.1} ms  (compile + link + trial {:>6.1} ms)", ms(cold), cold_compile);
    println!("  cached compile: {:>7.1} ms  (compile + link + trial {:>6.1} ms)", ms(cached), cached_compile);
    let (cold, warm) = startup_with_20_plugins().await;
    println!(
        "start-up with 20 distinct plugins: cold cache {:.1} ms, warm cache {:.1} ms",
        ms(cold),
        ms(warm)
    );
    let steady = throughput(false).await;
    let swapping = throughput(true).await;
    println!(
        "routed msgs/s through a WASM transform: {steady:.0} steady, {swapping:.0} while swapping it continuously ({:.0} %)",
        100.0 * swapping / steady
    );
}

fn ms(duration: Duration) -> f64 {
    duration.as_secs_f64() * 1e3
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

/// A host over a fresh directory holding `t.wasm`, one route through it; its
/// compile cache (if any) beside that directory, fresh with it.
async fn host(dir: &Path, cache: bool) -> Host {
    let cache_dir = match cache {
        true => format!("{}-cache", dir.display()),
        false => String::new(),
    };
    let text = format!(
        "[host]\ncache_dir = \"{cache_dir}\"\n[[destination]]\nname = \"out\"\ntransport = \"memory\"\n\
         [[route]]\nname = \"all\"\nstages = [\"transform:t\"]\nto = \"out\"\n"
    );
    let config = Config::from_toml("bench.toml", &text).unwrap();
    Host::builder().config("bench.toml", config).plugin_dir(dir).build().await.unwrap()
}

fn replace(path: &Path, bytes: &[u8]) {
    let aside = path.with_extension("partial");
    std::fs::write(&aside, bytes).unwrap();
    std::fs::rename(&aside, path).unwrap();
}

async fn replaced(events: &mut broadcast::Receiver<HostEvent>) -> f64 {
    loop {
        match events.recv().await.unwrap() {
            HostEvent::PluginReplaced { compile_ms, .. } => return compile_ms,
            HostEvent::PluginRejected { reason, .. } => panic!("{reason}"),
            _ => {}
        }
    }
}

/// Swap `t.wasm` between two versions; returns the median landed→serving
/// time and the median compile time the events report.
async fn landed_to_serving(cache: bool) -> (Duration, f64) {
    let dir = tempfile::tempdir().unwrap();
    let versions = [
        std::fs::read(artifacts::STAMP_TRANSFORM).unwrap(),
        std::fs::read(artifacts::REDACT_TRANSFORM).unwrap(),
    ];
    std::fs::write(dir.path().join("t.wasm"), &versions[1]).unwrap();
    let host = host(dir.path(), cache).await;
    let mut events = host.subscribe();
    let (mut totals, mut compiles) = (Vec::new(), Vec::new());
    for swap in 0..SWAPS + 2 {
        let started = Instant::now();
        replace(&dir.path().join("t.wasm"), &versions[swap % 2]);
        let compile_ms = replaced(&mut events).await;
        if swap >= 2 {
            // The first two swaps fill the cache with both versions.
            totals.push(ms(started.elapsed()));
            compiles.push(compile_ms);
        }
    }
    host.shutdown().await;
    (Duration::from_secs_f64(median(totals) / 1e3), median(compiles))
}

/// `bytes` made distinct by a custom section, so no two share a cache entry.
fn distinct(bytes: &[u8], n: usize) -> Vec<u8> {
    let name = b"switchyard-bench";
    let data = n.to_le_bytes();
    let mut out = bytes.to_vec();
    out.push(0); // custom section id
    out.push((1 + name.len() + data.len()) as u8);
    out.push(name.len() as u8);
    out.extend_from_slice(name);
    out.extend_from_slice(&data);
    out
}

async fn startup_with_20_plugins() -> (Duration, Duration) {
    let dir = tempfile::tempdir().unwrap();
    let sources = [
        artifacts::HEADER_FILTER,
        artifacts::REDACT_TRANSFORM,
        artifacts::ANNOTATE_MIDDLEWARE,
        artifacts::STAMP_TRANSFORM,
    ];
    for n in 0..20 {
        let bytes = std::fs::read(sources[n % sources.len()]).unwrap();
        std::fs::write(dir.path().join(format!("p{n:02}.wasm")), distinct(&bytes, n)).unwrap();
    }
    std::fs::copy(artifacts::STAMP_TRANSFORM, dir.path().join("t.wasm")).unwrap();
    let mut times = Vec::new();
    for _ in 0..2 {
        let started = Instant::now();
        let host = host(dir.path(), true).await;
        times.push(started.elapsed());
        assert_eq!(host.plugins().len(), 21, "{:?}", host.load_errors());
        host.shutdown().await;
    }
    (times[0], times[1])
}

/// Messages per second through `transform:t`, optionally swapping `t.wasm`
/// back and forth the whole time.
async fn throughput(swapping: bool) -> f64 {
    let dir = tempfile::tempdir().unwrap();
    let versions = [
        std::fs::read(artifacts::STAMP_TRANSFORM).unwrap(),
        std::fs::read(artifacts::REDACT_TRANSFORM).unwrap(),
    ];
    std::fs::write(dir.path().join("t.wasm"), &versions[0]).unwrap();
    let host = host(dir.path(), true).await;
    let out = host.memory("out").unwrap();
    let stop = tokio::sync::watch::channel(false);
    let (first_swap, swapped_once) = tokio::sync::oneshot::channel();
    let swapper = swapping.then(|| {
        let (mut events, mut stop, path) = (host.subscribe(), stop.1.clone(), dir.path().join("t.wasm"));
        tokio::spawn(async move {
            let (mut swaps, mut first_swap) = (0, Some(first_swap));
            while !*stop.borrow_and_update() {
                replace(&path, &versions[(swaps + 1) % 2]);
                tokio::select! { _ = replaced(&mut events) => swaps += 1, _ = stop.changed() => {} }
                if let Some(first) = first_swap.take() {
                    let _ = first.send(());
                }
            }
            swaps
        })
    });
    if swapping {
        // Time only what runs while swaps are under way.
        swapped_once.await.unwrap();
    }
    let started = Instant::now();
    let sender = {
        let host = host.clone();
        tokio::spawn(async move {
            for _ in 0..MESSAGES {
                host.send(Message::new("bench", r#"{"card":"4111"}"#)).await.unwrap();
            }
        })
    };
    for _ in 0..MESSAGES {
        out.recv_async().await.unwrap();
    }
    let elapsed = started.elapsed();
    sender.await.unwrap();
    stop.0.send(true).unwrap();
    if let Some(swapper) = swapper {
        println!("  ({} swaps during the swapping run)", swapper.await.unwrap());
    }
    host.shutdown().await;
    assert_eq!(host.stats().delivered, MESSAGES);
    MESSAGES as f64 / elapsed.as_secs_f64()
}
