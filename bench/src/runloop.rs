//! Runloop: the shared SDK comparison with `runloop-api-client` (REST + SSE, one Python process),
//! and a native client sending the plugin's requests straight from Rust.

use std::sync::Arc;

use serde_json::json;

use crate::native::Http;
use crate::sdk_compare::{self, Comparison, EXECS};

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
        native: Some(|http, url, data| Box::pin(native(http, url, data))),
    })
    .await
}

/// The plugin's requests for the scenario: create + a `running` wait, `execute` with a 1 s hold
/// per command, `upload_file` (multipart), `download_file`, `shutdown`.
async fn native(http: Arc<Http>, url: String, data: Arc<Vec<u8>>) -> anyhow::Result<()> {
    let devboxes = format!("{url}/v1/devboxes");
    let created = http.post_json(&devboxes, json!({})).await?;
    let id = created["id"].as_str().unwrap_or_default().to_string();
    let at = |what: &str| format!("{devboxes}/{id}/{what}");
    loop {
        let wait = json!({ "statuses": ["running"], "timeout_seconds": 25 });
        let (status, _) = http
            .post(&at("wait_for_status"), "application/json", wait.to_string())
            .await?;
        if status == 200 {
            break;
        }
        anyhow::ensure!(status == 408, "wait_for_status: {status}");
    }
    for i in 0..EXECS {
        let body = json!({
            "command": format!("echo {i}"),
            "command_id": format!("01923456-789a-7000-8000-{i:012x}"),
            "optimistic_timeout": 1,
        });
        let view = http
            .post_json(&format!("{}?last_n=1000", at("execute")), body)
            .await?;
        anyhow::ensure!(
            view["status"] == "completed" && view["stdout"] == format!("{i}\n"),
            "echo {i}: {view}"
        );
    }
    let boundary = "bench-boundary-7d1f";
    let mut form = format!(
        "--{boundary}\r\ncontent-disposition: form-data; name=\"path\"\r\n\r\nbench.bin\r\n\
         --{boundary}\r\ncontent-disposition: form-data; name=\"file\"; filename=\"bench.bin\"\r\n\
         content-type: application/octet-stream\r\n\r\n"
    )
    .into_bytes();
    form.extend_from_slice(&data);
    form.extend_from_slice(format!("\r\n--{boundary}--\r\n").as_bytes());
    let (status, answer) = http
        .post(
            &at("upload_file"),
            &format!("multipart/form-data; boundary={boundary}"),
            form,
        )
        .await?;
    anyhow::ensure!(status == 200, "upload: {status} {answer:?}");
    let (status, file) = http
        .post(
            &at("download_file"),
            "application/json",
            json!({ "path": "bench.bin" }).to_string(),
        )
        .await?;
    anyhow::ensure!(status == 200 && file[..] == data[..], "download: {status}");
    http.post_json(&at("shutdown"), json!({})).await?;
    Ok(())
}
