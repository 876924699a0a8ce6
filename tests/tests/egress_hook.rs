//! The `send_request` hook called directly, without wasm: timeouts from request options, the
//! denial callback, and the size cap announced by Content-Length.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use http_body_util::{BodyExt, Empty};
use sandbox_host::outbound::client::ClientCache;
use sandbox_host::outbound::{BoundSecret, Egress};
use sandbox_host::policy::allowlist::Allowlist;
use sandbox_tests::servers::TestServer;
use wasmtime_wasi_http::{Error, RequestOptions, WasiBody};

fn request(url: &str) -> http::Request<WasiBody> {
    let body = Empty::<bytes::Bytes>::new()
        .map_err(|never| match never {})
        .boxed_unsync();
    http::Request::get(url).body(body).unwrap()
}

fn egress(allow: &[String], cap: u64, denied: Arc<Mutex<Vec<String>>>) -> Egress {
    Egress {
        plugin: Arc::from("test"),
        allow: Allowlist::parse(allow).unwrap(),
        h2c: Allowlist::default(),
        secrets: Vec::<BoundSecret>::new(),
        response_cap: cap,
        clients: ClientCache::default().get(&[]).unwrap(),
        on_denied: Some(Arc::new(move |plugin: &str, url: &str| {
            denied.lock().unwrap().push(format!("{plugin} {url}"))
        })),
        detached: Default::default(),
    }
}

#[tokio::test]
async fn first_byte_timeout_from_request_options_is_enforced() {
    let server = TestServer::start().await;
    let e = egress(
        &[format!("http://127.0.0.1:{}", server.addr.port())],
        1 << 20,
        Arc::default(),
    );
    let options = RequestOptions {
        first_byte_timeout: Some(Duration::from_millis(300)),
        ..Default::default()
    };
    let r = e.send(request(&server.url("/hang")), options).await;
    assert!(matches!(r, Err(Error::HttpResponseTimeout)), "{r:?}");
}

#[tokio::test]
async fn denials_reach_the_callback_without_query_strings() {
    let denied = Arc::new(Mutex::new(vec![]));
    let e = egress(&[], 1 << 20, denied.clone());
    let r = e
        .send(
            request("http://127.0.0.1:9/secret-path?token=abc"),
            RequestOptions::default(),
        )
        .await;
    assert!(matches!(r, Err(Error::HttpRequestDenied)), "{r:?}");
    assert_eq!(
        *denied.lock().unwrap(),
        ["test http://127.0.0.1:9/secret-path"]
    );
}

#[tokio::test]
async fn a_declared_length_over_the_cap_is_refused_and_a_streamed_one_is_cut() {
    let server = TestServer::start().await;
    let e = egress(
        &[format!("http://127.0.0.1:{}", server.addr.port())],
        1000,
        Arc::default(),
    );
    // "/ok" is 2 bytes with a Content-Length: within the cap.
    let ok = e
        .send(request(&server.url("/ok")), RequestOptions::default())
        .await
        .unwrap();
    assert_eq!(ok.into_body().collect().await.unwrap().to_bytes(), "ok");
    // A streamed 2 MiB body is cut once it passes the cap.
    let resp = e
        .send(
            request(&server.url("/huge?mb=2")),
            RequestOptions::default(),
        )
        .await
        .unwrap();
    let err = resp.into_body().collect().await.unwrap_err();
    assert!(
        matches!(err, Error::HttpResponseBodySize(Some(1000))),
        "{err:?}"
    );
}
