//! Slots: a limit on work in flight that the instances a reload builds of a destination share,
//! resized to the newest instance's setting while work holds slots, so that the limit holds over
//! all of them together (a destination's `queue.max_in_flight`, an endpoint's `pool.max_size`).

use std::sync::{Arc, Mutex};
use tokio::sync::Semaphore;

/// Slots of a resizable limit: a semaphore with one permit per free slot.
#[derive(Debug)]
pub(crate) struct Slots {
    free: Semaphore,
    size: Mutex<Size>,
}

/// The limit, and the slots held beyond it.
#[derive(Debug)]
struct Size {
    limit: usize,
    /// Slots held now that a shrink took away: each is given up, not freed, when it is released,
    /// until none is owed.
    owed: usize,
}

impl Slots {
    /// `limit` slots, all free.
    pub(crate) fn new(limit: usize) -> Arc<Slots> {
        Arc::new(Slots { free: Semaphore::new(limit), size: Mutex::new(Size { limit, owed: 0 }) })
    }

    /// Hold at most `limit` slots from now on: a larger limit frees more slots at once; a smaller
    /// one takes free slots away now and held ones as they are released.
    pub(crate) fn resize(&self, limit: usize) {
        let mut size = self.lock();
        if limit >= size.limit {
            let grown = limit - size.limit;
            let repaid = grown.min(size.owed);
            size.owed -= repaid;
            self.free.add_permits(grown - repaid);
        } else {
            let cut = size.limit - limit;
            size.owed += cut - self.free.forget_permits(cut);
        }
        size.limit = limit;
    }

    /// A slot, once one is free.
    pub(crate) async fn acquire(self: &Arc<Self>) -> Slot {
        self.free.acquire().await.expect("never closed").forget();
        Slot(self.clone())
    }

    /// A slot, if one is free now.
    pub(crate) fn try_acquire(self: &Arc<Self>) -> Option<Slot> {
        self.free.try_acquire().ok().map(|permit| {
            permit.forget();
            Slot(self.clone())
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Size> {
        self.size.lock().unwrap_or_else(|poison| poison.into_inner())
    }
}

/// One slot held; released when dropped (given up instead while a shrink is owed slots).
#[derive(Debug)]
pub(crate) struct Slot(Arc<Slots>);

impl Drop for Slot {
    fn drop(&mut self) {
        // Under the lock, so that a shrink sees it either held or free.
        let mut size = self.0.lock();
        match size.owed {
            0 => self.0.free.add_permits(1),
            _ => size.owed -= 1,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_shrink_takes_held_slots_as_they_are_released_and_a_growth_frees_more() {
        let slots = Slots::new(3);
        let mut held: Vec<Slot> = (0..3).map(|_| slots.try_acquire().unwrap()).collect();
        slots.resize(1);
        held.truncate(1);
        assert!(slots.try_acquire().is_none(), "two released, one held: the limit");
        held.clear();
        let one = slots.try_acquire().expect("none held");
        assert!(slots.try_acquire().is_none(), "a limit of one");
        slots.resize(3);
        let more: Vec<Slot> = (0..2).map(|_| slots.try_acquire().unwrap()).collect();
        assert!(slots.try_acquire().is_none(), "three held: {one:?}, {more:?}");
    }

    #[test]
    fn a_shrink_while_held_then_a_growth_before_they_are_released_owes_nothing() {
        let slots = Slots::new(2);
        let held: Vec<Slot> = (0..2).map(|_| slots.try_acquire().unwrap()).collect();
        slots.resize(1);
        slots.resize(4);
        drop(held);
        let all: Vec<Slot> = (0..4).map(|_| slots.try_acquire().unwrap()).collect();
        assert!(slots.try_acquire().is_none(), "{} held", all.len());
    }
}
