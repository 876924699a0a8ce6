//! The one wasmtime Engine, its epoch ticker, and the Linker every plugin is instantiated with.

use std::sync::atomic::{AtomicBool, Ordering};
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
    stop: Arc<AtomicBool>,
}

impl Drop for Runtime {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
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
        let stop = Arc::new(AtomicBool::new(false));
        spawn_ticker(engine.clone(), stop.clone());
        let threads = match opts.call_threads {
            0 => super::executor::default_threads(),
            n => n,
        };
        Ok(Runtime {
            engine,
            linker,
            calls: CallExecutor::new(threads)?,
            stop,
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

fn spawn_ticker(engine: Engine, stop: Arc<AtomicBool>) {
    std::thread::Builder::new()
        .name("wasm-epoch".into())
        .spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                std::thread::sleep(TICK);
                engine.increment_epoch();
            }
        })
        .expect("spawn epoch thread");
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
