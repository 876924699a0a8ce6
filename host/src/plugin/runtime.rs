//! The one wasmtime Engine, its epoch ticker, and the Linker every plugin is instantiated with.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use wasmtime::component::{HasSelf, Linker};
use wasmtime::{Engine, InstanceAllocationStrategy, PoolingAllocationConfig};
use wasmtime_wasi::cli::{WasiCli, WasiCliView};
use wasmtime_wasi::random::{WasiRandom, WasiRandomView};

use super::executor::CallExecutor;
use super::state::CallState;

/// One epoch tick. The CPU budget of a call is counted in ticks spent executing wasm.
pub const TICK: Duration = Duration::from_millis(10);

/// Engine options.
#[derive(Clone, Debug)]
pub struct EngineOptions {
    /// Use the pooling instance allocator (default): instances reuse pre-reserved slots whose
    /// touched memory stays resident, so a call pays neither mmap/munmap nor page faults.
    /// Off, each instance maps fresh memory. Falls back to off when the address space for
    /// the pool cannot be reserved (e.g. under `ulimit -v`).
    pub pooling: bool,
    /// Threads plugin calls run on (see [`CallExecutor`]); 0: the cores, at most 4.
    pub call_threads: usize,
}

impl Default for EngineOptions {
    fn default() -> Self {
        EngineOptions {
            pooling: true,
            call_threads: 0,
        }
    }
}

pub struct Runtime {
    pub engine: Engine,
    pub linker: Linker<CallState>,
    pub calls: CallExecutor,
    pub ticker: Ticker,
}

impl Drop for Runtime {
    fn drop(&mut self) {
        self.ticker.stop();
    }
}

impl Runtime {
    pub fn new(opts: &EngineOptions) -> wasmtime::Result<Runtime> {
        let engine = match opts.pooling {
            true => Engine::new(&config(true)).or_else(|e| {
                tracing::warn!(
                    "the pooling allocator is unavailable ({e:#}); instances map their own memory"
                );
                Engine::new(&config(false))
            })?,
            false => Engine::new(&config(false))?,
        };
        let linker = build_linker(&engine)?;
        let ticker = Ticker::spawn(engine.clone());
        let threads = match opts.call_threads {
            0 => super::executor::default_threads(),
            n => n,
        };
        Ok(Runtime {
            engine,
            linker,
            calls: CallExecutor::new(threads)?,
            ticker,
        })
    }

    /// Identifies compiled artifacts this engine can load (for the compile cache key).
    pub fn fingerprint(&self) -> String {
        use std::hash::{Hash, Hasher};
        let mut h = std::collections::hash_map::DefaultHasher::new();
        self.engine.precompile_compatibility_hash().hash(&mut h);
        env!("CARGO_PKG_VERSION").hash(&mut h);
        format!("{:016x}", h.finish())
    }
}

/// Ticks without a call in flight after which the ticker sleeps until the next call.
const IDLE_TICKS: u32 = 100;

/// Advances the engine's epoch every [`TICK`] while calls run, which is what stops a plugin
/// that computes past its CPU budget and makes a busy one yield. An idle host does not wake
/// up a hundred times a second for nothing: after [`IDLE_TICKS`] without a call the thread
/// parks, and the next call wakes it.
pub struct Ticker {
    shared: Arc<TickerState>,
    thread: std::thread::Thread,
}

#[derive(Default)]
struct TickerState {
    busy: AtomicUsize,
    parked: AtomicBool,
    stop: AtomicBool,
    /// Times the thread parked (for tests).
    parks: AtomicUsize,
}

/// A call in flight: keeps the ticker awake until dropped.
pub struct Awake<'a>(&'a Ticker);

impl Drop for Awake<'_> {
    fn drop(&mut self) {
        self.0.shared.busy.fetch_sub(1, Ordering::SeqCst);
    }
}

impl Ticker {
    fn spawn(engine: Engine) -> Ticker {
        let shared = Arc::new(TickerState::default());
        let s = shared.clone();
        let thread = std::thread::Builder::new()
            .name("wasm-epoch".into())
            .spawn(move || {
                let mut idle = 0;
                while !s.stop.load(Ordering::Relaxed) {
                    if s.busy.load(Ordering::SeqCst) > 0 {
                        idle = 0;
                    } else if idle >= IDLE_TICKS {
                        // Announce the park, then look again: a call starting meanwhile
                        // either is seen here or sees `parked` and unparks (SeqCst both ways;
                        // an unpark before the park makes the park return at once).
                        s.parked.store(true, Ordering::SeqCst);
                        if s.busy.load(Ordering::SeqCst) == 0 && !s.stop.load(Ordering::SeqCst) {
                            s.parks.fetch_add(1, Ordering::Relaxed);
                            std::thread::park();
                        }
                        s.parked.store(false, Ordering::SeqCst);
                        idle = 0;
                        continue;
                    } else {
                        idle += 1;
                    }
                    std::thread::sleep(TICK);
                    engine.increment_epoch();
                }
            })
            .expect("spawn epoch thread");
        Ticker {
            shared,
            thread: thread.thread().clone(),
        }
    }

    /// Marks a call in flight (wakes the ticker if it sleeps) until the guard is dropped.
    pub fn awake(&self) -> Awake<'_> {
        self.shared.busy.fetch_add(1, Ordering::SeqCst);
        if self.shared.parked.load(Ordering::SeqCst) {
            self.thread.unpark();
        }
        Awake(self)
    }

    /// How many times the ticker went to sleep for want of calls.
    pub fn parks(&self) -> usize {
        self.shared.parks.load(Ordering::Relaxed)
    }

    fn stop(&self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        self.thread.unpark();
    }
}

fn config(pooling: bool) -> wasmtime::Config {
    let mut cfg = wasmtime::Config::new();
    cfg.wasm_component_model(true);
    cfg.epoch_interruption(true);
    if pooling {
        let mut pool = PoolingAllocationConfig::default();
        // A Rust plugin component holds a few core instances (the module plus adapter
        // shims); size the pool for ~2,000 concurrent calls.
        pool.total_component_instances(2048);
        pool.total_core_instances(8192);
        pool.total_memories(4096);
        pool.total_tables(8192);
        pool.max_memory_size(1 << 30);
        // A freed slot keeps up to this much of what the call touched, zeroed in place (only
        // the dirty pages, found with PAGEMAP_SCAN where the kernel has it), so the next call
        // takes no page faults for it; beyond, memory goes back to the kernel.
        pool.linear_memory_keep_resident(2 << 20);
        pool.table_keep_resident(64 << 10);
        pool.async_stack_keep_resident(256 << 10);
        pool.pagemap_scan(wasmtime::Enabled::Auto);
        cfg.allocation_strategy(InstanceAllocationStrategy::Pooling(pool));
    }
    cfg
}

/// Links what the world imports and nothing else: no filesystem, no sockets. The wasi:cli
/// interfaces Rust's std pulls in are linked inert (empty env and args, stdio to the log).
fn build_linker(engine: &Engine) -> wasmtime::Result<Linker<CallState>> {
    use wasmtime_wasi::p2::bindings::{cli, random};
    let mut l = Linker::new(engine);
    wasmtime_wasi::p2::add_to_linker_proxy_interfaces_async(&mut l)?;
    cli::environment::add_to_linker::<CallState, WasiCli>(&mut l, |t| t.cli())?;
    cli::exit::add_to_linker::<CallState, WasiCli>(&mut l, |t| t.cli())?;
    cli::terminal_input::add_to_linker::<CallState, WasiCli>(&mut l, |t| t.cli())?;
    cli::terminal_output::add_to_linker::<CallState, WasiCli>(&mut l, |t| t.cli())?;
    cli::terminal_stdin::add_to_linker::<CallState, WasiCli>(&mut l, |t| t.cli())?;
    cli::terminal_stdout::add_to_linker::<CallState, WasiCli>(&mut l, |t| t.cli())?;
    cli::terminal_stderr::add_to_linker::<CallState, WasiCli>(&mut l, |t| t.cli())?;
    random::insecure::add_to_linker::<CallState, WasiRandom>(&mut l, |t| t.random())?;
    random::insecure_seed::add_to_linker::<CallState, WasiRandom>(&mut l, |t| t.random())?;
    wasmtime_wasi_http::p2::add_only_http_to_linker_async(&mut l)?;
    crate::bindings::sandbox::provider::host::add_to_linker::<CallState, HasSelf<CallState>>(
        &mut l,
        |s| s,
    )?;
    crate::bindings::sandbox::provider::types::add_to_linker::<CallState, HasSelf<CallState>>(
        &mut l,
        |s| s,
    )?;
    Ok(l)
}
