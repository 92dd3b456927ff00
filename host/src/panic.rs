//! Panics in code the host calls — native stages, destinations — are caught
//! at the call and become that one message's outcome (`host-panic`), so no
//! worker thread or delivery task dies of them.

use crate::bounded_text::error_text;
use futures_util::FutureExt;
use std::any::Any;
use std::future::Future;
use std::panic::{AssertUnwindSafe, catch_unwind};

/// Run `call`; a panic in it comes back as its message.
///
/// Nothing `call` borrows is used again by the caller after a panic but the
/// values it was given, which are dropped or dead-lettered: unwind safety is
/// asserted on that ground.
pub(crate) fn catch<T>(call: impl FnOnce() -> T) -> Result<T, String> {
    catch_unwind(AssertUnwindSafe(call)).map_err(|payload| panic_text(&*payload))
}

/// Make a future with `make` and await it; a panic in either comes back as
/// its message.
pub(crate) async fn catch_future<F: Future>(make: impl FnOnce() -> F) -> Result<F::Output, String> {
    let future = catch(make)?;
    AssertUnwindSafe(future).catch_unwind().await.map_err(|payload| panic_text(&*payload))
}

/// The text a panic was raised with, kept as a plugin's error text is
/// ([`error_text`]): it reaches the log, dead letters and callers.
pub(crate) fn panic_text(payload: &(dyn Any + Send)) -> String {
    let text =
        payload.downcast_ref::<&str>().copied().or(payload.downcast_ref::<String>().map(String::as_str));
    text.map_or_else(|| "a panic without a message".to_owned(), error_text)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_panic_comes_back_as_its_message() {
        assert_eq!(catch(|| 7), Ok(7));
        assert_eq!(catch(|| -> u8 { panic!("boom {}", 42) }), Err("boom 42".to_owned()));
        assert_eq!(catch(|| -> u8 { std::panic::panic_any(3_u8) }), Err("a panic without a message".into()));
    }

    #[tokio::test]
    async fn a_panic_while_making_or_polling_a_future_comes_back_as_its_message() {
        let made: Result<std::future::Ready<u8>, String> =
            catch_future(|| -> std::future::Ready<std::future::Ready<u8>> { panic!("making") }).await;
        assert_eq!(made.map(drop), Err("making".to_owned()));
        let polled = catch_future(|| async { panic!("polling") }).await;
        assert_eq!(polled, Err::<(), _>("polling".to_owned()));
    }
}
