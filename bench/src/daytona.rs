//! Daytona: the shared SDK comparison with the `daytona` SDK (REST + toolbox, one Python process).

use crate::sdk_compare::{self, Comparison};

pub async fn run() {
    sdk_compare::run(Comparison {
        provider: "daytona",
        host_config: |url| {
            format!(
                "[plugins.daytona]\nsettings.api-url = \"{url}/api\"\n\
                 secrets.api-key = {{ env = \"SANDBOX_HOST_BENCH_UNSET_KEY\", default = \"bench\", hosts = [\"http://127.0.0.1:*\"] }}\n"
            )
        },
        sdk_code: r#"
from daytona import Daytona
d = Daytona()
def scenario():
    sb = d.create()
    for i in range(EXECS):
        r = sb.process.exec(f"echo {i}")
        assert r.exit_code == 0 and r.result == f"{i}\n", r
    sb.fs.upload_file(DATA, "bench.bin")
    assert sb.fs.download_file("bench.bin") == DATA
    d.delete(sb)
"#,
        sdk_env: |url, _| {
            vec![
                ("DAYTONA_API_KEY", "bench".into()),
                ("DAYTONA_API_URL", format!("{url}/api")),
            ]
        },
        native: None,
    })
    .await
}
