//! Middleware: sees a request before delivery and its reply after.

use std::marker::PhantomData;

use crate::bindings::middleware::exports::switchyard::plugin::middleware::{self as wit, Guest};
use crate::host::FlushCounts;
use crate::message::single;
use crate::{Error, Message, OwnedMessage};

/// What to do with a request, see [`Middleware::on_request`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Deliver the request: unchanged (`None`) or rewritten (`Some`).
    Forward(Option<OwnedMessage>),
    /// Do not deliver: answer the caller with this reply.
    Respond(OwnedMessage),
}

/// A middleware: rewrites or short-circuits requests and rewrites replies.
///
/// Export it with [`export_middleware!`](crate::export_middleware).
pub trait Middleware {
    /// Decide what happens to `request`.
    ///
    /// Called once per request routed through a stage using this plugin,
    /// before delivery, with the payload.
    fn on_request(request: &Message<'_>) -> Result<Action, Error>;

    /// Rewrite `reply` (`Ok(None)` passes it on unchanged).
    ///
    /// Called once per reply to a request this middleware forwarded, after
    /// delivery, when the caller waits for the reply (a request, or an HTTP
    /// send with `?wait=true`); not called for replies it produced with
    /// [`Action::Respond`], nor for a reply nobody waits for (to a message
    /// sent, not requested, as an HTTP send answered `202`), which is
    /// dropped. `request` is the request as delivered (after any rewrite).
    fn on_reply(request: &Message<'_>, reply: &Message<'_>) -> Result<Option<OwnedMessage>, Error>;
}

/// Glue between a [`Middleware`] and the generated export.
#[doc(hidden)]
pub struct MiddlewareExport<T>(PhantomData<T>);

/// Compiles only for a `T` that implements [`Middleware`]: the export macro's check.
#[doc(hidden)]
pub const fn is_middleware<T: Middleware>() {}

impl<T: Middleware> Guest for MiddlewareExport<T> {
    fn on_request(request: Vec<u8>) -> Result<wit::Action, Error> {
        crate::host::forward_panics();
        let _flush = FlushCounts;
        let action = T::on_request(&single(&request)?)?;
        Ok(match action {
            Action::Forward(None) => wit::Action::Forward(request),
            Action::Forward(Some(message)) => wit::Action::Forward(message.to_batch()),
            Action::Respond(reply) => wit::Action::Respond(reply.to_batch()),
        })
    }

    fn on_reply(request: Vec<u8>, reply: Vec<u8>) -> Result<Vec<u8>, Error> {
        crate::host::forward_panics();
        let _flush = FlushCounts;
        let rewritten = T::on_reply(&single(&request)?, &single(&reply)?)?;
        Ok(rewritten.map_or(reply, |message| message.to_batch()))
    }
}

/// Export a [`Middleware`] as this component's `switchyard:plugin/middleware`.
#[macro_export]
macro_rules! export_middleware {
    ($plugin:ty) => {
        const _: () = $crate::__private::is_middleware::<$plugin>();
        // A native build (a `cdylib` for the host's target) exports the C ABI instead.
        #[cfg(not(target_family = "wasm"))]
        $crate::__native_entry_points!($plugin, MIDDLEWARE, switchyard_native_on_request => on_request, switchyard_native_on_reply => on_reply);
        #[cfg(target_family = "wasm")]
        $crate::__format_export!();
        #[cfg(target_family = "wasm")]
        const _: () = {
            type SwitchyardMiddlewareExport = $crate::__private::MiddlewareExport<$plugin>;
            $crate::__private::middleware::export!(SwitchyardMiddlewareExport with_types_in $crate::__private::middleware);
        };
    };
}

#[cfg(test)]
mod tests {
    use switchyard_wire::decode;

    use super::*;

    /// Forwards unchanged, unless the request's topic is `reply` or `rewrite`.
    struct Switch;

    impl Middleware for Switch {
        fn on_request(request: &Message<'_>) -> Result<Action, Error> {
            Ok(match request.topic {
                "reply" => Action::Respond(OwnedMessage::reply_to(request).with_payload(&b"ok"[..])),
                "rewrite" => Action::Forward(Some(OwnedMessage::from(request).with_topic("rewritten"))),
                _ => Action::Forward(None),
            })
        }

        fn on_reply(_: &Message<'_>, _: &Message<'_>) -> Result<Option<OwnedMessage>, Error> {
            Ok(None)
        }
    }

    fn request(topic: &str) -> Vec<u8> {
        OwnedMessage::new(topic).with_header("k", "v").to_batch()
    }

    fn topic_of(batch: &[u8]) -> String {
        decode(batch).next().unwrap().unwrap().topic.to_owned()
    }

    #[test]
    fn actions_reach_the_host_as_one_message_batches() {
        let unchanged = MiddlewareExport::<Switch>::on_request(request("pass"));
        assert!(matches!(unchanged, Ok(wit::Action::Forward(batch)) if batch == request("pass")));
        let Ok(wit::Action::Forward(rewritten)) = MiddlewareExport::<Switch>::on_request(request("rewrite"))
        else {
            panic!("expected a forward");
        };
        assert_eq!(topic_of(&rewritten), "rewritten");
        let Ok(wit::Action::Respond(reply)) = MiddlewareExport::<Switch>::on_request(request("reply")) else {
            panic!("expected a reply");
        };
        assert_eq!(decode(&reply).next().unwrap().unwrap().payload, Some(&b"ok"[..]));
    }

    #[test]
    fn unchanged_reply_is_passed_back_and_malformed_input_fails() {
        let reply = MiddlewareExport::<Switch>::on_reply(request("q"), request("r"));
        assert_eq!(reply.map(|batch| topic_of(&batch)), Ok("r".to_owned()));
        let failed = MiddlewareExport::<Switch>::on_request(vec![1, 2]);
        assert!(matches!(failed, Err(Error::Failed(_))));
    }
}
