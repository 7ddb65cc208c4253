//! The epoch ticker: advances the engine's epoch every [`EPOCH_TICK`] so that a plugin
//! call past its deadline traps — but only while a call may be running. Waking 2,000
//! times a second costs a VM about 5 % of a core even when no request comes (measured:
//! 0.52 s of CPU in 10 idle seconds), so after [`PARK_AFTER`] without a call in progress
//! the ticker parks, and the next call wakes it.
//!
//! A call counts itself in `running` for as long as it runs ([`EpochTicker::call`]),
//! so the ticker never parks under a call, however long its budget: a looping plugin is
//! still interrupted on time.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::thread::Thread;
use std::time::Duration;
use wasmtime::EngineWeak;

/// How often the epoch advances. A call's deadline is a whole number of ticks, so a
/// call runs for at least its budget and at most one tick more.
pub const EPOCH_TICK: Duration = Duration::from_micros(500);

/// Idle time after which the ticker parks.
pub const PARK_AFTER: Duration = Duration::from_millis(50);

/// The ticker's state, shared by the calls and its thread.
#[derive(Debug, Default)]
pub struct EpochTicker {
    /// Plugin calls in progress.
    running: AtomicUsize,
    /// Epochs advanced so far: a coarse clock (one tick per [`EPOCH_TICK`] while a call
    /// runs) that costs a call nothing to read.
    ticks: AtomicU64,
    /// The ticker thread is parked (or about to be).
    parked: AtomicBool,
    stop: AtomicBool,
    thread: OnceLock<Thread>,
}

/// A plugin call in progress; keeps the ticker ticking until dropped.
#[derive(Debug)]
pub struct CallInProgress<'a>(&'a EpochTicker);

impl Drop for CallInProgress<'_> {
    fn drop(&mut self) {
        self.0.running.fetch_sub(1, Ordering::Release);
    }
}

impl EpochTicker {
    /// Ticks so far (see the field).
    pub fn ticks(&self) -> u64 {
        self.ticks.load(Ordering::Relaxed)
    }

    /// Starts the ticker thread for `engine`; it ends with the engine or [`Self::stop`].
    pub fn start(engine: EngineWeak) -> std::io::Result<Arc<Self>> {
        let ticker = Arc::new(EpochTicker::default());
        let state = Arc::clone(&ticker);
        let handle = std::thread::Builder::new()
            .name("switchyard-epoch".into())
            .spawn(move || state.run(&engine))?;
        let _ = ticker.thread.set(handle.thread().clone());
        Ok(ticker)
    }

    fn run(&self, engine: &EngineWeak) {
        let park_after = PARK_AFTER.as_micros() / EPOCH_TICK.as_micros();
        let mut idle_ticks = 0;
        while !self.stop.load(Ordering::Relaxed) {
            std::thread::sleep(EPOCH_TICK);
            match engine.upgrade() {
                Some(engine) => engine.increment_epoch(),
                None => return,
            }
            self.ticks.fetch_add(1, Ordering::Relaxed);
            if self.running.load(Ordering::Acquire) > 0 {
                idle_ticks = 0;
                continue;
            }
            idle_ticks += 1;
            if idle_ticks < park_after {
                continue;
            }
            // Paired with `call`: either the call sees `parked` and unparks this thread,
            // or this thread sees the call in `running` and does not park.
            self.parked.store(true, Ordering::SeqCst);
            if self.running.load(Ordering::SeqCst) == 0 {
                // The timeout only bounds a missed stop; calls unpark at once.
                std::thread::park_timeout(Duration::from_secs(5));
            }
            self.parked.store(false, Ordering::SeqCst);
            idle_ticks = 0;
        }
    }

    /// Marks a plugin call as running (wakes the ticker if it parked) until the
    /// returned guard is dropped. Call before setting the store's epoch deadline.
    pub fn call(&self) -> CallInProgress<'_> {
        self.running.fetch_add(1, Ordering::SeqCst);
        if self.parked.load(Ordering::SeqCst)
            && let Some(thread) = self.thread.get()
        {
            thread.unpark();
        }
        CallInProgress(self)
    }

    /// Ends the ticker thread.
    pub fn stop(&self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.get() {
            thread.unpark();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn epoch_advances(engine: &wasmtime::Engine, within: Duration) -> bool {
        // The epoch is not readable from outside; a store's deadline tells.
        let mut store = wasmtime::Store::new(engine, ());
        store.set_epoch_deadline(1);
        let deadline = std::time::Instant::now() + within;
        // (module (func (export "spin") (loop (br 0))))
        let wasm = [
            0x00, 0x61, 0x73, 0x6d, 0x01, 0x00, 0x00, 0x00, // magic, version
            0x01, 0x04, 0x01, 0x60, 0x00, 0x00, // type: () -> ()
            0x03, 0x02, 0x01, 0x00, // one function of that type
            0x07, 0x08, 0x01, 0x04, b's', b'p', b'i', b'n', 0x00, 0x00, // export "spin"
            0x0a, 0x09, 0x01, 0x07, 0x00, 0x03, 0x40, 0x0c, 0x00, 0x0b, 0x0b, // loop br 0
        ];
        let module = wasmtime::Module::new(engine, wasm).unwrap();
        let instance = wasmtime::Instance::new(&mut store, &module, &[]).unwrap();
        let spin = instance
            .get_typed_func::<(), ()>(&mut store, "spin")
            .unwrap();
        let trapped = spin.call(&mut store, ()).is_err();
        trapped && std::time::Instant::now() < deadline
    }

    #[test]
    fn parks_when_idle_and_a_call_wakes_it_in_time() {
        let mut config = wasmtime::Config::new();
        config.epoch_interruption(true);
        let engine = wasmtime::Engine::new(&config).unwrap();
        let ticker = EpochTicker::start(engine.weak()).unwrap();
        std::thread::sleep(PARK_AFTER * 4);
        assert!(
            ticker.parked.load(Ordering::SeqCst),
            "idle ticker did not park"
        );
        // A looping call started while parked is interrupted within a few ticks, not
        // when the parked ticker's 5 s timeout would have woken it.
        let call = ticker.call();
        assert!(epoch_advances(&engine, Duration::from_millis(200)));
        drop(call);
        ticker.stop();
    }
}
