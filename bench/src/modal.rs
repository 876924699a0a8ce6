//! Modal: the shared SDK comparison with the `modal` SDK (gRPC via grpclib, one Python process);
//! our side speaks gRPC over wasi:http with prior-knowledge HTTP/2 (h2c) to the emulator.

use crate::sdk_compare::{self, Comparison};

pub async fn run() {
    sdk_compare::run(Comparison {
        provider: "modal",
        host_config: |url| {
            format!(
                "[plugins.modal]\nallow = [\"{url}\"]\nh2c = [\"{url}\"]\nsettings.server-url = \"{url}\"\n\
                 settings.environment = \"bench\"\n\
                 secrets.token-id = {{ env = \"SANDBOX_HOST_BENCH_UNSET_ID\", default = \"ak-bench\", hosts = [\"{url}\"] }}\n\
                 secrets.token-secret = {{ env = \"SANDBOX_HOST_BENCH_UNSET_SECRET\", default = \"as-bench\", hosts = [\"{url}\"] }}\n"
            )
        },
        sdk_code: r#"
import modal
app = modal.App.lookup("bench", create_if_missing=True)
image = modal.Image.from_registry("python:3.11-slim-bookworm")
def scenario():
    sb = modal.Sandbox.create("sleep", "infinity", app=app, image=image, workdir="/workspace")
    for i in range(EXECS):
        p = sb.exec("sh", "-c", f"echo {i}")
        out = p.stdout.read()
        assert p.wait() == 0 and out == f"{i}\n", out
    sb.filesystem.write_bytes(DATA, "/workspace/bench.bin")
    assert sb.filesystem.read_bytes("/workspace/bench.bin") == DATA
    sb.terminate()
"#,
        // `localhost`: the SDK accepts an http:// router URL only for a local server.
        sdk_env: |url, home| {
            let port = url.rsplit(':').next().unwrap_or("0");
            vec![
                ("MODAL_SERVER_URL", format!("http://localhost:{port}")),
                ("MODAL_TOKEN_ID", "ak-bench".into()),
                ("MODAL_TOKEN_SECRET", "as-bench".into()),
                ("MODAL_ENVIRONMENT", "bench".into()),
                ("MODAL_CONFIG_PATH", home.join("modal.toml").display().to_string()),
            ]
        },
        native: None,
    })
    .await
}
