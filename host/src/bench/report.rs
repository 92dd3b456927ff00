//! The report: targets met or not, and the printed table.

use super::*;

pub(super) fn targets(filters: &[&StageCost], routed: &Routed, cores: usize) -> Vec<Target> {
    let worst = |figure: fn(&StageCost) -> f64| filters.iter().map(|cost| figure(cost)).fold(0.0, f64::max);
    let batched = worst(|cost| cost.batched_ns_per_message.median);
    let unbatched = worst(|cost| cost.unbatched_ns.median);
    let rate = routed.wasm_msgs_per_sec.median;
    let target = |name: String, goal: &str, measured: String, met: bool| Target {
        name,
        goal: goal.to_owned(),
        measured,
        met,
    };
    vec![
        target(
            "header filter batched".into(),
            "<= 150 ns/msg",
            format!("{batched:.0} ns/msg"),
            batched <= 150.0,
        ),
        target(
            "header filter unbatched".into(),
            "<= 500 ns",
            format!("{unbatched:.0} ns"),
            unbatched <= 500.0,
        ),
        target(
            format!("routed on {cores} cores"),
            ">= 1M msgs/s",
            format!("{} msgs/s", grouped(rate)),
            rate >= 1e6,
        ),
        target(
            "metrics cost, routed".into(),
            "<= 5 %",
            format!("{:.1} % CPU per message", routed.metrics_off.cpu_cost_percent[0]),
            routed.metrics_off.cpu_cost_percent[0] <= 5.0,
        ),
        target(
            "WASM/native".into(),
            ">= 0.5",
            format!("{:.2}", routed.wasm_to_native),
            routed.wasm_to_native >= 0.5,
        ),
    ]
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
        for cost in [&self.filter_small, &self.filter_large, &self.transform] {
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
