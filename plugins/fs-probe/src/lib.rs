//! A test filter that tries the filesystem: a message whose header `x-open`
//! names a path is kept when that file opens for reading (`x-open-write`: for
//! writing, never created; `x-sync`: for writing, then synced to its device;
//! `x-list`: a directory, whose entries are then read; `x-stat`: looked at,
//! unopened), and rejected with the error (`PATH: ERROR`) when it does not.
//! One with none of these headers is kept.

use std::fs::{File, OpenOptions};
use std::io;

use switchyard_plugin::{Error, Filter, Message, Verdict, export_filter};

/// What a header asks of the path it names.
type Probe = fn(&str) -> io::Result<()>;

/// Each header, and its probe.
const PROBES: [(&str, Probe); 5] = [
    ("x-open", |path| File::open(path).map(drop)),
    ("x-open-write", |path| OpenOptions::new().write(true).open(path).map(drop)),
    ("x-sync", |path| OpenOptions::new().write(true).open(path)?.sync_all()),
    ("x-list", |path| std::fs::read_dir(path)?.try_for_each(|entry| entry.map(drop))),
    ("x-stat", |path| std::fs::metadata(path).map(drop)),
];

struct FsProbe;

impl Filter for FsProbe {
    fn filter(message: &Message<'_>) -> Result<Verdict, Error> {
        let asked = PROBES.iter().find_map(|(header, probe)| Some((message.header(header)?, probe)));
        let Some((path, probe)) = asked else {
            return Ok(Verdict::Keep);
        };
        match probe(path) {
            Ok(()) => Ok(Verdict::Keep),
            Err(err) => Err(Error::rejected(format!("{path}: {err}"))),
        }
    }
}

export_filter!(FsProbe);
