//! A filter that keeps every message, and whose library, when the dynamic
//! loader opens it, writes the marker file
//! `$TMPDIR/switchyard-native-constructor-ran-PID` (PID: the loading
//! process's): the proof that a host opened it (opening runs code).

use switchyard_plugin::{Error, Filter, Message, Verdict, export_filter};

struct KeepAll;

impl Filter for KeepAll {
    fn filter(_: &Message<'_>) -> Result<Verdict, Error> {
        Ok(Verdict::Keep)
    }
}

export_filter!(KeepAll);

#[cfg(target_os = "linux")]
#[expect(unsafe_code, reason = "an ELF constructor is what this fixture is for")]
mod constructor {
    /// Runs when the library is loaded, before anything in it is called.
    extern "C" fn on_load() {
        let marker = format!("switchyard-native-constructor-ran-{}", std::process::id());
        let _ = std::fs::write(std::env::temp_dir().join(marker), b"opened");
    }

    #[used]
    #[unsafe(link_section = ".init_array")]
    static ON_LOAD: extern "C" fn() = on_load;
}
