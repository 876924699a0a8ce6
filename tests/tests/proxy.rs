//! HTTPS_PROXY / NO_PROXY: plugin traffic goes through a CONNECT proxy unless excluded.
//! Its own test binary, because it sets process environment variables.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use sandbox_host::types::ExecRequest;
use sandbox_tests::hostile_sandbox;
use sandbox_tests::servers::TestServer;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};

/// A minimal CONNECT proxy that records the targets it tunnels to.
async fn connect_proxy() -> (u16, Arc<Mutex<Vec<String>>>, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let targets = Arc::new(Mutex::new(vec![]));
    let accepts = Arc::new(AtomicUsize::new(0));
    let (t2, a2) = (targets.clone(), accepts.clone());
    tokio::spawn(async move {
        while let Ok((client, _)) = listener.accept().await {
            a2.fetch_add(1, Ordering::SeqCst);
            let targets = t2.clone();
            tokio::spawn(async move {
                let mut client = BufReader::new(client);
                let mut line = String::new();
                client.read_line(&mut line).await.unwrap();
                let target = line.split_whitespace().nth(1).unwrap_or("").to_string();
                loop {
                    let mut header = String::new();
                    if client.read_line(&mut header).await.unwrap() <= 2 {
                        break;
                    }
                }
                targets.lock().unwrap().push(target.clone());
                let mut upstream = TcpStream::connect(target.replace("localhost", "127.0.0.1"))
                    .await
                    .unwrap();
                let mut client = client.into_inner();
                client
                    .write_all(b"HTTP/1.1 200 Connection established\r\n\r\n")
                    .await
                    .unwrap();
                let _ = tokio::io::copy_bidirectional(&mut client, &mut upstream).await;
            });
        }
    });
    (port, targets, accepts)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_proxy_is_used_unless_no_proxy_excludes_the_host() {
    let server = TestServer::start_tls().await;
    let (proxy_port, targets, _) = connect_proxy().await;
    let config = format!(
        "[plugins.hostile]\nallow = [\"https://localhost:{}\"]\nca_files = [\"{}\"]\n",
        server.addr.port(),
        server.ca_file.as_ref().unwrap().display()
    );
    let url = server.https_url("/ok");

    std::env::set_var("HTTPS_PROXY", format!("http://127.0.0.1:{proxy_port}"));
    std::env::remove_var("NO_PROXY");
    std::env::remove_var("no_proxy");
    let (t, sandbox) = hostile_sandbox(&config).await;
    let out = sandbox
        .exec(ExecRequest::argv(["egress", &url]), None)
        .await
        .unwrap();
    assert_eq!(out.stdout_tail, b"200");
    assert_eq!(
        *targets.lock().unwrap(),
        [format!("localhost:{}", server.addr.port())]
    );
    drop(t);

    std::env::set_var("NO_PROXY", "localhost");
    let (_t, sandbox) = hostile_sandbox(&config).await;
    let out = sandbox
        .exec(ExecRequest::argv(["egress", &url]), None)
        .await
        .unwrap();
    assert_eq!(out.stdout_tail, b"200");
    assert_eq!(
        targets.lock().unwrap().len(),
        1,
        "NO_PROXY=localhost must bypass the proxy"
    );
    assert_eq!(server.requests().len(), 2);
    std::env::remove_var("HTTPS_PROXY");
    std::env::remove_var("NO_PROXY");
}
