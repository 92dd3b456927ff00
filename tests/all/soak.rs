//! The soak driver (`tools/soak`, run by `scripts/soak`) for a few seconds:
//! the binary under load with plugin swaps, config reloads and an endpoint
//! killed and restarted loses nothing, and every fault really happened: the
//! host saw each kill, and a kill costs no more than the messages it cut.

use std::path::PathBuf;
use std::time::Duration;
use switchyard_plugin_artifacts as artifacts;
use switchyard_soak::{ENDPOINT_IN_FLIGHT, Settings};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn binary_under_swaps_reloads_and_a_dying_endpoint_loses_no_accepted_message() {
    let settings = Settings {
        binary: env!("CARGO_BIN_EXE_switchyard").into(),
        plugins: [PathBuf::from(artifacts::STAMP_TRANSFORM), PathBuf::from(artifacts::REDACT_TRANSFORM)],
        duration: Duration::from_secs(12),
        rate: 200,
        connections: 4,
        endpoints: 3,
        swap_every: Duration::from_millis(500),
        reload_every: Duration::from_secs(3),
        kill_every: Duration::from_secs(4),
        down_for: Duration::from_secs(2),
        sample_every: Duration::from_secs(4),
        drain_timeout: Duration::from_secs(60),
        host_log: None,
    };
    let report = switchyard_soak::run(&settings).await.expect("soak run");
    let counts = &report.messages;
    assert!(counts.accepted >= 2000, "{report}");
    assert_eq!((counts.lost, counts.unexpected), (0, 0), "{report}");
    assert!(report.drained_in.is_some(), "{report}");
    assert!(report.kills >= 2, "{report}");
    // The host saw each kill: its health checks took the endpoint down (and, restarted, up again).
    assert_eq!(report.events.get("endpoint-down"), Some(&report.kills), "{report}");
    // A kill cuts the deliveries in flight to the endpoint (its in-flight limit at most): each
    // dead-lettered `delivery-uncertain`, as it may have arrived, and never sent again. Those it
    // refused meanwhile waited for another endpoint: no dead letter, no copy.
    let codes = report.dead_letter_codes.keys();
    assert!(codes.into_iter().all(|code| code == "delivery-uncertain"), "{report}");
    assert!(counts.dead_lettered <= report.kills * ENDPOINT_IN_FLIGHT, "{report}");
    assert_eq!(counts.extra_copies, 0, "the default (idempotent = false) sends no message twice: {report}");
    assert_eq!(report.reloads.1, report.reloads.0, "every config rewrite shows in /v1/routes: {report}");
    for version in ["stamp-transform", "redact-transform"] {
        assert!(report.transformed_by.get(version).is_some_and(|&n| n > 0), "none by {version}: {report}");
    }
}
