//! The report: targets met or not, and the printed table.

use super::*;

/// Issue 16's goals, each met or not by `report`.
pub(super) fn targets(report: &Report) -> Vec<Target> {
    let filters = [&report.filter_small, &report.filter_large];
    let worst = |figure: fn(&StageCost) -> f64| filters.iter().map(|cost| figure(cost)).fold(0.0, f64::max);
    let batched = worst(|cost| cost.batched_ns_per_message.median);
    let unbatched = worst(|cost| cost.unbatched_ns.median);
    let routed = &report.routed;
    let target = |name: &str, goal: &str, measured: String, met: bool| Target {
        name: name.to_owned(),
        goal: goal.to_owned(),
        measured,
        met,
    };
    let mut targets = vec![
        target("header filter batched", "<= 100 ns/msg", format!("{batched:.0} ns/msg"), batched <= 100.0),
        target("header filter unbatched", "<= 300 ns", format!("{unbatched:.0} ns"), unbatched <= 300.0),
        target(
            "WASM/native, redact",
            ">= 0.8",
            format!("{:.2}", routed.wasm_to_native),
            routed.wasm_to_native >= 0.8,
        ),
    ];
    if let Some(rate) = &routed.stamp_msgs_per_sec {
        let rate = rate.median;
        let name = format!("routed filter + stamp, {} cores", report.cores);
        targets.push(target(&name, ">= 1M msgs/s", format!("{} msgs/s", grouped(rate)), rate >= 1e6));
    }
    if let Some([_, large]) = &report.stamp {
        let (unbatched, batched) = (large.unbatched_ns.median, large.batched_ns_per_message.median);
        let measured = format!("{batched:.0} vs {unbatched:.0} ns/msg");
        targets.push(target(
            "stamp 64 KiB batched vs unbatched",
            "batched <=",
            measured,
            batched <= unbatched,
        ));
    }
    if let Some(latency) = report.latency.as_ref().filter(|latency| latency.at_half_load) {
        let measured = format!("p99 {:.0} µs, {} stalls over 5 ms", latency.p99_us, latency.stalls);
        let met = latency.p99_us <= 100.0 && latency.stalls == 0;
        targets.push(target("latency at half load", "p99 <= 100 µs, no stall", measured, met));
    }
    targets
}

/// `1234567.8` as `1 234 568`.
pub(super) fn grouped(value: f64) -> String {
    let digits = format!("{:.0}", value.max(0.0));
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (index, digit) in digits.chars().enumerate() {
        if index > 0 && (digits.len() - index) % 3 == 0 {
            out.push(' ');
        }
        out.push(digit);
    }
    out
}

pub(super) fn bytes(size: usize) -> String {
    match size {
        size if size >= 1 << 10 && size % (1 << 10) == 0 => format!("{} KiB", size >> 10),
        size => format!("{size} B"),
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let runs =
            |sample: &Sample| sample.runs.iter().map(|run| grouped(*run)).collect::<Vec<_>>().join(", ");
        let batch = format!("batched ({}/call)", self.batch_size);
        writeln!(f, "Switchyard standard benchmark: {} cores, medians of {RUNS} runs", self.cores)?;
        writeln!(f)?;
        writeln!(
            f,
            "ns per message (host encode + plugin call + decode)  {:>10}  {batch:>18}  {:>11}",
            "unbatched", "native twin"
        )?;
        let stamp = self.stamp.iter().flatten();
        for cost in [&self.filter_small, &self.filter_large, &self.transform].into_iter().chain(stamp) {
            let name = format!("{}, {} payload", cost.plugin, bytes(cost.payload_bytes));
            let (unbatched, batched) = (cost.unbatched_ns.median, cost.batched_ns_per_message.median);
            let native = cost.native_ns_per_message.median;
            writeln!(f, "  {name:<50}{unbatched:>10.0}  {batched:>18.0}  {native:>11.0}")?;
            if let Some(library) = &cost.native_library {
                let (unbatched, batched) =
                    (library.unbatched_ns.median, library.batched_ns_per_message.median);
                writeln!(
                    f,
                    "    {:<48}{unbatched:>10.0}  {batched:>18.0}",
                    "the same plugin as a native library"
                )?;
            }
        }
        let (small, large) = (&self.filter_small, &self.filter_large);
        let ratio = |cost: fn(&StageCost) -> &Sample| cost(large).median / cost(small).median;
        writeln!(
            f,
            "  filter {} vs {}: x{:.2} unbatched, x{:.2} batched (heads only: the payload is not copied)",
            bytes(large.payload_bytes),
            bytes(small.payload_bytes),
            ratio(|cost| &cost.unbatched_ns),
            ratio(|cost| &cost.batched_ns_per_message),
        )?;
        writeln!(f)?;
        let routed = &self.routed;
        writeln!(
            f,
            "routed msgs/s: filter -> transform -> memory, {} workers, {} senders, {} messages a run",
            routed.workers,
            routed.senders,
            grouped(routed.messages as f64),
        )?;
        let (wasm, native) = (&routed.wasm_msgs_per_sec, &routed.native_msgs_per_sec);
        writeln!(f, "  WASM stages    {:>11}  (runs: {})", grouped(wasm.median), runs(wasm))?;
        writeln!(f, "  native stages  {:>11}  (runs: {})", grouped(native.median), runs(native))?;
        let bare = &routed.no_stages_msgs_per_sec;
        writeln!(
            f,
            "  no stages      {:>11}  (runs: {}; the pipeline alone)",
            grouped(bare.median),
            runs(bare)
        )?;
        writeln!(f, "  WASM/native    {:>11.2}", routed.wasm_to_native)?;
        if let (Some(stamp), Some(cpu)) = (&routed.stamp_msgs_per_sec, &routed.stamp_cpu_ns_per_message) {
            writeln!(
                f,
                "  WASM filter + stamp, {} payloads {:>11}  (runs: {}; CPU {:.0} ns/msg)",
                bytes(STAMP_PAYLOAD),
                grouped(stamp.median),
                runs(stamp),
                cpu.median
            )?;
        }
        let off = &routed.metrics_off;
        writeln!(f, "with metrics off (what metrics cost, % of throughput):")?;
        let rows = [
            ("WASM stages", &off.wasm_msgs_per_sec, off.cost_percent[0]),
            ("native stages", &off.native_msgs_per_sec, off.cost_percent[1]),
            ("no stages", &off.no_stages_msgs_per_sec, off.cost_percent[2]),
        ];
        for (name, sample, cost) in rows {
            writeln!(
                f,
                "  {name:<14} {:>11}  (runs: {}; metrics cost {cost:.1} %)",
                grouped(sample.median),
                runs(sample)
            )?;
        }
        writeln!(f, "CPU ns per message, whole process: metrics on / off (what metrics add, paired runs):")?;
        let names = ["WASM stages", "native stages", "no stages"];
        for (index, name) in names.iter().enumerate() {
            let (on, off_cpu) = (&routed.cpu_ns_per_message[index], &off.cpu_ns_per_message[index]);
            writeln!(
                f,
                "  {name:<14} {:>8.0} / {:>6.0}  (metrics add {:.1} %)",
                on.median, off_cpu.median, off.cpu_cost_percent[index]
            )?;
        }
        if let Some(latency) = &self.latency {
            writeln!(
                f,
                "latency, send -> memory, {} at {} msgs/s offered{} ({} achieved), {} messages:",
                latency.pipeline,
                grouped(latency.offered_msgs_per_sec),
                if latency.at_half_load { ", half the maximum" } else { "" },
                grouped(latency.achieved_msgs_per_sec),
                grouped(latency.messages as f64),
            )?;
            writeln!(
                f,
                "  p50 {:.0} µs, p99 {:.0} µs, p99.9 {:.0} µs, max {:.0} µs; {} over 5 ms; CPU {:.0} ns/msg",
                latency.p50_us,
                latency.p99_us,
                latency.p999_us,
                latency.max_us,
                latency.stalls,
                latency.cpu_ns_per_message
            )?;
        }
        writeln!(f)?;
        let summary: Vec<String> = self
            .targets
            .iter()
            .map(|t| {
                format!("{} {} ({}) {}", t.name, t.measured, t.goal, if t.met { "met" } else { "NOT MET" })
            })
            .collect();
        write!(f, "targets: {}", summary.join("; "))
    }
}
