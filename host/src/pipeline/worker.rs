//! One pipeline worker's plugin instances and the stage calls it makes with
//! them. Each worker owns its instances, so no lock sits on the call path.

use super::item::{Fate, Item};
use super::stage_budget::StageBudget;
use crate::config::FailurePolicy;
use crate::dead_letter::DeadLetterReason;
use crate::message::{ID_HEADER, Message, MessageId, Verdict, unique_id};
use crate::metrics::{LastFault, Metrics};
use crate::plugin::{
    CompiledPlugin, MiddlewareAction, PluginEngine, PluginError, PluginFault, PluginInstance, PluginSet,
    Transformed, check_decisions, check_transformed, made_message_size, made_size, read_forward, read_reply,
};
use smallvec::SmallVec;
use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

/// Payload bytes one transform or middleware call carries at most; a message
/// larger than this goes in a call of its own. A batch of large messages in one
/// call costs more per message than calls of one: it is copied into guest
/// memory and out again as a whole, and no longer fits the caches.
pub(crate) const MAX_CALL_PAYLOAD_BYTES: usize = 64 << 10;

/// How many messages each call takes, in order, when a batch of messages with
/// these payload sizes is split so that a call carries at most
/// [`MAX_CALL_PAYLOAD_BYTES`] of payload (and at least one message).
pub(crate) fn call_sizes(payloads: impl IntoIterator<Item = usize>) -> Vec<usize> {
    let mut sizes: Vec<usize> = Vec::new();
    let mut bytes = 0;
    for payload in payloads {
        match sizes.last_mut() {
            Some(size) if bytes + payload <= MAX_CALL_PAYLOAD_BYTES => *size += 1,
            _ => {
                sizes.push(1);
                bytes = 0;
            }
        }
        bytes += payload;
    }
    sizes
}

/// A stage call that either settles every item, or faults and hands them back.
type BatchCall = fn(
    &mut Worker,
    &Arc<CompiledPlugin>,
    FailurePolicy,
    Vec<Item>,
) -> Result<Vec<Fate>, (Vec<Item>, PluginFault)>;

/// Per-worker state: one instance per plugin (of the version last used) and a
/// reusable encode buffer.
pub(crate) struct Worker {
    engine: Arc<PluginEngine>,
    ids: Arc<AtomicU64>,
    instances: HashMap<String, PluginInstance>,
    buffer: Vec<u8>,
    /// The plugin set the instances were last checked against, while each is of a version it
    /// serves: an instance made of another (a reply pinned to a version removed since) clears it,
    /// so that the next check lets that instance go.
    checked: Option<Arc<PluginSet>>,
    metrics: Arc<Metrics>,
    /// The largest message a transform or middleware may make (`host.max_message_bytes`).
    max_message_bytes: usize,
    /// What the current stage may yet make of each accepted message of the batch.
    budget: StageBudget,
}

impl Worker {
    pub(crate) fn new(
        engine: Arc<PluginEngine>,
        ids: Arc<AtomicU64>,
        metrics: Arc<Metrics>,
        max_message_bytes: usize,
        budget: StageBudget,
    ) -> Worker {
        let (instances, buffer) = (HashMap::new(), Vec::new());
        Worker { engine, ids, instances, buffer, checked: None, metrics, max_message_bytes, budget }
    }

    /// A stage of a route starts on the batch's messages: it made nothing of them yet.
    pub(crate) fn start_stage(&mut self) {
        self.budget.start_stage();
    }

    /// Drop instances of versions no longer serving, once per plugin-set
    /// change, so replaced and removed versions are freed, not kept idle.
    pub(crate) fn forget_stale(&mut self, plugins: &Arc<PluginSet>) {
        if self.checked.as_ref().is_some_and(|checked| Arc::ptr_eq(checked, plugins)) {
            return;
        }
        self.instances
            .retain(|name, instance| plugins.get(name).is_some_and(|p| Arc::ptr_eq(p, &instance.plugin)));
        self.checked = Some(plugins.clone());
    }

    /// Run plugin stage `plugin` over `items`: a filter in one call (it gets no
    /// payloads), a transform in calls split by [`call_sizes`]. If a call
    /// faults on several items, each is retried alone so one poison message
    /// fails only itself.
    pub(crate) fn run_plugin(
        &mut self,
        plugin: &Arc<CompiledPlugin>,
        policy: FailurePolicy,
        items: Vec<Item>,
    ) -> Vec<Fate> {
        let call: BatchCall = match plugin.kind {
            crate::plugin::PluginKind::Filter => {
                return self.isolating(plugin, policy, items, Worker::filter);
            }
            crate::plugin::PluginKind::Transform => Worker::transform,
            _ => Worker::middleware,
        };
        let sizes = call_sizes(items.iter().map(|item| item.message.payload.len()));
        if sizes.len() == 1 {
            return self.isolating(plugin, policy, items, call);
        }
        let mut items = items.into_iter();
        let mut fates = Vec::with_capacity(items.len());
        for size in sizes {
            let chunk = items.by_ref().take(size).collect();
            fates.extend(self.isolating(plugin, policy, chunk, call));
        }
        fates
    }

    /// Call `call` on `items`; if it faults on several, call it on each alone. Once the host's stop
    /// is past its grace period (the engine [cut](PluginEngine::cut_calls) its calls), no call is
    /// made, and the items of one that faulted (cut, as likely as not) are not called again one
    /// by one, each until its deadline: they are [shut down](Fate::shut_down).
    fn isolating(
        &mut self,
        plugin: &Arc<CompiledPlugin>,
        policy: FailurePolicy,
        items: Vec<Item>,
        call: BatchCall,
    ) -> Vec<Fate> {
        if self.engine.calls_cut() {
            return items.into_iter().map(Fate::shut_down).collect();
        }
        match call(self, plugin, policy, items) {
            Ok(fates) => fates,
            Err((items, _)) if self.engine.calls_cut() => items.into_iter().map(Fate::shut_down).collect(),
            Err((items, _)) if items.len() > 1 => {
                items.into_iter().flat_map(|item| self.isolating(plugin, policy, vec![item], call)).collect()
            }
            Err((items, fault)) => {
                let reason = fault_reason(plugin, fault);
                items.into_iter().map(|item| Fate::failed(item, policy, reason.clone())).collect()
            }
        }
    }

    /// The instance of exactly this version, made on first use. A fault
    /// removes it, so the next call starts from a fresh one.
    fn instance(&mut self, plugin: &Arc<CompiledPlugin>) -> Result<&mut PluginInstance, PluginFault> {
        let current = self.instances.get(&plugin.name).is_some_and(|i| Arc::ptr_eq(&i.plugin, plugin));
        if !current {
            let instance = PluginInstance::new(&self.engine, plugin.clone())?;
            self.instances.insert(plugin.name.clone(), instance);
            let served = |set: &Arc<PluginSet>| set.get(&plugin.name).is_some_and(|p| Arc::ptr_eq(p, plugin));
            if !self.checked.as_ref().is_some_and(served) {
                self.checked = None;
            }
        }
        Ok(self.instances.get_mut(&plugin.name).expect("inserted above"))
    }

    fn discard(&mut self, plugin: &CompiledPlugin) {
        self.instances.remove(&plugin.name);
    }

    /// Encode `items` into the reusable buffer and call `call` with it on this
    /// version's instance; a fault discards the instance.
    fn call_on_batch<R>(
        &mut self,
        plugin: &Arc<CompiledPlugin>,
        items: &[Item],
        with_payload: bool,
        call: impl FnOnce(&mut PluginInstance, &Vec<u8>) -> Result<R, PluginFault>,
    ) -> Result<R, PluginFault> {
        let mut batch = std::mem::take(&mut self.buffer);
        batch.clear();
        for (index, item) in items.iter().enumerate() {
            item.message.encode(&mut batch, index as u32, with_payload);
        }
        let result = self.with_instance(plugin, |instance| call(instance, &batch));
        self.buffer = batch;
        result
    }

    /// Call `call` on this version's instance; a fault discards the instance. An answer is then
    /// either [taken](Worker::taken) or refused as [faulted](Worker::faulted).
    fn with_instance<R>(
        &mut self,
        plugin: &Arc<CompiledPlugin>,
        call: impl FnOnce(&mut PluginInstance) -> Result<R, PluginFault>,
    ) -> Result<R, PluginFault> {
        let started = std::time::Instant::now();
        let result = self.instance(plugin).and_then(call);
        self.metrics.plugin_called(plugin, started.elapsed(), &result);
        if result.is_err() {
            self.discard(plugin);
        }
        result
    }

    /// The last call's answer passed its checks: what the call counted counts now (and reaches
    /// the metrics before its outputs go on), and an instance that has
    /// [outgrown](PluginInstance::outgrown) its memory is discarded, so that the next call starts
    /// from a fresh one rather than fail at the cap.
    fn taken(&mut self, plugin: &CompiledPlugin) {
        let Some(instance) = self.instances.get_mut(&plugin.name) else { return };
        if instance.commit_counts() {
            self.metrics.plugin_counted(plugin);
        }
        if instance.outgrown() {
            self.metrics.plugin_renewed(&plugin.name);
            self.discard(plugin);
        }
    }

    /// Count `fault`, found in an answer after the call, keep it as the
    /// plugin's last, and discard the instance (and with it what the call
    /// counted: the answer's messages run again).
    fn faulted(&mut self, plugin: &CompiledPlugin, fault: &PluginFault) {
        self.metrics.plugin_fault(&plugin.name, LastFault::of(fault, plugin.short_version()));
        self.discard(plugin);
    }

    fn filter(
        &mut self,
        plugin: &Arc<CompiledPlugin>,
        policy: FailurePolicy,
        items: Vec<Item>,
    ) -> Result<Vec<Fate>, (Vec<Item>, PluginFault)> {
        let decisions = self.call_on_batch(plugin, &items, false, |instance, batch| {
            let decisions = instance.filter(batch)?;
            check_decisions(&decisions, items.len()).map(|()| decisions)
        });
        let decisions = match decisions {
            Ok(decisions) => decisions,
            Err(fault) => return Err((items, fault)),
        };
        self.taken(plugin);
        Ok(items
            .into_iter()
            .zip(decisions)
            .map(|(item, decision)| match decision {
                Ok(Verdict::Keep) => Fate::Keep(item),
                Ok(Verdict::Drop) => Fate::Dropped(item),
                Err(error) => Fate::failed(item, policy, self.error_reason(plugin, error)),
            })
            .collect())
    }

    fn transform(
        &mut self,
        plugin: &Arc<CompiledPlugin>,
        policy: FailurePolicy,
        items: Vec<Item>,
    ) -> Result<Vec<Fate>, (Vec<Item>, PluginFault)> {
        let out = match self.call_on_batch(plugin, &items, true, PluginInstance::transform) {
            Ok(out) => out,
            Err(fault) => return Err((items, fault)),
        };
        // The whole answer is checked before any output is built: a fault
        // hands the items back untouched, to be retried one by one.
        let Transformed { messages, errors } = out;
        let checked = match check_transformed(&messages, &errors, items.len(), self.max_message_bytes) {
            Ok(checked) => checked,
            Err(fault) => {
                self.faulted(plugin, &fault);
                return Err((items, fault));
            }
        };
        let mut errors: HashMap<u32, PluginError> = errors.into_iter().collect();
        // What a failed input made is not kept, nor charged.
        let made = checked.iter().filter(|message| !errors.contains_key(&message.source)).map(|message| {
            let size = made_size(message.topic.len(), message.headers(), message.payload_len);
            (items[message.source as usize].accepted.batch_position, size)
        });
        if let Err(fault) = self.budget.charge(made) {
            self.faulted(plugin, &fault);
            return Err((items, fault));
        }
        self.taken(plugin);
        // Most inputs make one output: it is kept in place, not in an allocation of its own.
        let mut outputs: Vec<SmallVec<[Message; 1]>> = items.iter().map(|_| SmallVec::new()).collect();
        let mut items = items;
        for message in &checked {
            let source = message.source as usize;
            // What a failed message is dead-lettered with stays whole.
            let output = match errors.contains_key(&message.source) || !outputs[source].is_empty() {
                true => Message::from_wire(message),
                false => Message::first_output_of(message, &mut items[source].message),
            };
            outputs[source].push(output);
        }
        let mut fates = Vec::with_capacity(items.len());
        for (index, (item, produced)) in items.into_iter().zip(outputs).enumerate() {
            match errors.remove(&(index as u32)) {
                Some(error) => fates.push(Fate::failed(item, policy, self.error_reason(plugin, error))),
                None => self.split(item, produced.into_iter(), &mut fates),
            }
        }
        Ok(fates)
    }

    /// Check what a transform written in Rust made of `item` against the limits a plugin's
    /// outputs are held to, and charge it to the stage's budget.
    pub(crate) fn check_native_outputs(
        &mut self,
        item: &Item,
        outputs: &[Message],
    ) -> Result<(), PluginFault> {
        crate::plugin::check_native_outputs(outputs, self.max_message_bytes)?;
        let position = item.accepted.batch_position;
        self.budget.charge(outputs.iter().map(|output| (position, made_message_size(output))))
    }

    /// Turn a transform's outputs for `item` into fates, appended to `fates`:
    /// the first output, which carries the item's ids already
    /// ([`Message::first_output_of`], [`Message::stand_in_for`]), takes its
    /// reply; further ones are new messages, with new ids and none of the
    /// item's other host headers. Plugins cannot choose them.
    pub(crate) fn split(
        &self,
        item: Item,
        produced: impl ExactSizeIterator<Item = Message>,
        fates: &mut Vec<Fate>,
    ) {
        if produced.len() == 0 {
            return fates.push(Fate::Dropped(item));
        }
        let Item { message: _, mut reply, middlewares, accepted } = item;
        // Each output a share of the holds, the last one the item's own: none is dropped unsettled.
        let shares = std::iter::repeat_n(accepted, produced.len());
        let outputs = produced.zip(shares).enumerate().map(|(n, (mut message, accepted))| {
            if n > 0 {
                message.id = self.next_id();
                message.carry_host_headers(&[]);
                message.set_header(ID_HEADER, unique_id());
            }
            Fate::Keep(Item { message, reply: reply.take(), middlewares: middlewares.clone(), accepted })
        });
        fates.extend(outputs);
    }

    /// The dead-letter reason for a plugin's error answer, counted.
    fn error_reason(&self, plugin: &CompiledPlugin, error: PluginError) -> DeadLetterReason {
        self.metrics.plugin_problem(&plugin.name, error.kind());
        DeadLetterReason::PluginError {
            plugin: plugin.name.clone(),
            version: plugin.short_version().into(),
            error,
        }
    }

    pub(crate) fn next_id(&self) -> MessageId {
        self.ids.fetch_add(1, Ordering::Relaxed)
    }

    fn middleware(
        &mut self,
        plugin: &Arc<CompiledPlugin>,
        policy: FailurePolicy,
        items: Vec<Item>,
    ) -> Result<Vec<Fate>, (Vec<Item>, PluginFault)> {
        let mut fates = Vec::with_capacity(items.len());
        let max_message_bytes = self.max_message_bytes;
        // One request per call: a fault fails only the request that caused it.
        for mut item in items {
            let action =
                self.call_on_batch(plugin, std::slice::from_ref(&item), true, |instance, request| {
                    let action = instance.on_request(request)?;
                    fault_outside(action.map(|action| match action {
                        MiddlewareAction::Forward(batch) => {
                            Ok((false, read_forward(&batch, max_message_bytes)?))
                        }
                        MiddlewareAction::Respond(batch) => {
                            Ok((true, read_reply(&batch, max_message_bytes)?))
                        }
                    }))
                });
            // What it made of the request, a forward or its own reply, is charged to the stage.
            let position = item.accepted.batch_position;
            let action = match action {
                Ok(Ok((responded, made))) => {
                    let size = made_message_size(&made);
                    match self.budget.charge([(position, size)]) {
                        Ok(()) => Ok(Ok((responded, made))),
                        Err(fault) => {
                            self.faulted(plugin, &fault);
                            Err(fault)
                        }
                    }
                }
                action => action,
            };
            if action.is_ok() {
                self.taken(plugin);
            }
            match action {
                Ok(Ok((false, mut forwarded))) => {
                    forwarded.stand_in_for(&item.message);
                    item.message = forwarded;
                    item.middlewares.push(plugin.clone());
                    fates.push(Fate::Keep(item));
                }
                Ok(Ok((true, reply))) => fates.push(Fate::Responded(item, Box::new(reply))),
                Ok(Err(error)) => fates.push(Fate::failed(item, policy, self.error_reason(plugin, error))),
                Err(fault) => fates.push(Fate::failed(item, policy, fault_reason(plugin, fault))),
            }
        }
        Ok(fates)
    }

    /// Pass `reply` back through the middlewares `request` went through, last first.
    pub(crate) fn on_reply(
        &mut self,
        middlewares: &[Arc<CompiledPlugin>],
        request: &Message,
        mut reply: Message,
    ) -> Result<Message, DeadLetterReason> {
        for plugin in middlewares.iter().rev() {
            let mut buffers = (Vec::new(), Vec::new());
            request.encode(&mut buffers.0, 0, true);
            reply.encode(&mut buffers.1, 0, true);
            // A destination's reply may be larger than `host.max_message_bytes` (a tcp one's up to
            // 16 MiB): passing it on, annotated, is no fault, so such a reply may grow by as much
            // as a reply within the limit could be.
            let given = reply.size();
            let room = if given > self.max_message_bytes {
                given.saturating_add(self.max_message_bytes)
            } else {
                self.max_message_bytes
            };
            let answer = self.with_instance(plugin, |instance| {
                let answer = instance.on_reply(&buffers.0, &buffers.1)?;
                fault_outside(answer.map(|batch| read_reply(&batch, room)))
            });
            if answer.is_ok() {
                self.taken(plugin);
            }
            reply = match answer {
                Ok(Ok(message)) => message,
                Ok(Err(error)) => return Err(self.error_reason(plugin, error)),
                Err(fault) => return Err(fault_reason(plugin, fault)),
            };
        }
        Ok(reply)
    }
}

/// Move a fault found while reading a plugin's answer outside its error.
fn fault_outside<T>(
    answer: Result<Result<T, PluginFault>, PluginError>,
) -> Result<Result<T, PluginError>, PluginFault> {
    match answer {
        Ok(Ok(value)) => Ok(Ok(value)),
        Ok(Err(fault)) => Err(fault),
        Err(error) => Ok(Err(error)),
    }
}

pub(crate) fn fault_reason(plugin: &CompiledPlugin, fault: PluginFault) -> DeadLetterReason {
    DeadLetterReason::PluginFault {
        plugin: plugin.name.clone(),
        version: plugin.short_version().into(),
        fault,
    }
}

#[cfg(test)]
mod tests {
    use super::{MAX_CALL_PAYLOAD_BYTES, call_sizes};

    #[test]
    fn a_call_carries_bounded_payload_bytes_and_at_least_one_message() {
        assert_eq!(call_sizes([256; 64]), vec![64], "small messages go in one call");
        assert_eq!(call_sizes([64 << 10; 3]), vec![1, 1, 1], "a call of 64 KiB is full");
        assert_eq!(call_sizes([MAX_CALL_PAYLOAD_BYTES * 2, 10, 10]), vec![1, 2], "a larger one goes alone");
        assert_eq!(call_sizes([40 << 10, 30 << 10, 20 << 10, 1]), vec![1, 3]);
        assert_eq!(call_sizes([]), Vec::<usize>::new());
    }
}
