//! A native client for the SDK comparison: the same requests as a plugin's scenario, sent by
//! plain pooled hyper from Rust with no plugin in between. It is the floor any client on this
//! machine pays against the same emulator, printed beside the host's and the SDK's rounds, so
//! that what the plugin layer itself costs can be read off directly.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;

/// A provider's scenario for the native client: (client, emulator base URL, the 1 MiB file).
pub type Scenario =
    fn(Arc<Http>, String, Arc<Vec<u8>>) -> Pin<Box<dyn Future<Output = anyhow::Result<()>> + Send>>;

/// A pooled HTTP/1.1 client with the provider's authorization header.
pub struct Http {
    client: Client<HttpConnector, Full<Bytes>>,
    authorization: String,
}

impl Http {
    pub fn new(authorization: &str) -> Http {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        Http {
            client: Client::builder(hyper_util::rt::TokioExecutor::new()).build(connector),
            authorization: authorization.to_string(),
        }
    }

    /// POSTs `body` as `content_type`; the status and the whole answer.
    pub async fn post(
        &self,
        url: &str,
        content_type: &str,
        body: impl Into<Bytes>,
    ) -> anyhow::Result<(u16, Bytes)> {
        let req = hyper::Request::post(url)
            .header("authorization", &self.authorization)
            .header("content-type", content_type)
            .body(Full::new(body.into()))?;
        let resp = self.client.request(req).await?;
        let status = resp.status().as_u16();
        Ok((status, resp.into_body().collect().await?.to_bytes()))
    }

    /// [`post`](Http::post) of JSON, the answer parsed; a status other than 200 is an error.
    pub async fn post_json(
        &self,
        url: &str,
        body: serde_json::Value,
    ) -> anyhow::Result<serde_json::Value> {
        let (status, answer) = self.post(url, "application/json", body.to_string()).await?;
        anyhow::ensure!(
            status == 200,
            "{url}: {status} {}",
            String::from_utf8_lossy(&answer)
        );
        Ok(serde_json::from_slice(&answer)?)
    }
}
