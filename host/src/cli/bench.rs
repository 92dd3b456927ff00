//! `switchyard bench --filter F.wasm --transform T.wasm [--native-filter F.so
//! --native-transform T.so]`: the standard benchmark; with `--instructions N`,
//! the instruction-count guard's cases instead.

use switchyard::bench::{BenchPlugins, BenchSettings, count_instructions, run_with};

/// Run the benchmark on this (plain) thread and print its report, as a table
/// or as JSON.
pub fn bench(plugins: BenchPlugins, settings: BenchSettings, json: bool) -> anyhow::Result<()> {
    let report = run_with(&plugins, &settings)?;
    match json {
        true => println!("{}", serde_json::to_string_pretty(&report)?),
        false => println!("{report}"),
    }
    Ok(())
}

/// Run the instruction-count guard's cases `iterations` times each, for
/// callgrind to count between the markers, and say which ran.
pub fn instructions(plugins: BenchPlugins, iterations: usize) -> anyhow::Result<()> {
    let ran = count_instructions(&plugins, iterations)?;
    println!("{} x {iterations}", ran.join(", "));
    Ok(())
}
