//! A provider emulator served in-process on a loopback port, over a fresh localbox engine
//! (commands really run, under bubblewrap), with its fault switches: what every provider's
//! integration tests start.

use std::os::unix::fs::PermissionsExt;

use emulator_common::{FaultRule, Faults, Options};

pub struct InProcessEmulator {
    /// `http://127.0.0.1:PORT`.
    pub url: String,
    pub engine: localbox::Engine,
    pub faults: Faults,
    task: tokio::task::JoinHandle<()>,
    _root: tempfile::TempDir,
}

impl InProcessEmulator {
    /// Serves the routes `router` builds from the emulator options (fault injection added).
    pub async fn start(router: impl FnOnce(Options) -> axum::Router) -> InProcessEmulator {
        crate::init_tracing();
        let root = tempfile::tempdir().unwrap();
        // Sandboxes may run as their own uids: they must be able to reach their directories.
        std::fs::set_permissions(root.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        let engine =
            localbox::Engine::new(localbox::EngineConfig::new(root.path().join("sandboxes")))
                .unwrap();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let faults = Faults::default();
        let routes = router(Options {
            engine: engine.clone(),
            faults: faults.clone(),
            base_url: url.clone(),
        });
        let routes = emulator_common::with_faults(routes, faults.clone());
        let task = tokio::spawn(async move {
            let _ = emulator_common::serve(listener, routes).await;
        });
        InProcessEmulator {
            url,
            engine,
            faults,
            task,
            _root: root,
        }
    }

    /// Adds a fault rule (the `--fault` syntax, e.g. `POST /v1/devboxes 503 x2`).
    pub fn fault(&self, rule: &str) {
        self.faults.push(rule.parse::<FaultRule>().unwrap());
    }

    /// POSTs `body` as JSON to one of the emulator's own endpoints (`/_emulator/…`): the status.
    pub async fn admin(&self, path: &str, body: &serde_json::Value) -> u16 {
        self.post(path, &[], body).await.0
    }

    /// POSTs `body` as JSON to `path` with `headers`; the status and the body of the answer.
    pub async fn post(
        &self,
        path: &str,
        headers: &[(&str, &str)],
        body: &serde_json::Value,
    ) -> (u16, String) {
        use http_body_util::{BodyExt, Full};
        let client =
            hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
                .build_http::<Full<bytes::Bytes>>();
        let mut req = http::Request::post(format!("{}{path}", self.url))
            .header("content-type", "application/json");
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let req = req
            .body(Full::new(bytes::Bytes::from(body.to_string())))
            .unwrap();
        let resp = client.request(req).await.unwrap();
        let status = resp.status().as_u16();
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        (status, String::from_utf8_lossy(&body).into_owned())
    }

    /// Live localbox sandboxes behind the emulator.
    pub fn live(&self) -> usize {
        self.engine.list(&Default::default()).len()
    }

    /// Stops serving and ends every sandbox's processes.
    pub async fn shutdown(self) {
        self.task.abort();
        self.engine.shutdown().await;
    }
}
