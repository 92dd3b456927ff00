//! The epoch ticker: a thread that advances the engine's epoch every
//! [`EPOCH_TICK`] while plugin code may run, so that call deadlines fire.
//! Once no call has been under way for [`REST_AFTER`] it rests (no wake-ups
//! at all on an idle host) until the next call wakes it.
//!
//! A call marks itself under way in its store's own flag, then looks whether
//! the ticker rests; the ticker says it rests, then looks at every flag. Both
//! sides store, then load, in one sequentially consistent order, so at least
//! one sees the other: a call never runs on a ticker that sleeps through it.

use super::engine::{EPOCH_TICK, PluginEngine};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::thread::Thread;
use std::time::{Duration, Instant};
use wasmtime::EngineWeak;

/// How long the ticker goes on after the last call it saw under way.
pub(crate) const REST_AFTER: Duration = Duration::from_secs(1);

/// Ticks a call runs at most between two looks at when it must end (see [`end_calls_on_time`]):
/// a call the engine [cut](PluginEngine::cut_calls) ends within as long.
pub(crate) const CUT_CHECK_TICKS: u64 = 10;

/// The ticker thread of one engine; stops when dropped.
pub(crate) struct EpochTicker {
    shared: Arc<Shared>,
    thread: Thread,
}

struct Shared {
    /// Set by the ticker before it looks at the calls' flags and rests.
    resting: AtomicBool,
    stop: AtomicBool,
    /// One flag per store, set while it runs plugin code.
    calls: Mutex<Vec<Weak<AtomicBool>>>,
}

/// A store's mark that its plugin code runs; see [`CallMark::during`].
pub(crate) struct CallMark {
    calling: Arc<AtomicBool>,
    shared: Arc<Shared>,
    ticker: Thread,
}

impl EpochTicker {
    /// Start ticking `engine`'s epoch; the thread ends when the engine is
    /// dropped or this is.
    pub(crate) fn start(engine: EngineWeak) -> std::io::Result<EpochTicker> {
        let shared = Arc::new(Shared {
            resting: AtomicBool::new(false),
            stop: AtomicBool::new(false),
            calls: Mutex::default(),
        });
        let ticking = shared.clone();
        let thread = std::thread::Builder::new()
            .name("switchyard-epoch".into())
            .spawn(move || ticking.tick(&engine))?
            .thread()
            .clone();
        Ok(EpochTicker { shared, thread })
    }

    /// A new store's mark, known to the ticker.
    pub(crate) fn mark(&self) -> CallMark {
        let calling = Arc::new(AtomicBool::new(false));
        let mut calls = self.shared.calls.lock().unwrap_or_else(|poison| poison.into_inner());
        calls.retain(|call| call.strong_count() > 0);
        calls.push(Arc::downgrade(&calling));
        CallMark { calling, shared: self.shared.clone(), ticker: self.thread.clone() }
    }

    /// Whether the ticker rests (or is about to).
    #[cfg(test)]
    fn resting(&self) -> bool {
        self.shared.resting.load(Ordering::SeqCst)
    }
}

impl Drop for EpochTicker {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        self.thread.unpark();
    }
}

impl Shared {
    fn tick(&self, engine: &EngineWeak) {
        let mut clock = TickClock::new(Instant::now());
        let mut rest_at = Instant::now() + REST_AFTER;
        loop {
            // Parked until the next tick is due: an early return (an unpark
            // meant for a rest) must not make an early tick, which would cut
            // calls short.
            let next = clock.next_due();
            while let Some(left) = next.checked_duration_since(Instant::now()).filter(|left| !left.is_zero())
            {
                std::thread::park_timeout(left);
                if self.stop.load(Ordering::SeqCst) {
                    return;
                }
            }
            match engine.upgrade() {
                Some(engine) => (0..clock.due(Instant::now())).for_each(|_| engine.increment_epoch()),
                None => return,
            }
            if Instant::now() < rest_at {
                continue;
            }
            if self.rest() {
                return;
            }
            clock = TickClock::new(Instant::now());
            rest_at = Instant::now() + REST_AFTER;
        }
    }

    /// Rest while no call is under way; `true` when told to stop.
    fn rest(&self) -> bool {
        self.resting.store(true, Ordering::SeqCst);
        while !self.any_calling() {
            std::thread::park();
            if self.stop.load(Ordering::SeqCst) {
                return true;
            }
        }
        self.resting.store(false, Ordering::SeqCst);
        false
    }

    fn any_calling(&self) -> bool {
        let calls = self.calls.lock().unwrap_or_else(|poison| poison.into_inner());
        calls.iter().any(|call| call.upgrade().is_some_and(|calling| calling.load(Ordering::SeqCst)))
    }
}

/// When the epoch's ticks are due: one every [`EPOCH_TICK`] of the clock since the ticker woke,
/// however late its thread runs. A thread woken late (a loaded machine) makes up the ticks it
/// missed at once, so that a deadline of N ticks passes after N ticks of real time, not N of
/// the thread's wake-ups, each late by the scheduler's delay (a 3 s deadline took 4–5 s with
/// both cores busy).
struct TickClock {
    started: Instant,
    ticked: u32,
}

impl TickClock {
    fn new(started: Instant) -> TickClock {
        TickClock { started, ticked: 0 }
    }

    /// When the next tick is due.
    fn next_due(&self) -> Instant {
        self.started + EPOCH_TICK * (self.ticked + 1)
    }

    /// How many ticks to make at `now`: those due by then and not made yet.
    fn due(&mut self, now: Instant) -> u32 {
        let elapsed = now.saturating_duration_since(self.started);
        let by_now = u32::try_from(elapsed.as_micros() / EPOCH_TICK.as_micros()).unwrap_or(u32::MAX);
        let due = by_now.saturating_sub(self.ticked);
        self.ticked = by_now.max(self.ticked);
        due
    }
}

/// Have `store`'s calls end when the epoch reaches their deadline and `ends_at` (when the call must
/// end by the clock) has passed, and wait on for the ticks left when it has not. The ticker makes
/// the ticks it was late for at once, those that fell due before a call began too, and counting
/// them against the call cut it short by the ticker's delay (a 20 ms deadline ended a call after
/// 1 ms when the ticker ran 40 ms late). It looks again at least every [`CUT_CHECK_TICKS`] ticks:
/// a call whose `ends_at` became `None` (cut) ends within as long.
pub(crate) fn end_calls_on_time<T: 'static>(
    store: &mut wasmtime::Store<T>,
    ends_at: fn(&T) -> Option<Instant>,
) {
    store.epoch_deadline_callback(move |store| {
        let left = ends_at(store.data()).and_then(|at| at.checked_duration_since(Instant::now()));
        Ok(match left.filter(|left| !left.is_zero()) {
            Some(left) => {
                wasmtime::UpdateDeadline::Continue(PluginEngine::deadline_ticks(left).min(CUT_CHECK_TICKS))
            }
            None => wasmtime::UpdateDeadline::Interrupt,
        })
    });
}

impl CallMark {
    /// Run `call` (plugin code) marked as under way, waking the ticker first
    /// if it rests.
    pub(crate) fn during<R>(&self, call: impl FnOnce() -> R) -> R {
        struct Unmark<'m>(&'m AtomicBool);
        impl Drop for Unmark<'_> {
            fn drop(&mut self) {
                self.0.store(false, Ordering::Release);
            }
        }
        self.calling.store(true, Ordering::SeqCst);
        let _unmark = Unmark(&self.calling);
        if self.shared.resting.load(Ordering::SeqCst) {
            self.ticker.unpark();
        }
        call()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use wasmtime::{Config, Engine, Linker, Module, Store, Trap};

    fn wait_until(what: &str, done: impl Fn() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(60);
        while !done() {
            assert!(Instant::now() < deadline, "timed out (safety net) waiting until {what}");
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Run a spinning call under `mark` with a deadline `ticks` away, ended
    /// on time as the host ends its calls ([`end_calls_on_time`]: ticks a late
    /// ticker makes up at once, due before the call began, do not cut it); how
    /// long it took to be cut.
    fn spin(engine: &Engine, mark: CallMark, ticks: u64) -> Duration {
        let module = Module::new(engine, r#"(module (func (export "spin") (loop (br 0))))"#).unwrap();
        let mut store = Store::new(engine, None);
        end_calls_on_time(&mut store, |ends_at: &Option<Instant>| *ends_at);
        let spin = Linker::new(engine).instantiate(&mut store, &module).unwrap();
        let spin = spin.get_typed_func::<(), ()>(&mut store, "spin").unwrap();
        let started = Instant::now();
        *store.data_mut() = Some(started + EPOCH_TICK * ticks as u32);
        store.set_epoch_deadline(ticks);
        let (done, ended) = std::sync::mpsc::channel();
        std::thread::spawn(move || done.send(mark.during(|| spin.call(&mut store, ())).unwrap_err()));
        let Ok(error) = ended.recv_timeout(Duration::from_secs(60)) else {
            // Safety net: end the spin before failing.
            (0..ticks).for_each(|_| engine.increment_epoch());
            panic!("the call was never cut: the ticker rested under it");
        };
        assert_eq!(error.downcast_ref::<Trap>(), Some(&Trap::Interrupt));
        started.elapsed()
    }

    #[test]
    fn a_spinning_call_that_starts_while_the_ticker_rests_is_still_cut_at_its_deadline() {
        let engine = Engine::new(Config::new().epoch_interruption(true)).unwrap();
        let ticker = EpochTicker::start(engine.weak()).unwrap();
        wait_until("the idle ticker rests", || ticker.resting());
        spin(&engine, ticker.mark(), 3);
        // It rests again once idle.
        wait_until("the ticker rests again", || ticker.resting());
    }

    #[test]
    fn the_ticker_ticks_on_through_a_call_longer_than_its_rest_period() {
        let engine = Engine::new(Config::new().epoch_interruption(true)).unwrap();
        let ticker = EpochTicker::start(engine.weak()).unwrap();
        let ticks = (2 * REST_AFTER).as_millis().div_ceil(EPOCH_TICK.as_millis()) as u64;
        let took = spin(&engine, ticker.mark(), ticks);
        assert!(took >= 2 * REST_AFTER - EPOCH_TICK, "not cut early: {took:?}");
    }

    #[test]
    fn a_ticker_woken_late_makes_up_the_ticks_it_missed_and_never_ticks_early() {
        let started = Instant::now();
        let mut clock = TickClock::new(started);
        assert_eq!(clock.next_due(), started + EPOCH_TICK);
        assert_eq!(clock.due(started + EPOCH_TICK / 2), 0, "no tick before one is due");
        assert_eq!(clock.due(started + EPOCH_TICK), 1);
        // Woken 3.5 ticks late: the three missed are made at once, and the next is due on time.
        assert_eq!(clock.due(started + EPOCH_TICK * 9 / 2), 3);
        assert_eq!(clock.next_due(), started + EPOCH_TICK * 5);
        assert_eq!(clock.due(started + EPOCH_TICK * 9 / 2), 0, "none twice");
        assert_eq!(clock.due(started + EPOCH_TICK * 5), 1);
    }

    #[test]
    fn ticks_a_late_ticker_makes_up_do_not_end_a_call_before_its_time() {
        // The ticker, late, makes at once the ticks that fell due before the call began: they took
        // the epoch past the call's deadline as soon as it ran.
        let engine = Engine::new(Config::new().epoch_interruption(true)).unwrap();
        let module = r#"(module (import "" "began" (func $began))
                          (func (export "spin") (call $began) (loop (br 0))))"#;
        let module = Module::new(&engine, module).unwrap();
        let timeout = EPOCH_TICK * 20;
        let mut store = Store::new(&engine, None);
        end_calls_on_time(&mut store, |ends_at: &Option<Instant>| *ends_at);
        let (began, running) = std::sync::mpsc::channel();
        let mut linker = Linker::new(&engine);
        linker.func_wrap("", "began", move || began.send(()).unwrap()).unwrap();
        let spin = linker.instantiate(&mut store, &module).unwrap();
        let spin = spin.get_typed_func::<(), ()>(&mut store, "spin").unwrap();
        let started = Instant::now();
        *store.data_mut() = Some(started + timeout);
        store.set_epoch_deadline(PluginEngine::deadline_ticks(timeout));
        let (done, ended) = std::sync::mpsc::channel();
        std::thread::spawn(move || done.send((spin.call(&mut store, ()).unwrap_err(), started.elapsed())));
        running.recv_timeout(Duration::from_secs(60)).expect("the call began (safety net)");
        (0..2 * PluginEngine::deadline_ticks(timeout)).for_each(|_| engine.increment_epoch());
        // Then on time, as the ticker goes on, until the call ends.
        let (error, took) = loop {
            match ended.recv_timeout(EPOCH_TICK) {
                Ok(ended) => break ended,
                Err(_) => engine.increment_epoch(),
            }
        };
        assert_eq!(error.downcast_ref::<Trap>(), Some(&Trap::Interrupt));
        assert!(took >= timeout, "ended after {took:?}, before its {timeout:?}");
    }

    #[test]
    fn the_ticker_thread_ends_with_its_ticker_even_while_it_rests() {
        let engine = Engine::new(Config::new().epoch_interruption(true)).unwrap();
        let ticker = EpochTicker::start(engine.weak()).unwrap();
        wait_until("the idle ticker rests", || ticker.resting());
        let shared = Arc::downgrade(&ticker.shared);
        drop(ticker);
        wait_until("the thread ended", || shared.strong_count() == 0);
    }
}
