//! Per-stage costs: one plugin called directly, unbatched and batched.

use super::native::{native_filter, native_stamp, native_transform};
use super::*;

/// Nanoseconds per unit of `step`, which handles `units` units a call.
pub(super) fn ns_per_unit(
    units: usize,
    mut step: impl FnMut() -> Result<(), BenchError>,
) -> Result<Sample, BenchError> {
    let warm_up = Instant::now();
    let mut steps = 0u32;
    while warm_up.elapsed() < WARM_UP {
        step()?;
        steps += 1;
    }
    let per_step = warm_up.elapsed() / steps;
    let steps = (RUN_TIME.as_nanos() / per_step.as_nanos().max(1)).max(1) as u64;
    let mut runs = Vec::with_capacity(RUNS);
    for _ in 0..RUNS {
        let started = Instant::now();
        for _ in 0..steps {
            step()?;
        }
        runs.push(started.elapsed().as_nanos() as f64 / (steps * units as u64) as f64);
    }
    Ok(Sample::new(runs))
}

/// A message on `orders.eu` with three headers, one of them `x-tenant: acme`.
pub(super) fn order_message(payload: impl Into<bytes::Bytes>) -> Message {
    Message::new("orders.eu", payload)
        .with_header("x-tenant", "acme")
        .with_header("x-request-id", "r-1029")
        .with_header("content-type", "application/json")
}

pub(super) fn plugin_config(name: &str, entries: &[(&str, &str)]) -> PluginConfig {
    let config = entries.iter().map(|(key, value)| ((*key).to_owned(), (*value).to_owned())).collect();
    PluginConfig { name: name.to_owned(), config, ..PluginConfig::default() }
}

pub(super) fn filter_config() -> PluginConfig {
    plugin_config(FILTER, &[("require_header", "x-tenant"), ("require_value", "acme")])
}

pub(super) fn transform_config() -> PluginConfig {
    plugin_config(TRANSFORM, &[("fields", "card")])
}

/// `stamp-transform`, stamping its own name.
pub(super) fn stamp_config() -> PluginConfig {
    plugin_config(STAMP, &[("stamp", STAMP)])
}

/// An instance of the plugin at `path`, configured by `config`.
pub(super) fn instantiate(
    engine: &PluginEngine,
    path: &Path,
    config: &PluginConfig,
) -> Result<PluginInstance, BenchError> {
    Ok(PluginInstance::new(engine, load_file(engine, path, Some(config))?)?)
}

/// `header-filter` on 64 B and on 64 KiB payloads, one instance for both;
/// `library` is the same plugin built as a native library, if measured.
pub(super) fn filter_costs(
    engine: &PluginEngine,
    path: &Path,
    library: Option<&Path>,
) -> Result<(StageCost, StageCost), BenchError> {
    let mut instance = instantiate(engine, path, &filter_config())?;
    let mut library = library.map(|path| instantiate(engine, path, &filter_config())).transpose()?;
    let mut cost = |payload_bytes: usize| -> Result<StageCost, BenchError> {
        let message = order_message(vec![b'x'; payload_bytes]);
        let mut measure = |instance: &mut PluginInstance| -> Result<CallCost, BenchError> {
            Ok(CallCost {
                unbatched_ns: filter_calls(instance, &message, 1)?,
                batched_ns_per_message: filter_calls(instance, &message, BATCH)?,
            })
        };
        let component = measure(&mut instance)?;
        let native_library = library.as_mut().map(&mut measure).transpose()?;
        let native_ns_per_message = ns_per_unit(1, || match native_filter(std::hint::black_box(&message)) {
            Ok(Verdict::Keep) => Ok(()),
            other => Err(BenchError::Check(format!("the native filter did not keep the message: {other:?}"))),
        })?;
        Ok(StageCost {
            plugin: FILTER,
            payload_bytes,
            unbatched_ns: component.unbatched_ns,
            batched_ns_per_message: component.batched_ns_per_message,
            native_ns_per_message,
            native_library,
        })
    };
    Ok((cost(64)?, cost(64 << 10)?))
}

/// Nanoseconds per message of filter calls carrying `count` copies of `message`.
fn filter_calls(
    instance: &mut PluginInstance,
    message: &Message,
    count: usize,
) -> Result<Sample, BenchError> {
    let batch = vec![message.clone(); count];
    let mut buffer = Vec::new();
    ns_per_unit(count, || filter_call(instance, &batch, &mut buffer))
}

/// One filter call over `batch` as the pipeline makes it: the heads encoded
/// into `buffer`, the call, every decision read (each must keep), and what the
/// call counted committed, as a worker does once it took the answer.
pub(super) fn filter_call(
    instance: &mut PluginInstance,
    batch: &[Message],
    buffer: &mut Vec<u8>,
) -> Result<(), BenchError> {
    buffer.clear();
    for (index, message) in batch.iter().enumerate() {
        message.encode(buffer, index as u32, false);
    }
    let decisions = instance.filter(buffer)?;
    match decisions.iter().filter(|d| matches!(d, Ok(Verdict::Keep))).count() == batch.len() {
        true => {
            instance.commit_counts();
            Ok(())
        }
        false => Err(BenchError::Check(format!("{FILTER} did not keep every message: {decisions:?}"))),
    }
}

/// `redact-transform` on the JSON order; `library` is the same plugin built
/// as a native library, if measured.
pub(super) fn transform_cost(
    engine: &PluginEngine,
    path: &Path,
    library: Option<&Path>,
) -> Result<StageCost, BenchError> {
    let message = order_message(ORDER);
    let measure = |path: &Path| -> Result<CallCost, BenchError> {
        let mut instance = instantiate(engine, path, &transform_config())?;
        Ok(CallCost {
            unbatched_ns: transform_calls(&mut instance, &message, 1, check_redacted)?,
            batched_ns_per_message: transform_calls(&mut instance, &message, BATCH, check_redacted)?,
        })
    };
    let component = measure(path)?;
    let native_library = library.map(measure).transpose()?;
    check_redacted(&native_transform(&message).map_err(|err| BenchError::Check(err.to_string()))?[0])?;
    Ok(StageCost {
        plugin: TRANSFORM,
        payload_bytes: ORDER.len(),
        unbatched_ns: component.unbatched_ns,
        batched_ns_per_message: component.batched_ns_per_message,
        native_ns_per_message: native_cost(native_transform, &message)?,
        native_library,
    })
}

/// `stamp-transform` (adds one header, passes the payload on) at 256 B and at
/// 64 KiB payloads. Its batched calls are split as the pipeline splits them
/// ([`crate::pipeline::call_sizes`]: a call carries a bounded number of
/// payload bytes).
pub(super) fn stamp_costs(engine: &PluginEngine, path: &Path) -> Result<[StageCost; 2], BenchError> {
    let mut instance = instantiate(engine, path, &stamp_config())?;
    let mut cost = |payload_bytes: usize| -> Result<StageCost, BenchError> {
        let message = order_message(vec![b'x'; payload_bytes]);
        Ok(StageCost {
            plugin: STAMP,
            payload_bytes,
            unbatched_ns: transform_calls(&mut instance, &message, 1, check_stamped)?,
            batched_ns_per_message: transform_calls(&mut instance, &message, BATCH, check_stamped)?,
            native_ns_per_message: native_cost(native_stamp, &message)?,
            native_library: None,
        })
    };
    Ok([cost(STAMP_PAYLOAD)?, cost(64 << 10)?])
}

/// Nanoseconds per message of the native transform `transform` on `message`.
fn native_cost(
    transform: fn(&Message) -> Result<Vec<Message>, PluginError>,
    message: &Message,
) -> Result<Sample, BenchError> {
    ns_per_unit(1, || match transform(std::hint::black_box(message)) {
        Ok(outputs) if outputs.len() == 1 => {
            std::hint::black_box(outputs);
            Ok(())
        }
        other => Err(BenchError::Check(format!("the native transform made {other:?}"))),
    })
}

/// What a transform's output must show for the benchmark to count it.
pub(super) type Check = fn(&Message) -> Result<(), BenchError>;

/// Nanoseconds per message of transform calls carrying `count` copies of
/// `message` (split into calls as the pipeline splits a batch), outputs
/// decoded (the first one checked by `check`).
fn transform_calls(
    instance: &mut PluginInstance,
    message: &Message,
    count: usize,
    check: Check,
) -> Result<Sample, BenchError> {
    let batch = vec![message.clone(); count];
    let sizes = crate::pipeline::call_sizes(batch.iter().map(|message| message.payload.len()));
    let mut buffer = Vec::new();
    let mut checked = false;
    ns_per_unit(count, || {
        let mut rest = batch.as_slice();
        for &size in &sizes {
            let (call, after) = rest.split_at(size);
            transform_call(instance, call, &mut buffer, &mut checked, check)?;
            rest = after;
        }
        Ok(())
    })
}

/// One transform call over `batch` as the pipeline makes it: the messages
/// encoded into `buffer`, the call, every output decoded into a [`Message`]
/// (the first one checked by `check`, unless `checked` already), and what the
/// call counted committed, as a worker does once it took the answer. Outputs are
/// copied whole (`Message::from_wire`): the pipeline instead moves what did not
/// change out of its inputs, which this loop keeps for the next call, so the
/// figure is an upper bound of the pipeline's decode.
pub(super) fn transform_call(
    instance: &mut PluginInstance,
    batch: &[Message],
    buffer: &mut Vec<u8>,
    checked: &mut bool,
    check: Check,
) -> Result<(), BenchError> {
    buffer.clear();
    for (index, message) in batch.iter().enumerate() {
        message.encode(buffer, index as u32, true);
    }
    let out = instance.transform(buffer)?;
    if let Some((index, error)) = out.errors.first() {
        return Err(BenchError::Check(format!("the transform failed on message {index}: {error}")));
    }
    let mut outputs = 0;
    for output in switchyard_wire::decode(&out.messages) {
        let output = output.map_err(|err| BenchError::Check(format!("the transform's output: {err}")))?;
        let output = std::hint::black_box(Message::from_wire(&output));
        if !*checked {
            check(&output)?;
            *checked = true;
        }
        outputs += 1;
    }
    match outputs == batch.len() {
        true => {
            instance.commit_counts();
            Ok(())
        }
        false => {
            Err(BenchError::Check(format!("the transform made {outputs} outputs of {} inputs", batch.len())))
        }
    }
}

/// `stamp-transform`'s work shows: the header it adds.
pub(super) fn check_stamped(output: &Message) -> Result<(), BenchError> {
    match output.header("x-stamp") == Some(STAMP) {
        true => Ok(()),
        false => Err(BenchError::Check(format!("the transform did not stamp: {output:?}"))),
    }
}

pub(super) fn check_redacted(output: &Message) -> Result<(), BenchError> {
    let payload = String::from_utf8_lossy(&output.payload);
    match payload.contains(r#""card":"[redacted]""#) && output.header("x-transformed-by") == Some(TRANSFORM) {
        true => Ok(()),
        false => Err(BenchError::Check(format!("the transform did not redact: {output:?}"))),
    }
}
