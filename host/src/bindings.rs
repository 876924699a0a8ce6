//! Host bindings of the `sandbox:provider` world. Only the `bindgen!` call lives here.

wasmtime::component::bindgen!({
    path: "../wit",
    world: "sandbox:provider/provider-plugin",
    imports: { default: async },
    exports: { default: async },
    with: {
        "wasi:http": wasmtime_wasi_http::p2::bindings::http,
        "wasi:io": wasmtime_wasi::p2::bindings::io,
        "wasi:clocks": wasmtime_wasi::p2::bindings::clocks,
        "wasi:random": wasmtime_wasi::p2::bindings::random,
    },
});

pub use sandbox::provider::types;
