//! Policy that needs no wasm to test: the outbound allowlist.

pub mod allowlist;
