//! Switchyard integration tests live in `all/`; this library is empty.
