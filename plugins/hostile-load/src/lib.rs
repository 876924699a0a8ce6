//! Test fixture: a plugin whose `describe` never returns, computing forever. The host runs
//! `describe` at load under tight limits (1 s of CPU, 5 s wall), so this plugin must be refused
//! with a CPU-budget fault while the host goes on loading and serving the others.

use kit::PluginInfo;

struct HostileLoad;

impl kit::Plugin for HostileLoad {
    fn describe() -> PluginInfo {
        let mut x: u64 = 1;
        loop {
            // Work the optimizer cannot remove: the value escapes through black_box.
            x = std::hint::black_box(x.wrapping_mul(6364136223846793005).wrapping_add(1));
        }
    }
}

kit::export!(HostileLoad);
