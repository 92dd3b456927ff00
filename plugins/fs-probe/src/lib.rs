//! A test filter that tries the filesystem: a message whose header `x-open`
//! names a path is kept when that file opens for reading, and rejected with
//! the error (`PATH: ERROR`) when it does not. One without the header is kept.

use switchyard_plugin::{Error, Filter, Message, Verdict, export_filter};

struct FsProbe;

impl Filter for FsProbe {
    fn filter(message: &Message<'_>) -> Result<Verdict, Error> {
        match message.header("x-open") {
            Some(path) => match std::fs::File::open(path) {
                Ok(_) => Ok(Verdict::Keep),
                Err(err) => Err(Error::rejected(format!("{path}: {err}"))),
            },
            None => Ok(Verdict::Keep),
        }
    }
}

export_filter!(FsProbe);
