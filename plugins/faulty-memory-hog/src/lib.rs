//! A test filter that allocates 1 MiB chunks, touching and keeping every
//! one, until allocation fails (which aborts: a trap) or the host's memory
//! cap stops it. No config keys.

use std::hint::black_box;

use switchyard_plugin::{Error, Filter, Message, Verdict, export_filter};

struct FaultyMemoryHog;

const CHUNK: usize = 1 << 20;

impl Filter for FaultyMemoryHog {
    fn filter(_message: &Message<'_>) -> Result<Verdict, Error> {
        let mut hoard: Vec<Vec<u8>> = Vec::new();
        loop {
            hoard.push(black_box(vec![1; CHUNK]));
            black_box(&hoard);
        }
    }
}

export_filter!(FaultyMemoryHog);
