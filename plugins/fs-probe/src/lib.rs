//! A test filter that tries the filesystem: a message whose header `x-open`
//! names a path is kept when that file opens for reading (`x-open-write`: for
//! writing, never created), and rejected with the error (`PATH: ERROR`) when
//! it does not. One with neither header is kept.

use switchyard_plugin::{Error, Filter, Message, Verdict, export_filter};

struct FsProbe;

impl Filter for FsProbe {
    fn filter(message: &Message<'_>) -> Result<Verdict, Error> {
        let opened = match (message.header("x-open"), message.header("x-open-write")) {
            (Some(path), _) => (path, std::fs::File::open(path)),
            (None, Some(path)) => (path, std::fs::OpenOptions::new().write(true).open(path)),
            (None, None) => return Ok(Verdict::Keep),
        };
        match opened {
            (_, Ok(_)) => Ok(Verdict::Keep),
            (path, Err(err)) => Err(Error::rejected(format!("{path}: {err}"))),
        }
    }
}

export_filter!(FsProbe);
