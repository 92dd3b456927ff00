//! `hiccups`: how long this machine stops a thread that has work to do.
//!
//! Each of `--threads` threads reads the monotonic clock in a loop for `--secs`
//! seconds and counts every gap between two reads longer than 100 µs, in
//! buckets. Nothing else runs in those threads: a gap is time the thread was
//! not running although it wanted to (preemption, an interrupt, a paused
//! virtual CPU). With `--busy P` (percent) each thread spins for P % of every
//! millisecond and sleeps for the rest, so that the cores are as busy as a
//! host at that load; only gaps while spinning count.
//!
//! `cargo run --release --manifest-path tools/hiccups/Cargo.toml -- --threads 2 --secs 20 --busy 65`

use std::time::{Duration, Instant};

/// Bucket bounds, µs: a gap goes in the first bucket whose bound it does not exceed.
const BOUNDS_US: [u64; 6] = [200, 500, 1_000, 2_000, 5_000, u64::MAX];
/// Gaps shorter than this are the loop itself, not a pause.
const SMALLEST: Duration = Duration::from_micros(100);
/// The period of `--busy`: spin for its share of this, sleep for the rest.
const PERIOD: Duration = Duration::from_millis(1);

struct Options {
    threads: usize,
    secs: f64,
    busy_percent: u32,
}

#[derive(Default)]
struct Gaps {
    counts: [u64; BOUNDS_US.len()],
    longest: Duration,
    lost: Duration,
    spun: Duration,
}

fn main() {
    let options = match parse(std::env::args().skip(1)) {
        Ok(options) => options,
        Err(problem) => {
            eprintln!("hiccups: {problem}\nusage: hiccups [--threads N] [--secs S] [--busy PERCENT]");
            std::process::exit(2);
        }
    };
    let run = Duration::from_secs_f64(options.secs);
    let busy = PERIOD * options.busy_percent / 100;
    let threads: Vec<_> =
        (0..options.threads).map(|_| std::thread::spawn(move || measure(run, busy))).collect();
    println!(
        "{} threads, {} s, busy {} % of each ms; gaps over 100 µs while spinning:",
        options.threads, options.secs, options.busy_percent
    );
    println!("thread  spun s  0.1-0.2 ms  0.2-0.5 ms  0.5-1 ms  1-2 ms  2-5 ms  >5 ms  longest ms  lost ms");
    for (index, thread) in threads.into_iter().enumerate() {
        let gaps = thread.join().expect("a measuring thread panicked");
        let [a, b, c, d, e, f] = gaps.counts;
        println!(
            "{index:>6}  {:>6.1}  {a:>10}  {b:>10}  {c:>8}  {d:>6}  {e:>6}  {f:>5}  {:>10.2}  {:>7.1}",
            gaps.spun.as_secs_f64(),
            gaps.longest.as_secs_f64() * 1e3,
            gaps.lost.as_secs_f64() * 1e3
        );
    }
}

/// Spin for `busy` of every [`PERIOD`] (all of it when `busy` is the period) until `run` is over.
fn measure(run: Duration, busy: Duration) -> Gaps {
    let (start, mut gaps) = (Instant::now(), Gaps::default());
    while start.elapsed() < run {
        let spin_start = Instant::now();
        let mut last = spin_start;
        loop {
            let now = Instant::now();
            let gap = now - last;
            last = now;
            if gap > SMALLEST {
                let micros = gap.as_micros() as u64;
                let bucket =
                    BOUNDS_US.iter().position(|bound| micros <= *bound).unwrap_or(BOUNDS_US.len() - 1);
                gaps.counts[bucket] += 1;
                gaps.longest = gaps.longest.max(gap);
                gaps.lost += gap;
            }
            if now - spin_start >= busy || now - start >= run {
                break;
            }
        }
        gaps.spun += last - spin_start;
        if busy < PERIOD {
            std::thread::sleep(PERIOD - busy);
        }
    }
    gaps
}

fn parse(mut args: impl Iterator<Item = String>) -> Result<Options, String> {
    let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
    let mut options = Options { threads: cores, secs: 20.0, busy_percent: 100 };
    while let Some(flag) = args.next() {
        let value = args.next().ok_or_else(|| format!("{flag} needs a value"))?;
        let bad = || format!("{flag}: not a valid value: {value}");
        match flag.as_str() {
            "--threads" => options.threads = value.parse().map_err(|_| bad())?,
            "--secs" => options.secs = value.parse().map_err(|_| bad())?,
            "--busy" => options.busy_percent = value.parse().map_err(|_| bad())?,
            _ => return Err(format!("unknown argument {flag}")),
        }
    }
    if options.threads == 0
        || !options.secs.is_finite()
        || options.secs <= 0.0
        || !(1..=100).contains(&options.busy_percent)
    {
        return Err(
            "--threads must be over 0, --secs a finite number over 0 and --busy within 1..=100".into()
        );
    }
    Ok(options)
}
