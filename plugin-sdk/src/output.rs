//! Where a transform writes its output messages: straight into the reply batch.

use std::ops::Range;

use switchyard_wire::{Head, Payload, write_message};

use crate::Message;

/// The output messages of one transform call, encoded as they are written.
///
/// Every output carries the index of the input it came from (`source`) and
/// that input's id; the host relies on both.
pub struct Output {
    batch: Vec<u8>,
    source: u32,
    /// Header edits of the message being emitted, reused across messages so
    /// that emitting a changed message allocates nothing once warmed up.
    edits: Vec<HeaderEdit>,
    edit_text: String,
}

struct HeaderEdit {
    name: Range<usize>,
    value: Range<usize>,
    /// Index of the input header this edit replaces; `None` appends it.
    replaces: Option<usize>,
}

impl Output {
    pub(crate) fn with_capacity(bytes: usize) -> Self {
        Self { batch: Vec::with_capacity(bytes), source: 0, edits: Vec::new(), edit_text: String::new() }
    }

    pub(crate) fn start(&mut self, source: u32) {
        self.source = source;
    }

    pub(crate) fn len(&self) -> usize {
        self.batch.len()
    }

    pub(crate) fn truncate(&mut self, len: usize) {
        self.batch.truncate(len);
    }

    pub(crate) fn into_batch(self) -> Vec<u8> {
        self.batch
    }

    /// Pass `message` on unchanged.
    pub fn forward(&mut self, message: &Message<'_>) {
        self.emit(message).finish();
    }

    /// Start an output copied from `message`; change it with the `with_*`
    /// methods of [`Emit`], then write it with [`Emit::finish`].
    pub fn emit<'o, 'a>(&'o mut self, message: &Message<'a>) -> Emit<'o, 'a> {
        self.edits.clear();
        self.edit_text.clear();
        Emit {
            out: self,
            id: message.id,
            priority: message.priority,
            topic: message.topic,
            headers: *message,
            payload: message.payload.unwrap_or_default(),
        }
    }
}

/// An output message being built, see [`Output::emit`]. Nothing is written
/// until [`Emit::finish`].
#[must_use = "an output is only written by `finish()`"]
pub struct Emit<'o, 'a> {
    out: &'o mut Output,
    id: u64,
    priority: u8,
    topic: &'a str,
    headers: Message<'a>,
    payload: &'a [u8],
}

impl<'a> Emit<'_, 'a> {
    /// Replace the topic.
    pub fn with_topic(mut self, topic: &'a str) -> Self {
        self.topic = topic;
        self
    }

    /// Replace the payload.
    pub fn with_payload(mut self, payload: &'a [u8]) -> Self {
        self.payload = payload;
        self
    }

    /// Replace the priority class.
    pub fn with_priority(mut self, priority: u8) -> Self {
        self.priority = priority;
        self
    }

    /// Set header `name`, as [`OwnedMessage::with_header`](crate::OwnedMessage::with_header)
    /// does: the first header of that name takes the new name and value,
    /// later ones are removed, and a new name is appended.
    pub fn with_header(self, name: &str, value: &str) -> Self {
        let out = &mut *self.out;
        let value = push_text(&mut out.edit_text, value);
        match find_edit(&out.edits, &out.edit_text, name) {
            Some(edit) => out.edits[edit].value = value,
            None => {
                let name = push_text(&mut out.edit_text, name);
                out.edits.push(HeaderEdit { name, value, replaces: None });
            }
        }
        self
    }

    /// Write the message to the output batch.
    pub fn finish(self) {
        let Output { batch, source, edits, edit_text } = self.out;
        let text = edit_text.as_str();
        let mut count = 0;
        for (index, (name, _)) in self.headers.headers().enumerate() {
            match find_edit(edits, text, name) {
                Some(edit) if edits[edit].replaces.is_none() => {
                    edits[edit].replaces = Some(index);
                    count += 1;
                }
                Some(_) => {} // a later duplicate of a replaced header
                None => count += 1,
            }
        }
        count += edits.iter().filter(|edit| edit.replaces.is_none()).count();
        let edits = &*edits;
        let kept = self.headers.headers().enumerate().filter_map(|(index, (name, value))| {
            match find_edit(edits, text, name) {
                None => Some((name, value)),
                Some(edit) if edits[edit].replaces == Some(index) => Some(edit_pair(text, &edits[edit])),
                Some(_) => None,
            }
        });
        let added = edits.iter().filter(|edit| edit.replaces.is_none()).map(|edit| edit_pair(text, edit));
        let headers = Counted { inner: kept.chain(added), len: count };
        let head = Head { id: self.id, source: *source, priority: self.priority, topic: self.topic };
        write_message(batch, &head, headers, Payload::Bytes(self.payload));
    }
}

fn find_edit(edits: &[HeaderEdit], text: &str, name: &str) -> Option<usize> {
    edits.iter().position(|edit| text[edit.name.clone()].eq_ignore_ascii_case(name))
}

fn push_text(text: &mut String, piece: &str) -> Range<usize> {
    let start = text.len();
    text.push_str(piece);
    start..text.len()
}

fn edit_pair<'t>(text: &'t str, edit: &HeaderEdit) -> (&'t str, &'t str) {
    (&text[edit.name.clone()], &text[edit.value.clone()])
}

/// An iterator whose length was counted beforehand.
struct Counted<I> {
    inner: I,
    len: usize,
}

impl<I: Iterator> Iterator for Counted<I> {
    type Item = I::Item;

    fn next(&mut self) -> Option<I::Item> {
        let item = self.inner.next()?;
        self.len -= 1;
        Some(item)
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        (self.len, Some(self.len))
    }
}

impl<I: Iterator> ExactSizeIterator for Counted<I> {}

#[cfg(test)]
mod tests {
    use switchyard_wire::decode;

    use super::*;

    #[test]
    fn emit_replaces_headers_in_place_drops_duplicates_and_appends_new_ones() {
        let mut input = Vec::new();
        let head = Head { id: 5, source: 0, priority: 2, topic: "in" };
        let headers = [("a", "1"), ("B", "2"), ("c", "3"), ("b", "4")];
        write_message(&mut input, &head, headers, Payload::Bytes(b"old"));
        let message = decode(&input).next().unwrap().unwrap();

        let mut out = Output::with_capacity(0);
        out.start(7);
        out.forward(&message);
        out.emit(&message)
            .with_header("b", "x")
            .with_header("new", "y")
            .with_header("b", "z")
            .with_topic("out")
            .with_payload(b"new")
            .with_priority(9)
            .finish();
        let batch = out.into_batch();
        let outputs: Vec<_> = decode(&batch).map(Result::unwrap).collect();

        assert_eq!(outputs[0].headers().collect::<Vec<_>>(), headers);
        let changed = &outputs[1];
        assert_eq!((changed.source, changed.id, changed.priority, changed.topic), (7, 5, 9, "out"));
        assert_eq!(changed.headers().collect::<Vec<_>>(), [("a", "1"), ("b", "z"), ("c", "3"), ("new", "y")]);
        assert_eq!(changed.payload, Some(&b"new"[..]));
    }
}
