//! Where plugin calls run: a few threads, each driving a current-thread Tokio runtime, a plugin
//! pinned to one of them.
//!
//! Why: a call is one wasm instance plus the tasks wasi:http spawns for each request and the
//! pooled connection's own task. On the embedder's multi-thread runtime those tasks land on
//! different workers, and every hand-over between them is a futex wake and a context switch;
//! measured, that was a third of a provider call's CPU. On one thread they hand over in place,
//! and only the call's start and its result cross threads. Calls of different plugins still
//! run in parallel (one thread each, up to the thread count); a plugin that computes instead of
//! waiting still yields every epoch tick, so it cannot starve the others on its thread.

use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};

use tokio::runtime::Handle;
use tokio::sync::oneshot;

pub struct CallExecutor {
    threads: Vec<Handle>,
    /// Dropping these ends the threads (and cancels what still runs there).
    _stops: Vec<oneshot::Sender<()>>,
    next: AtomicUsize,
}

impl CallExecutor {
    /// `threads` threads (at least one).
    pub fn new(threads: usize) -> std::io::Result<CallExecutor> {
        let mut handles = Vec::new();
        let mut stops = Vec::new();
        for i in 0..threads.max(1) {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            handles.push(rt.handle().clone());
            let (stop, stopped) = oneshot::channel::<()>();
            stops.push(stop);
            std::thread::Builder::new()
                .name(format!("plugin-calls-{i}"))
                .spawn(move || {
                    let _ = rt.block_on(stopped);
                    // Whatever is still running is cancelled here, not awaited.
                    rt.shutdown_background();
                })?;
        }
        Ok(CallExecutor {
            threads: handles,
            _stops: stops,
            next: AtomicUsize::new(0),
        })
    }

    /// A thread for a newly loaded plugin (round-robin).
    pub fn assign(&self) -> usize {
        self.next.fetch_add(1, Ordering::Relaxed) % self.threads.len()
    }

    /// Runs `call` on thread `slot`; cancelled when the returned future is dropped.
    pub async fn run<F>(&self, slot: usize, call: F) -> Option<F::Output>
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        let task = self.threads[slot % self.threads.len()].spawn(call);
        let guard = AbortOnDrop(task.abort_handle());
        let out = task.await.ok();
        drop(guard);
        out
    }
}

struct AbortOnDrop(tokio::task::AbortHandle);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// The default thread count: the machine's cores, at most 4 (calls mostly wait on the network).
pub fn default_threads() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get().min(4))
}
