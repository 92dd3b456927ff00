//! Admission: the checks a message passes and the intake it is held in until a worker or a
//! destination's queue takes it.

use super::*;

impl Host {
    /// Check `message` and give it its ids; with the KiB of `host.queue_bytes`
    /// it holds in the intake (its size as `max_message_bytes` counts it,
    /// rounded up, at least one).
    pub(super) fn admit(&self, mut message: Message) -> Result<(Message, u32), SendError> {
        let size = check_message(&message, self.inner.reloader.config.load().host.max_message_bytes)?;
        let kib = intake_kib(size);
        message.id = self.inner.reloader.pipeline.ids.fetch_add(1, Ordering::Relaxed);
        // An id the application set, in whatever case, is spelled as the host spells it from here
        // on: the dead-letter file, a transport and a receiver's deduplication look for `x-sy-id`.
        match message.headers.iter_mut().find(|(name, _)| name.eq_ignore_ascii_case(ID_HEADER)) {
            Some((name, _)) if name != ID_HEADER => *name = ID_HEADER.to_owned(),
            Some(_) => {}
            None => message.headers.push((ID_HEADER.to_owned(), unique_id())),
        }
        Ok((message, kib))
    }

    /// `kib` of `host.queue_bytes`, waited for.
    pub(super) async fn intake_bytes(&self, kib: u32) -> OwnedSemaphorePermit {
        let budget = self.inner.intake_bytes.clone();
        budget.acquire_many_owned(kib).await.expect("the intake budget is never closed")
    }

    /// `kib` of `host.queue_bytes`, if free now.
    pub(super) fn try_intake_bytes(&self, kib: u32) -> Result<OwnedSemaphorePermit, SendError> {
        let budget = self.inner.intake_bytes.clone();
        budget.try_acquire_many_owned(kib).map_err(|_| SendError::Backpressure)
    }

    pub(super) fn count_accepted(&self) {
        // Also `switchyard_messages_accepted_total`: one counter for both.
        Counters::bump(&self.inner.reloader.pipeline.counters.accepted, 1);
    }

    pub(super) fn sender(&self) -> Result<flume::Sender<Envelope>, SendError> {
        let sender = self.inner.sender.read().unwrap_or_else(|poison| poison.into_inner());
        sender.clone().ok_or(SendError::ShuttingDown)
    }

    /// Queue `envelope`, waiting while the queue is full; one that needs no worker goes to its
    /// destination instead, waiting while that is full. A wait holds nothing the workers or a
    /// shutdown wait for, so a send no longer polled holds neither up: it is told when room is
    /// made and tries again under the sender's lock, refused once a shutdown took the sender.
    /// Each try looks for the route in the topology of the time: one a reload changed meanwhile
    /// (to stages, or another destination) goes where it leads now.
    pub(super) async fn enqueue(&self, mut envelope: Envelope) -> Result<(), SendError> {
        let pipeline = &self.inner.reloader.pipeline;
        while let Some(direct) = pipeline.direct_route(&envelope) {
            match self.deliver_direct_if_room(&direct, envelope)? {
                None => return Ok(()),
                Some(back) => envelope = back,
            }
            direct.room().await;
        }
        let mut woken = false;
        loop {
            let room = pipeline.intake_taken.notified();
            tokio::pin!(room);
            // Most sends find room at the first try, and take no lock of the notifier. A full queue
            // is tried again once this send is told of room (`enable`): room made after that try
            // cannot be missed.
            for try_again in [false, true] {
                if try_again {
                    room.as_mut().enable();
                }
                envelope = match self.enqueue_if_room(envelope)? {
                    Some(back) => back,
                    None if woken => {
                        // The batch that made room for this one may have made room for more: the
                        // next waiter tries too.
                        pipeline.intake_taken.notify_one();
                        return Ok(());
                    }
                    None => return Ok(()),
                };
            }
            room.await;
            woken = true;
        }
    }

    /// Queue `envelope` only if the queue has room now; one that needs no worker goes to its
    /// destination instead if that has room now, else to the queue.
    pub(super) fn enqueue_now(&self, mut envelope: Envelope) -> Result<(), SendError> {
        let pipeline = &self.inner.reloader.pipeline;
        if let Some(direct) = pipeline.direct_route(&envelope) {
            match self.deliver_direct_if_room(&direct, envelope)? {
                None => {
                    self.count_accepted();
                    return Ok(());
                }
                Some(back) => envelope = back,
            }
        }
        match self.enqueue_if_room(envelope)? {
            None => self.count_accepted(),
            Some(_) => return Err(SendError::Backpressure),
        }
        Ok(())
    }

    /// Push `envelope` into the queue of its route's destination (`direct`) if that has room now,
    /// else hand it back. Under the sender's lock, as [`enqueue_if_room`](Self::enqueue_if_room)
    /// queues: nothing goes in once a shutdown took the sender, which it does before it waits for
    /// the workers and closes the queues.
    pub(super) fn deliver_direct_if_room(
        &self,
        direct: &DirectRoute,
        envelope: Envelope,
    ) -> Result<Option<Envelope>, SendError> {
        let sender = self.inner.sender.read().unwrap_or_else(|poison| poison.into_inner());
        sender.as_ref().ok_or(SendError::ShuttingDown)?;
        Ok(self.inner.reloader.pipeline.try_deliver_direct(direct, envelope))
    }

    /// Queue `envelope` if the queue has room now, else hand it back. The sender is used under
    /// the lock, not cloned: a clone and its drop would update two counters every sender shares,
    /// twice a message.
    pub(super) fn enqueue_if_room(&self, envelope: Envelope) -> Result<Option<Envelope>, SendError> {
        let sender = self.inner.sender.read().unwrap_or_else(|poison| poison.into_inner());
        match sender.as_ref().ok_or(SendError::ShuttingDown)?.try_send(envelope) {
            Ok(()) => Ok(None),
            Err(flume::TrySendError::Full(envelope)) => Ok(Some(envelope)),
            Err(flume::TrySendError::Disconnected(_)) => Err(SendError::ShuttingDown),
        }
    }
}

/// Headers the sender of a message may give it, at most: besides those the host gives it as it
/// takes it in, its id and stream sequence ([`SendersHeaders`](crate::message::SendersHeaders)).
pub(crate) const MAX_HEADERS: usize = 1024;

/// What is wrong with a message whose sender gave it `count` headers, if anything: more than
/// [`MAX_HEADERS`]. Checked at admission, and by the ingresses that count a client's headers as
/// they read them (and build none past the limit).
pub(crate) fn header_count_problem(count: usize) -> Option<String> {
    (count > MAX_HEADERS).then(|| format!("{count} headers; at most {MAX_HEADERS}"))
}

/// Bytes of a message's topic, at most (a topic names a route's match, a file, a NATS subject:
/// it is a name, not data).
pub(crate) const MAX_TOPIC_BYTES: usize = 1024;

/// The bytes of an HTTP token (RFC 9110 `tchar`), by value.
const TOKEN_BYTES: [bool; 256] = {
    let mut table = [false; 256];
    let mut b = 0;
    while b < 256 {
        let byte = b as u8;
        table[b] = byte.is_ascii_alphanumeric();
        b += 1;
    }
    let punctuation = b"!#$%&'*+-.^_`|~";
    let mut at = 0;
    while at < punctuation.len() {
        table[punctuation[at] as usize] = true;
        at += 1;
    }
    table
};

/// What is wrong with a header, if anything: a name that is not an HTTP token (RFC 9110: one or
/// more letters, digits and ``!#$%&'*+-.^_`|~``), or a value holding a control character other than
/// tab. Checked at admission and on what plugins make: a header goes into HTTP requests and NATS
/// frames, where such a name or a line break fails every attempt, or ends the header early.
pub(crate) fn header_problem(name: &str, value: &str) -> Option<String> {
    // Every byte is looked at (no early exit), which the compiler turns into a few wide
    // operations: this runs on every header of every message admitted or made by a plugin.
    let not_token = name.bytes().fold(false, |bad, b| bad | !TOKEN_BYTES[usize::from(b)]);
    if name.is_empty() || not_token {
        let name = crate::bounded_text::one_line(name, 64);
        return Some(format!("header name \"{name}\" is not an HTTP token"));
    }
    let control = value.bytes().fold(false, |bad, b| bad | ((b < b' ') & (b != b'\t')) | (b == 0x7f));
    if control {
        let name = crate::bounded_text::one_line(name, 64);
        return Some(format!("header {name}: its value holds a control character"));
    }
    None
}

/// The KiB of `host.queue_bytes` a message of `size` bytes ([`Message::size`]) holds in the intake:
/// rounded up, at least one. The intake's budget is `queue_bytes` rounded up the same way, so a
/// message within `max_message_bytes` (which is at most `queue_bytes`) always fits in it.
pub(crate) fn intake_kib(size: usize) -> u32 {
    u32::try_from(size.div_ceil(1024).max(1)).unwrap_or(u32::MAX)
}

/// What is wrong with `topic` as a message's topic, if anything: longer than [`MAX_TOPIC_BYTES`],
/// an empty or wildcard segment, whitespace or a control character. Checked at admission, and on
/// what a transform makes: a topic reaches subjects, keys and paths (`file`'s `{topic}`), where
/// `..` or a control character must not.
pub(crate) fn topic_problem(topic: &str) -> Option<String> {
    if topic.len() > MAX_TOPIC_BYTES {
        return Some(format!("a topic of {} bytes; at most {MAX_TOPIC_BYTES}", topic.len()));
    }
    if let Some(segment) = topic.split('.').find(|s| s.is_empty() || *s == "*" || *s == ">") {
        let problem = if segment.is_empty() {
            "an empty segment".to_owned()
        } else {
            format!("wildcard \"{segment}\"")
        };
        return Some(format!("topic {topic:?} has {problem}"));
    }
    if topic.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Some(format!("topic {topic:?} contains whitespace or control characters"));
    }
    None
}

/// A message can be admitted: a valid topic, at most [`MAX_HEADERS`] headers the sender gave
/// (an ingress gives it its id before admission), each a valid one ([`header_problem`]), and
/// topic, payload and the sender's headers together ([`Message::size`]) within `limit` bytes.
/// Returns that size.
pub(crate) fn check_message(message: &Message, limit: usize) -> Result<usize, SendError> {
    if let Some(problem) = topic_problem(&message.topic) {
        return Err(SendError::Malformed(problem));
    }
    if let Some(problem) = header_count_problem(message.senders_header_count()) {
        return Err(SendError::Malformed(problem));
    }
    if let Some(problem) = message.headers.iter().find_map(|(name, value)| header_problem(name, value)) {
        return Err(SendError::Malformed(problem));
    }
    let size = message.size();
    if size > limit {
        return Err(SendError::TooLarge { size, limit });
    }
    Ok(size)
}
