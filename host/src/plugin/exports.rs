//! The contract's exports, as a call sees them: [`Guest`], one method per provider function.
//!
//! Why not bindgen's `ProviderPlugin`: it looks up and type-checks every export of the world at
//! each instantiation (some twenty functions with their records and variants), and instances
//! are per call, of which each uses one function. Measured, that check was ~5% of a provider
//! call's CPU. Here each export's index is found once per plugin, its signature is checked on
//! its first call, and later calls skip the check, as bindgen's own call wrappers do.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use wasmtime::component::{
    Component, ComponentExportIndex, ComponentNamedList, Instance, InstancePre, Lift, Lower,
    TypedFunc,
};
use wasmtime::Store;

use super::state::CallState;
use super::CONTRACT_EXPORT;
use crate::bindings::types::{
    Check, Endpoint, Error, ExecRequest, ExecResult, FileStat, OutputChunk, PluginInfo,
    ProcessInfo, Sandbox, SandboxRef, Spec,
};

/// One exported function: where it is, and whether its signature was checked.
struct Export {
    index: ComponentExportIndex,
    checked: AtomicBool,
}

impl Export {
    fn find(component: &Component, interface: &ComponentExportIndex, name: &str) -> Option<Export> {
        Some(Export {
            index: component.get_export_index(Some(interface), name)?,
            checked: AtomicBool::new(false),
        })
    }

    /// The export in `instance`, its signature checked unless an earlier call checked it.
    fn typed<P, R>(
        &self,
        instance: &Instance,
        store: &mut Store<CallState>,
    ) -> wasmtime::Result<TypedFunc<P, (R,)>>
    where
        P: ComponentNamedList + Lower,
        (R,): ComponentNamedList + Lift,
    {
        let func = instance
            .get_func(&mut *store, self.index)
            .ok_or_else(|| wasmtime::format_err!("the plugin does not export this function"))?;
        if self.checked.load(Ordering::Acquire) {
            // SAFETY: `func` is this export of an instance of the component `self` was made
            // from (the index carries the component's id and `get_func` verifies it), and
            // `Func::typed::<P, (R,)>` accepted this export before. The check depends only on
            // the component's types and on `P` and `R`, so it would pass again.
            return Ok(unsafe { TypedFunc::new_unchecked(func) });
        }
        let typed = func.typed::<P, (R,)>(&*store)?;
        self.checked.store(true, Ordering::Release);
        Ok(typed)
    }

    async fn call<P, R>(
        &self,
        instance: &Instance,
        store: &mut Store<CallState>,
        params: P,
    ) -> wasmtime::Result<R>
    where
        P: ComponentNamedList + Lower + Send + Sync,
        (R,): ComponentNamedList + Lift + Send + Sync + 'static,
    {
        let typed = self.typed::<P, R>(instance, store)?;
        Ok(typed.call_async(&mut *store, params).await?.0)
    }
}

/// Declares the exports: the index table and a `call_NAME` method per function, with the
/// parameter types bindgen would give it.
macro_rules! exports {
    ($($method:ident $field:ident $name:literal ($($arg:ident: $ty:ty),*) -> $ret:ty;)*) => {
        /// Where a plugin's component keeps each provider function.
        pub struct Exports {
            $($field: Export,)*
        }

        impl Exports {
            /// Finds every function of the contract's interface in `component`.
            pub fn new(component: &Component) -> Result<Exports, String> {
                let interface = component
                    .get_export_index(None, CONTRACT_EXPORT)
                    .ok_or_else(|| format!("does not export {CONTRACT_EXPORT}"))?;
                Ok(Exports {
                    $($field: Export::find(component, &interface, $name)
                        .ok_or_else(|| format!("{CONTRACT_EXPORT} lacks `{}`", $name))?,)*
                })
            }
        }

        impl Guest {
            /// Checks every function's signature (at load, so that a plugin whose exports do
            /// not match the contract is refused then rather than failing its first such call).
            pub fn check_all(&self, store: &mut Store<CallState>) -> wasmtime::Result<()> {
                $(
                    self.exports.$field.typed::<($($ty,)*), $ret>(&self.instance, store)
                        .map_err(|e| e.context(concat!("export `", $name, "`")))?;
                )*
                Ok(())
            }

            $(
                pub async fn $method(
                    &self,
                    store: &mut Store<CallState>,
                    $($arg: $ty),*
                ) -> wasmtime::Result<$ret> {
                    self.exports.$field.call(&self.instance, store, ($($arg,)*)).await
                }
            )*
        }
    };
}

exports! {
    call_describe describe "describe" () -> PluginInfo;
    call_preflight preflight "preflight" () -> Result<Vec<Check>, Error>;
    call_create create "create" (spec: &Spec, key: &str) -> Result<Sandbox, Error>;
    call_get get "get" (sandbox: &SandboxRef) -> Result<Sandbox, Error>;
    call_list list "list" (labels: &[(String, String)]) -> Result<Vec<Sandbox>, Error>;
    call_pause pause "pause" (sandbox: &SandboxRef) -> Result<(), Error>;
    call_resume resume "resume" (sandbox: &SandboxRef) -> Result<Sandbox, Error>;
    call_set_timeout set_timeout "set-timeout" (sandbox: &SandboxRef, seconds: u64)
        -> Result<(), Error>;
    call_destroy destroy "destroy" (sandbox: &SandboxRef) -> Result<(), Error>;
    call_exec exec "exec" (sandbox: &SandboxRef, request: &ExecRequest)
        -> Result<ExecResult, Error>;
    call_start_process start_process "start-process" (sandbox: &SandboxRef, request: &ExecRequest)
        -> Result<ProcessInfo, Error>;
    call_list_processes list_processes "list-processes" (sandbox: &SandboxRef)
        -> Result<Vec<ProcessInfo>, Error>;
    call_process_status process_status "process-status" (sandbox: &SandboxRef, pid: &str)
        -> Result<ProcessInfo, Error>;
    call_process_output process_output "process-output"
        (sandbox: &SandboxRef, pid: &str, stdout_offset: u64, stderr_offset: u64)
        -> Result<OutputChunk, Error>;
    call_signal_process signal_process "signal-process"
        (sandbox: &SandboxRef, pid: &str, signal: i32) -> Result<(), Error>;
    call_read_file read_file "read-file" (sandbox: &SandboxRef, path: &str)
        -> Result<Vec<u8>, Error>;
    call_write_file write_file "write-file"
        (sandbox: &SandboxRef, path: &str, data: &[u8], mode: Option<u32>) -> Result<(), Error>;
    call_list_dir list_dir "list-dir" (sandbox: &SandboxRef, path: &str)
        -> Result<Vec<FileStat>, Error>;
    call_stat stat "stat" (sandbox: &SandboxRef, path: &str) -> Result<FileStat, Error>;
    call_remove remove "remove" (sandbox: &SandboxRef, path: &str, recursive: bool)
        -> Result<(), Error>;
    call_mkdir mkdir "mkdir" (sandbox: &SandboxRef, path: &str, parents: bool)
        -> Result<(), Error>;
    call_port_url port_url "port-url" (sandbox: &SandboxRef, port: u16) -> Result<Endpoint, Error>;
}

/// One instance's provider functions, for the one call it serves.
pub struct Guest {
    instance: Instance,
    exports: Arc<Exports>,
}

/// A plugin ready to be instantiated: linked once, instantiated per call.
#[derive(Clone)]
pub struct GuestPre {
    pre: InstancePre<CallState>,
    exports: Arc<Exports>,
}

impl GuestPre {
    pub fn new(pre: InstancePre<CallState>) -> Result<GuestPre, String> {
        let exports = Arc::new(Exports::new(pre.component())?);
        Ok(GuestPre { pre, exports })
    }

    pub async fn instantiate(&self, store: &mut Store<CallState>) -> wasmtime::Result<Guest> {
        Ok(Guest {
            instance: self.pre.instantiate_async(store).await?,
            exports: self.exports.clone(),
        })
    }
}
