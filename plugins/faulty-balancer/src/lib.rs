//! A test balancer that misbehaves in the way config key `mode` names:
//!
//! | `mode`         | answer                                                   |
//! |----------------|----------------------------------------------------------|
//! | `out-of-range` | an index one past the last endpoint                      |
//! | `ineligible`   | the first unhealthy endpoint (the first healthy if none) |
//! | `none`         | no pick, even with healthy endpoints                     |
//! | `trap`         | none: it panics, which the host sees as a trap           |
//! | `spin`         | none: it loops until the host's deadline interrupts it   |
//! | `memory-hog`   | none: it allocates until the host's memory cap stops it  |
//! | `leak`         | as when it behaves, having kept 1 MiB for good (a leak)  |
//!
//! Config key `trigger`: when set, it misbehaves only on messages carrying
//! that header; otherwise on every pick. When it behaves (or `mode` is unset
//! or unknown) it picks the first healthy endpoint.

use std::hint::black_box;
use std::sync::LazyLock;

use switchyard_plugin::{Balancer, Endpoint, Message, config, export_balancer};

struct FaultyBalancer;

impl Balancer for FaultyBalancer {
    fn pick(message: &Message<'_>, endpoints: &[Endpoint]) -> Option<u32> {
        static MODE: LazyLock<Option<String>> = LazyLock::new(|| config("mode"));
        let first_healthy = endpoints.iter().find(|endpoint| endpoint.healthy).map(|endpoint| endpoint.index);
        if !poisoned(message) {
            return first_healthy;
        }
        match MODE.as_deref() {
            Some("out-of-range") => Some(endpoints.len() as u32),
            Some("ineligible") => endpoints
                .iter()
                .find(|endpoint| !endpoint.healthy)
                .map(|endpoint| endpoint.index)
                .or(first_healthy),
            Some("none") => None,
            Some("trap") => panic!("faulty-balancer traps on message {}", message.id),
            Some("spin") => spin(),
            Some("memory-hog") => hog(),
            Some("leak") => {
                std::mem::forget(black_box(vec![1u8; 1 << 20]));
                first_healthy
            }
            _ => first_healthy,
        }
    }
}

/// Never returns: `black_box` keeps the optimizer from proving the loop useless.
fn spin() -> ! {
    let mut turns = 0_u64;
    loop {
        turns = black_box(turns.wrapping_add(1));
    }
}

/// Allocates 1 MiB chunks, touching and keeping every one, until it cannot.
fn hog() -> ! {
    let mut hoard: Vec<Vec<u8>> = Vec::new();
    loop {
        hoard.push(black_box(vec![1; 1 << 20]));
        black_box(&hoard);
    }
}

/// Whether to misbehave on `message`: with config `trigger` set, only on
/// messages carrying that header; otherwise on every message.
fn poisoned(message: &Message<'_>) -> bool {
    static TRIGGER: LazyLock<Option<String>> = LazyLock::new(|| config("trigger"));
    TRIGGER.as_deref().is_none_or(|name| message.header(name).is_some())
}

export_balancer!(FaultyBalancer);
