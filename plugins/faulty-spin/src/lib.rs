//! A test filter that never returns: it spins until the host's deadline
//! interrupts it. No config keys.

use std::hint::black_box;

use switchyard_plugin::{Error, Filter, Message, Verdict, export_filter};

struct FaultySpin;

impl Filter for FaultySpin {
    fn filter(_message: &Message<'_>) -> Result<Verdict, Error> {
        let mut turns = 0_u64;
        // `black_box` keeps the optimizer from proving the loop useless.
        loop {
            turns = black_box(turns.wrapping_add(1));
        }
    }
}

export_filter!(FaultySpin);
