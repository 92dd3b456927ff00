//! Filters: keep or drop each message of a route.

use std::marker::PhantomData;

use switchyard_wire::decisions::DecisionsWriter;
use switchyard_wire::decode_host_batch;
use switchyard_wire::native::ErrorKind;

use crate::bindings::filter::exports::switchyard::plugin::filter::Guest;
use crate::{Error, Message, Verdict};

/// A route filter: keeps or drops messages.
///
/// Export it with [`export_filter!`](crate::export_filter).
pub trait Filter {
    /// Decide about one message.
    ///
    /// Called once per message routed through a stage using this plugin, in
    /// batch order; the host batches messages, so many calls happen within
    /// one host call. The message carries its head only: `payload` is `None`,
    /// `payload_len` is its size. An `Err` affects this message only.
    fn filter(message: &Message<'_>) -> Result<Verdict, Error>;
}

/// Glue between a [`Filter`] and the generated export.
#[doc(hidden)]
pub struct FilterExport<T>(PhantomData<T>);

/// Compiles only for a `T` that implements [`Filter`]: the export macro's check.
#[doc(hidden)]
pub const fn is_filter<T: Filter>() {}

impl<T: Filter> Guest for FilterExport<T> {
    fn filter(messages: Vec<u8>) -> Vec<u8> {
        crate::host::forward_panics();
        // Two bytes a decision; a message head takes tens of bytes.
        let mut answer = DecisionsWriter::with_capacity(64 + messages.len() / 16);
        decide::<T>(&messages, |decision| answer.decision(wire_decision(&decision)));
        crate::host::drain_counts(|name, total| answer.count(name, total));
        answer.finish()
    }
}

/// Hand `decided` one decision per message, in order; a malformed message
/// gets `failed` and ends the batch (the layout cannot be resynchronised
/// past it).
pub(crate) fn decide<T: Filter>(batch: &[u8], mut decided: impl FnMut(Result<Verdict, Error>)) {
    // SAFETY: the host wrote the batch.
    #[allow(unsafe_code)]
    let messages = unsafe { decode_host_batch(batch) };
    for message in messages {
        match message {
            Ok(message) => decided(T::filter(&message)),
            Err(error) => decided(Err(error.into())),
        }
    }
}

/// A decision as the answer encodings write it: `Ok(true)` keeps the message.
pub(crate) fn wire_decision(decision: &Result<Verdict, Error>) -> Result<bool, (ErrorKind, &str)> {
    decision.as_ref().map(|verdict| *verdict == Verdict::Keep).map_err(Error::parts)
}

/// Export a [`Filter`] as this component's `switchyard:plugin/filter`.
///
/// ```
/// # use switchyard_plugin::{Error, Filter, Message, Verdict};
/// struct KeepAll;
/// impl Filter for KeepAll {
///     fn filter(_: &Message<'_>) -> Result<Verdict, Error> {
///         Ok(Verdict::Keep)
///     }
/// }
/// switchyard_plugin::export_filter!(KeepAll);
/// # fn main() {}
/// ```
#[macro_export]
macro_rules! export_filter {
    ($plugin:ty) => {
        const _: () = $crate::__private::is_filter::<$plugin>();
        // A native build (a `cdylib` for the host's target) exports the C ABI instead.
        #[cfg(not(target_family = "wasm"))]
        $crate::__native_entry_points!($plugin, FILTER, switchyard_native_filter => filter);
        #[cfg(target_family = "wasm")]
        $crate::__format_export!();
        #[cfg(target_family = "wasm")]
        const _: () = {
            type SwitchyardFilterExport = $crate::__private::FilterExport<$plugin>;
            $crate::__private::filter::export!(SwitchyardFilterExport with_types_in $crate::__private::filter);
        };
    };
}

#[cfg(test)]
mod tests {
    use switchyard_wire::{Head, Payload, write_message};

    use super::*;

    struct KeepTenant;

    impl Filter for KeepTenant {
        fn filter(message: &Message<'_>) -> Result<Verdict, Error> {
            match message.header("tenant") {
                Some("acme") => Ok(Verdict::Keep),
                Some(_) => Ok(Verdict::Drop),
                None => Err(Error::rejected("no tenant")),
            }
        }
    }

    fn batch(tenants: &[Option<&str>]) -> Vec<u8> {
        let mut batch = Vec::new();
        for (id, tenant) in tenants.iter().enumerate() {
            let head = Head { id: id as u64, source: 0, priority: 0, topic: "t" };
            let headers = tenant.iter().map(|tenant| ("tenant", *tenant));
            write_message(&mut batch, &head, headers, Payload::Omitted(9));
        }
        batch
    }

    fn decisions(batch: &[u8]) -> Vec<Result<Verdict, Error>> {
        let mut decisions = Vec::new();
        decide::<KeepTenant>(batch, |decision| decisions.push(decision));
        decisions
    }

    #[test]
    fn one_decision_per_message_in_order() {
        let decisions = decisions(&batch(&[Some("acme"), Some("other"), None]));
        assert_eq!(decisions, [Ok(Verdict::Keep), Ok(Verdict::Drop), Err(Error::rejected("no tenant"))]);
    }

    #[test]
    fn malformed_message_fails_instead_of_panicking() {
        let mut bytes = batch(&[Some("acme"), Some("acme")]);
        bytes.truncate(bytes.len() - 3);
        let decisions = decisions(&bytes);
        assert_eq!(decisions[0], Ok(Verdict::Keep));
        assert!(matches!(decisions[1], Err(Error::Failed(_))));
    }
}
