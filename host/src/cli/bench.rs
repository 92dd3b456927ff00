//! `switchyard bench --filter F.wasm --transform T.wasm`: the standard benchmark.

use std::path::PathBuf;
use switchyard::bench::{BenchPlugins, BenchSettings, run_with};

/// Run the benchmark on this (plain) thread and print its report, as a table
/// or as JSON.
pub fn bench(filter: PathBuf, transform: PathBuf, messages: usize, json: bool) -> anyhow::Result<()> {
    let report = run_with(&BenchPlugins { filter, transform }, &BenchSettings { messages })?;
    match json {
        true => println!("{}", serde_json::to_string_pretty(&report)?),
        false => println!("{report}"),
    }
    Ok(())
}
