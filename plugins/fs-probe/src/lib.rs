//! A test filter that tries the filesystem: a message whose header `x-open`
//! names a path is kept when that file opens for reading (`x-open-write`: for
//! writing, never created; `x-sync`: for writing, then synced to its device;
//! `x-list`: a directory, whose entries are then read; `x-stat`: looked at,
//! unopened), and rejected with the error (`PATH: ERROR`) when it does not.
//! One with none of these headers is kept. With `x-open` and `x-hold: N`, the
//! file is opened N times and every one is kept open, across calls; the first
//! open that fails rejects the message (`PATH: ERROR (K held)`). With the
//! setting `create = PATH`, every call first tries to create the file PATH:
//! what a plugin granted a writable directory can do from its first call, its
//! load trial's included.

use std::fs::{File, OpenOptions};
use std::io;
use std::sync::Mutex;

use switchyard_plugin::{Error, Filter, Message, Verdict, config, export_filter};

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

/// The files opened for `x-hold`, kept open for good.
static HELD: Mutex<Vec<File>> = Mutex::new(Vec::new());

struct FsProbe;

impl Filter for FsProbe {
    fn filter(message: &Message<'_>) -> Result<Verdict, Error> {
        if let Some(path) = config("create") {
            let _ = File::create(path);
        }
        if let (Some(path), Some(times)) = (message.header("x-open"), message.header("x-hold")) {
            return hold(path, times.parse().unwrap_or(0));
        }
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

/// Open `path` for reading `times` times and keep every one open.
fn hold(path: &str, times: usize) -> Result<Verdict, Error> {
    let mut held = HELD.lock().unwrap_or_else(|poison| poison.into_inner());
    for _ in 0..times {
        match File::open(path) {
            Ok(file) => held.push(file),
            Err(err) => return Err(Error::rejected(format!("{path}: {err} ({} held)", held.len()))),
        }
    }
    Ok(Verdict::Keep)
}

export_filter!(FsProbe);
