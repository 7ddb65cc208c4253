//! The sandbox every plugin instance runs in: one engine, an empty WASI context, and
//! only non-blocking host functions.
//!
//! Plugins are called synchronously on the proxy's worker threads, inside a Tokio
//! runtime. wasmtime-wasi's synchronous bindings run their blocking operations
//! (`blocking-write-and-flush`, `poll`, stream drops…) through `Handle::block_on`,
//! which panics inside a runtime. So `wasi:io` is linked here through [`NonBlocking`],
//! which completes those operations at once when they can (all streams a plugin can
//! reach — stdout and stderr — are always ready) and traps the plugin when it would
//! have to wait: a plugin may not sleep on a proxy thread.

use std::future::Future;
use std::pin::pin;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use std::time::Duration;
use wasmtime::Engine;
use wasmtime::component::{HasData, Linker, Resource, ResourceTable};
use wasmtime_wasi::cli::WasiCliView as _;
use wasmtime_wasi::clocks::WasiClocksView as _;
use wasmtime_wasi::filesystem::WasiFilesystemView as _;
use wasmtime_wasi::p2::bindings::sync::io::{poll as sync_poll, streams as sync_streams};
use wasmtime_wasi::p2::bindings::{cli, clocks, filesystem, random, sync as wasi_sync};
use wasmtime_wasi_io::bindings::wasi::io::poll::{
    Host as AsyncPoll, HostPollable as AsyncPollable,
};
use wasmtime_wasi_io::bindings::wasi::io::streams::{
    HostInputStream as AsyncInput, HostOutputStream as AsyncOutput,
};
use wasmtime_wasi_io::poll::DynPollable;
use wasmtime_wasi_io::streams::{DynInputStream, DynOutputStream, StreamError, StreamResult};

use super::state::PluginState;
use super::ticker::{CallInProgress, EPOCH_TICK, EpochTicker};
use super::virtual_world::VirtualWorld;

/// The one wasmtime engine of the process, with the epoch ticker that enforces call
/// deadlines.
#[derive(Clone)]
pub struct PluginEngine {
    engine: Engine,
    ticker: Arc<EpochTicker>,
    /// Set for the simulator: instances read simulated time and seeded randomness.
    virtual_world: Option<Arc<VirtualWorld>>,
}

impl std::fmt::Debug for PluginEngine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PluginEngine").finish_non_exhaustive()
    }
}

impl PluginEngine {
    /// Creates the engine and starts its epoch ticker thread.
    pub fn new() -> wasmtime::Result<Self> {
        PluginEngine::with_allocator(Allocator::OnDemand)
    }

    /// Creates the engine with the given instance allocator (see [`Allocator`]).
    pub fn with_allocator(allocator: Allocator) -> wasmtime::Result<Self> {
        let mut config = wasmtime::Config::new();
        config.wasm_component_model(true);
        // Deadlines by epoch: a counter check on loop back-edges, far cheaper than fuel.
        config.epoch_interruption(true);
        if let Allocator::Pooling {
            instances,
            memory_bytes,
        } = allocator
        {
            let mut pooling = wasmtime::PoolingAllocationConfig::new();
            pooling
                .total_component_instances(instances)
                .total_core_instances(instances * 4)
                .total_memories(instances * 2)
                .total_tables(instances * 4)
                .max_memory_size(usize::try_from(memory_bytes).unwrap_or(usize::MAX));
            config.allocation_strategy(wasmtime::InstanceAllocationStrategy::Pooling(pooling));
        }
        let engine = Engine::new(&config)?;
        let ticker = EpochTicker::start(engine.weak())
            .map_err(|e| wasmtime::format_err!("cannot start the epoch ticker thread: {e}"))?;
        Ok(PluginEngine {
            engine,
            ticker,
            virtual_world: None,
        })
    }

    /// The wasmtime engine.
    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    /// This engine with instances living in `world` (simulated time, seeded
    /// randomness), for the simulator.
    pub fn in_virtual_world(mut self, world: Arc<VirtualWorld>) -> Self {
        self.virtual_world = Some(world);
        self
    }

    /// The simulated world instances live in, if any.
    pub fn virtual_world(&self) -> Option<&VirtualWorld> {
        self.virtual_world.as_deref()
    }

    /// Keeps the epoch advancing while the returned guard lives: take it before setting
    /// a store's deadline and hold it for the call.
    pub fn call(&self) -> CallInProgress<'_> {
        self.ticker.call()
    }

    /// Time elapsed since `ticks()` read `since`, to a tick ([`EPOCH_TICK`]) while a
    /// call was running: a clock a call can read without a system call.
    pub fn ticks(&self) -> u64 {
        self.ticker.ticks()
    }

    /// The time `ticks` epoch ticks stand for.
    pub fn ticks_to_time(ticks: u64) -> Duration {
        EPOCH_TICK.saturating_mul(u32::try_from(ticks).unwrap_or(u32::MAX))
    }

    /// Epoch ticks to allow a call that may run for `budget`.
    pub fn deadline_ticks(budget: Duration) -> u64 {
        let ticks = budget.as_micros().div_ceil(EPOCH_TICK.as_micros());
        u64::try_from(ticks)
            .unwrap_or(u64::MAX / 2)
            .saturating_add(1)
    }
}

impl Drop for PluginEngine {
    fn drop(&mut self) {
        if Arc::strong_count(&self.ticker) == 2 {
            // The last engine handle; the other reference is the ticker thread's own.
            self.ticker.stop();
        }
    }
}

/// How instance memory is allocated.
///
/// On demand is the default. `cargo bench -p switchyard --bench select -- instantiate`
/// measured a fresh instance plus `init` at 41 µs on demand and 23 µs pooled (one run,
/// 2-core machine): pooling is 1.8× faster, but an instance is made only at load, at a
/// reload and after a trap — never per request — so the 18 µs do not show, while the
/// pool must be sized up front for the most instances (pools, routers, reload overlap)
/// and the largest memory limit any pool may set.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Allocator {
    /// `mmap` per instance.
    OnDemand,
    /// wasmtime's pooling allocator, sized for `instances` component instances of at
    /// most `memory_bytes` linear memory each.
    Pooling {
        /// Component instances the pool holds.
        instances: u32,
        /// Largest linear memory of one instance.
        memory_bytes: u64,
    },
}

/// Adds the WASI interfaces a plugin may import. Sockets are not linked at all: a
/// plugin that imports them is rejected at load, naming the import.
pub fn add_wasi(linker: &mut Linker<PluginState>) -> wasmtime::Result<()> {
    type T = PluginState;
    let l = linker;
    clocks::wall_clock::add_to_linker::<T, wasmtime_wasi::clocks::WasiClocks>(l, T::clocks)?;
    clocks::monotonic_clock::add_to_linker::<T, wasmtime_wasi::clocks::WasiClocks>(l, T::clocks)?;
    random::random::add_to_linker::<T, wasmtime_wasi::random::WasiRandom>(l, |t| t.wasi.random())?;
    random::insecure::add_to_linker::<T, wasmtime_wasi::random::WasiRandom>(l, |t| {
        t.wasi.random()
    })?;
    random::insecure_seed::add_to_linker::<T, wasmtime_wasi::random::WasiRandom>(l, |t| {
        t.wasi.random()
    })?;
    cli::exit::add_to_linker::<T, wasmtime_wasi::cli::WasiCli>(l, T::cli)?;
    cli::environment::add_to_linker::<T, wasmtime_wasi::cli::WasiCli>(l, T::cli)?;
    cli::stdin::add_to_linker::<T, wasmtime_wasi::cli::WasiCli>(l, T::cli)?;
    cli::stdout::add_to_linker::<T, wasmtime_wasi::cli::WasiCli>(l, T::cli)?;
    cli::stderr::add_to_linker::<T, wasmtime_wasi::cli::WasiCli>(l, T::cli)?;
    cli::terminal_input::add_to_linker::<T, wasmtime_wasi::cli::WasiCli>(l, T::cli)?;
    cli::terminal_output::add_to_linker::<T, wasmtime_wasi::cli::WasiCli>(l, T::cli)?;
    cli::terminal_stdin::add_to_linker::<T, wasmtime_wasi::cli::WasiCli>(l, T::cli)?;
    cli::terminal_stdout::add_to_linker::<T, wasmtime_wasi::cli::WasiCli>(l, T::cli)?;
    cli::terminal_stderr::add_to_linker::<T, wasmtime_wasi::cli::WasiCli>(l, T::cli)?;
    // No directory is preopened, so a plugin can name no file to open.
    filesystem::preopens::add_to_linker::<T, wasmtime_wasi::filesystem::WasiFilesystem>(
        l,
        T::filesystem,
    )?;
    wasi_sync::filesystem::types::add_to_linker::<T, wasmtime_wasi::filesystem::WasiFilesystem>(
        l,
        T::filesystem,
    )?;
    wasmtime_wasi_io::bindings::wasi::io::error::add_to_linker::<T, TableOnly>(l, |t| {
        &mut t.table
    })?;
    sync_poll::add_to_linker::<T, NonBlockingIo>(l, |t| NonBlocking(&mut t.table))?;
    sync_streams::add_to_linker::<T, NonBlockingIo>(l, |t| NonBlocking(&mut t.table))?;
    Ok(())
}

struct TableOnly;
impl HasData for TableOnly {
    type Data<'a> = &'a mut ResourceTable;
}

struct NonBlockingIo;
impl HasData for NonBlockingIo {
    type Data<'a> = NonBlocking<'a>;
}

/// `wasi:io` over the resource table, completing every operation without waiting.
struct NonBlocking<'a>(&'a mut ResourceTable);

/// Runs `future` to completion if it is ready on its first poll; otherwise the
/// plugin was about to wait, which it may not do on a proxy thread.
fn at_once<F: Future>(operation: &str, future: F) -> wasmtime::Result<F::Output> {
    let mut future = pin!(future);
    match future
        .as_mut()
        .poll(&mut Context::from_waker(Waker::noop()))
    {
        Poll::Ready(out) => Ok(out),
        Poll::Pending => Err(wasmtime::format_err!(
            "plugin tried to wait in `{operation}`; plugins must not sleep, poll or block"
        )),
    }
}

fn stream_at_once<T, F: Future<Output = StreamResult<T>>>(
    operation: &str,
    future: F,
) -> StreamResult<T> {
    at_once(operation, future).map_err(StreamError::Trap)?
}

impl sync_poll::Host for NonBlocking<'_> {
    fn poll(&mut self, pollables: Vec<Resource<DynPollable>>) -> wasmtime::Result<Vec<u32>> {
        at_once("wasi:io/poll.poll", AsyncPoll::poll(self.0, pollables))?
    }
}

impl sync_poll::HostPollable for NonBlocking<'_> {
    fn ready(&mut self, pollable: Resource<DynPollable>) -> wasmtime::Result<bool> {
        at_once("pollable.ready", AsyncPollable::ready(self.0, pollable))?
    }
    fn block(&mut self, pollable: Resource<DynPollable>) -> wasmtime::Result<()> {
        at_once("pollable.block", AsyncPollable::block(self.0, pollable))?
    }
    fn drop(&mut self, pollable: Resource<DynPollable>) -> wasmtime::Result<()> {
        wasmtime_wasi_io::bindings::wasi::io::poll::HostPollable::drop(self.0, pollable)
    }
}

impl sync_streams::Host for NonBlocking<'_> {
    fn convert_stream_error(
        &mut self,
        err: StreamError,
    ) -> wasmtime::Result<sync_streams::StreamError> {
        sync_streams::Host::convert_stream_error(self.0, err)
    }
}

impl sync_streams::HostOutputStream for NonBlocking<'_> {
    fn drop(&mut self, stream: Resource<DynOutputStream>) -> wasmtime::Result<()> {
        at_once("output-stream.drop", AsyncOutput::drop(self.0, stream))?
    }
    fn check_write(&mut self, stream: Resource<DynOutputStream>) -> StreamResult<u64> {
        AsyncOutput::check_write(self.0, stream)
    }
    fn write(&mut self, stream: Resource<DynOutputStream>, bytes: Vec<u8>) -> StreamResult<()> {
        AsyncOutput::write(self.0, stream, bytes)
    }
    fn blocking_write_and_flush(
        &mut self,
        stream: Resource<DynOutputStream>,
        bytes: Vec<u8>,
    ) -> StreamResult<()> {
        stream_at_once(
            "blocking-write-and-flush",
            AsyncOutput::blocking_write_and_flush(self.0, stream, bytes),
        )
    }
    fn blocking_write_zeroes_and_flush(
        &mut self,
        stream: Resource<DynOutputStream>,
        len: u64,
    ) -> StreamResult<()> {
        stream_at_once(
            "blocking-write-zeroes-and-flush",
            AsyncOutput::blocking_write_zeroes_and_flush(self.0, stream, len),
        )
    }
    fn subscribe(
        &mut self,
        stream: Resource<DynOutputStream>,
    ) -> wasmtime::Result<Resource<DynPollable>> {
        AsyncOutput::subscribe(self.0, stream)
    }
    fn write_zeroes(&mut self, stream: Resource<DynOutputStream>, len: u64) -> StreamResult<()> {
        AsyncOutput::write_zeroes(self.0, stream, len)
    }
    fn flush(&mut self, stream: Resource<DynOutputStream>) -> StreamResult<()> {
        AsyncOutput::flush(self.0, stream)
    }
    fn blocking_flush(&mut self, stream: Resource<DynOutputStream>) -> StreamResult<()> {
        stream_at_once(
            "blocking-flush",
            AsyncOutput::blocking_flush(self.0, stream),
        )
    }
    fn splice(
        &mut self,
        dst: Resource<DynOutputStream>,
        src: Resource<DynInputStream>,
        len: u64,
    ) -> StreamResult<u64> {
        AsyncOutput::splice(self.0, dst, src, len)
    }
    fn blocking_splice(
        &mut self,
        dst: Resource<DynOutputStream>,
        src: Resource<DynInputStream>,
        len: u64,
    ) -> StreamResult<u64> {
        stream_at_once(
            "blocking-splice",
            AsyncOutput::blocking_splice(self.0, dst, src, len),
        )
    }
}

impl sync_streams::HostInputStream for NonBlocking<'_> {
    fn drop(&mut self, stream: Resource<DynInputStream>) -> wasmtime::Result<()> {
        at_once("input-stream.drop", AsyncInput::drop(self.0, stream))?
    }
    fn read(&mut self, stream: Resource<DynInputStream>, len: u64) -> StreamResult<Vec<u8>> {
        AsyncInput::read(self.0, stream, len)
    }
    fn blocking_read(
        &mut self,
        stream: Resource<DynInputStream>,
        len: u64,
    ) -> StreamResult<Vec<u8>> {
        stream_at_once(
            "blocking-read",
            AsyncInput::blocking_read(self.0, stream, len),
        )
    }
    fn skip(&mut self, stream: Resource<DynInputStream>, len: u64) -> StreamResult<u64> {
        AsyncInput::skip(self.0, stream, len)
    }
    fn blocking_skip(&mut self, stream: Resource<DynInputStream>, len: u64) -> StreamResult<u64> {
        stream_at_once(
            "blocking-skip",
            AsyncInput::blocking_skip(self.0, stream, len),
        )
    }
    fn subscribe(
        &mut self,
        stream: Resource<DynInputStream>,
    ) -> wasmtime::Result<Resource<DynPollable>> {
        AsyncInput::subscribe(self.0, stream)
    }
}
