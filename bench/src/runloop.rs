//! Runloop: the shared SDK comparison with `runloop-api-client` (REST + SSE, one Python process).

use crate::sdk_compare::{self, Comparison};

pub async fn run() {
    sdk_compare::run(Comparison {
        provider: "runloop",
        host_config: |url| {
            format!(
                "[plugins.runloop]\nsettings.base-url = \"{url}\"\nsettings.workdir = \"/workspace\"\n\
                 secrets.api-key = \"bench\"\n"
            )
        },
        sdk_code: r#"
from runloop_api_client import RunloopSDK
sdk = RunloopSDK()
def scenario():
    devbox = sdk.devbox.create()
    for i in range(EXECS):
        out = []
        r = devbox.cmd.exec(f"echo {i}", stdout=out.append)
        assert r.exit_code == 0 and "".join(out).strip() == str(i), (r.exit_code, out)
    devbox.file.upload(path="bench.bin", file=("bench.bin", DATA))
    assert devbox.file.download(path="bench.bin") == DATA
    devbox.shutdown()
"#,
        sdk_env: |url, _| {
            vec![
                ("RUNLOOP_BASE_URL", url.into()),
                ("RUNLOOP_API_KEY", "bench".into()),
            ]
        },
    })
    .await
}
