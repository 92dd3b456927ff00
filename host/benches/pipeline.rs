//! `cargo bench -p switchyard`: the standard benchmark on the example plugins.

use switchyard::bench::{BenchPlugins, run};
use switchyard_plugin_artifacts::{HEADER_FILTER, REDACT_TRANSFORM, STAMP_TRANSFORM, native};

fn main() -> std::process::ExitCode {
    let plugins = BenchPlugins {
        filter: HEADER_FILTER.into(),
        transform: REDACT_TRANSFORM.into(),
        native_libraries: Some((native::HEADER_FILTER.into(), native::REDACT_TRANSFORM.into())),
        stamp: Some(STAMP_TRANSFORM.into()),
    };
    match run(&plugins) {
        Ok(report) => {
            println!("{report}");
            std::process::ExitCode::SUCCESS
        }
        Err(error) => {
            eprintln!("error: {error}");
            std::process::ExitCode::FAILURE
        }
    }
}
