//! Transforms: each input message yields zero, one or many output messages.

use std::marker::PhantomData;

use switchyard_wire::decode_host_batch;

use crate::bindings::transform::exports::switchyard::plugin::transform::{Guest, Transformed};
use crate::host::FlushCounts;
use crate::{Error, Output};

/// A transform: rewrites, splits or drops messages.
///
/// Export it with [`export_transform!`](crate::export_transform).
pub trait Transform {
    /// Transform one message, writing its outputs to `out`.
    ///
    /// Called once per message routed through a stage using this plugin, in
    /// batch order, with the payload. Write zero outputs to drop the message,
    /// [`Output::forward`] to pass it on unchanged, [`Output::emit`] to pass
    /// on a changed copy, and as many as you like to split it. An `Err`
    /// discards the outputs already written for this message and reports the
    /// error for it alone.
    fn transform(message: &crate::Message<'_>, out: &mut Output) -> Result<(), Error>;
}

/// Glue between a [`Transform`] and the generated export.
#[doc(hidden)]
pub struct TransformExport<T>(PhantomData<T>);

/// Compiles only for a `T` that implements [`Transform`]: the export macro's check.
#[doc(hidden)]
pub const fn is_transform<T: Transform>() {}

impl<T: Transform> Guest for TransformExport<T> {
    fn transform(messages: Vec<u8>) -> Transformed {
        crate::host::forward_panics();
        let _flush = FlushCounts;
        run::<T>(&messages)
    }
}

pub(crate) fn run<T: Transform>(batch: &[u8]) -> Transformed {
    // Most transforms write about as many bytes as they read.
    let mut out = Output::with_capacity(batch.len());
    let mut errors = Vec::new();
    // SAFETY: the host wrote the batch.
    #[allow(unsafe_code)]
    let messages = unsafe { decode_host_batch(batch) };
    for (index, message) in (0..).zip(messages) {
        out.start(index);
        let mark = out.len();
        let result = message.map_err(Error::from).and_then(|message| T::transform(&message, &mut out));
        if let Err(error) = result {
            out.truncate(mark);
            errors.push((index, error));
        }
    }
    Transformed { messages: out.into_batch(), errors }
}

/// Export a [`Transform`] as this component's `switchyard:plugin/transform`.
#[macro_export]
macro_rules! export_transform {
    ($plugin:ty) => {
        const _: () = $crate::__private::is_transform::<$plugin>();
        // A native build (a `cdylib` for the host's target) exports the C ABI instead.
        #[cfg(not(target_family = "wasm"))]
        $crate::__native_entry_points!($plugin, TRANSFORM, switchyard_native_transform => transform);
        #[cfg(target_family = "wasm")]
        $crate::__format_export!();
        #[cfg(target_family = "wasm")]
        const _: () = {
            type SwitchyardTransformExport = $crate::__private::TransformExport<$plugin>;
            $crate::__private::transform::export!(SwitchyardTransformExport with_types_in $crate::__private::transform);
        };
    };
}

#[cfg(test)]
mod tests {
    use switchyard_wire::{Head, Payload, decode, write_message};

    use super::*;
    use crate::Message;

    /// Splits the payload on commas; rejects a payload of "bad" after emitting.
    struct Split;

    impl Transform for Split {
        fn transform(message: &Message<'_>, out: &mut Output) -> Result<(), Error> {
            let payload = message.payload.unwrap_or_default();
            for part in payload.split(|byte| *byte == b',').filter(|part| !part.is_empty()) {
                out.emit(message).with_payload(part).with_header("part", "yes").finish();
            }
            if payload == b"bad" {
                return Err(Error::rejected("bad"));
            }
            Ok(())
        }
    }

    fn batch(payloads: &[&str]) -> Vec<u8> {
        let mut batch = Vec::new();
        for (id, payload) in (10..).zip(payloads) {
            let head = Head { id, source: 0, priority: 1, topic: "t" };
            write_message(&mut batch, &head, [("k", "v")], Payload::Bytes(payload.as_bytes()));
        }
        batch
    }

    #[test]
    fn outputs_name_their_source_and_failed_inputs_emit_nothing() {
        let transformed = run::<Split>(&batch(&["a,b", "", "bad", "c"]));
        assert_eq!(transformed.errors, [(2, Error::rejected("bad"))]);
        let outputs: Vec<_> = decode(&transformed.messages).map(Result::unwrap).collect();
        let summary: Vec<_> = outputs.iter().map(|m| (m.source, m.id, m.payload.unwrap())).collect();
        assert_eq!(summary, [(0, 10, &b"a"[..]), (0, 10, b"b"), (3, 13, b"c")]);
        assert_eq!(outputs[0].headers().collect::<Vec<_>>(), [("k", "v"), ("part", "yes")]);
    }

    #[test]
    fn malformed_input_is_reported_for_its_index() {
        let mut bytes = batch(&["a", "b"]);
        bytes.truncate(bytes.len() - 1);
        let transformed = run::<Split>(&bytes);
        assert!(matches!(transformed.errors[..], [(1, Error::Failed(_))]));
        assert_eq!(decode(&transformed.messages).count(), 1);
    }
}
