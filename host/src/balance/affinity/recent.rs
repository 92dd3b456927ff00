//! The streams of a [`StreamTable`] seen last, for a look at the table: chosen in one pass, without
//! sorting the table, so that the caller sorts and formats them without holding it.

use std::cmp::Ordering;
use std::collections::BinaryHeap;
use std::sync::Arc;

use super::table::{Stream, StreamTable};

/// A stream [`StreamTable::most_recent`] chose: its key and a copy of what the table holds of it.
/// Ordered as a look at the table lists streams: the most recently seen first, then by key.
#[derive(Clone, Debug)]
pub struct RecentStream {
    /// The stream's key.
    pub key: Arc<str>,
    /// The stream as the table held it.
    pub stream: Stream,
}

/// The order streams are listed in: the most recently seen first, then by key.
fn listing_order(a: (&str, &Stream), b: (&str, &Stream)) -> Ordering {
    b.1.last_seen.cmp(&a.1.last_seen).then_with(|| a.0.cmp(b.0))
}

impl Ord for RecentStream {
    fn cmp(&self, other: &RecentStream) -> Ordering {
        listing_order((&self.key, &self.stream), (&other.key, &other.stream))
    }
}

impl PartialOrd for RecentStream {
    fn partial_cmp(&self, other: &RecentStream) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl PartialEq for RecentStream {
    fn eq(&self, other: &RecentStream) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}

impl Eq for RecentStream {}

impl StreamTable {
    /// The `limit` streams seen last, as a heap whose greatest is the one of them seen first:
    /// `into_sorted_vec` lists them the most recently seen first (then by key). One pass over the
    /// table, O(n log `limit`), copying only the streams kept (a key is shared, not copied).
    pub fn most_recent(&self, limit: usize) -> BinaryHeap<RecentStream> {
        let mut kept = BinaryHeap::with_capacity(limit.min(self.streams.len()));
        if limit == 0 {
            return kept;
        }
        for (key, stream) in &self.streams {
            let recent = || RecentStream { key: key.clone(), stream: stream.clone() };
            if kept.len() < limit {
                kept.push(recent());
            } else if let Some(mut last) = kept.peek_mut()
                && listing_order((key, stream), (&last.key, &last.stream)) == Ordering::Less
            {
                *last = recent();
            }
        }
        kept
    }
}
