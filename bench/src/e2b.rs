//! E2B: the shared SDK comparison with the `e2b` SDK (Connect-RPC envd, one Python process).

use crate::sdk_compare::{self, Comparison};

/// The host configuration pointing the e2b plugin at the emulator at `url`.
pub fn host_config(url: &str) -> String {
    format!(
        "[plugins.e2b]\nsettings.api-url = \"{url}\"\nsettings.sandbox-url = \"{url}\"\n\
         settings.home = \"/workspace\"\nsecrets.api-key = \"e2b_bench\"\n"
    )
}

pub async fn run() {
    sdk_compare::run(Comparison {
        provider: "e2b",
        host_config,
        sdk_code: r#"
from e2b import Sandbox
def scenario():
    s = Sandbox.create()
    for i in range(EXECS):
        out = []
        r = s.commands.run(f"echo {i}", on_stdout=out.append)
        assert r.exit_code == 0 and "".join(out) == f"{i}\n", (r, out)
    s.files.write("/home/user/bench.bin", DATA)
    assert s.files.read("/home/user/bench.bin", format="bytes") == DATA
    s.kill()
"#,
        sdk_env: |url, _| {
            vec![
                ("E2B_API_KEY", "e2b_bench".into()),
                ("E2B_API_URL", url.into()),
                ("E2B_SANDBOX_URL", url.into()),
            ]
        },
        native: None,
    })
    .await
}
