//! A request sent now and collected later, so one call can wait on two answers at once: the
//! execution's completion (`wait_for_status`, answered when the command ends) while the stdout
//! stream is read. The kit's client waits for each answer's head; this goes to the raw
//! `wasi:http` bindings for the one request that must not.

use std::time::Duration;

use kit::bindings::wasi::http::outgoing_handler;
use kit::bindings::wasi::http::types::{
    self as wt, FutureIncomingResponse, Method, OutgoingBody, OutgoingRequest, Scheme,
};
use kit::bindings::wasi::io::streams::StreamError;
use kit::Result;

/// A POST in flight.
pub struct Pending {
    future: FutureIncomingResponse,
    context: String,
}

impl Pending {
    /// Sends a JSON POST without waiting for the answer; `wait` bounds the answer's head.
    pub fn post_json(
        url: &str,
        body: &serde_json::Value,
        request_id: &str,
        wait: Duration,
    ) -> Result<Pending> {
        let parts = kit::util::parse_url(url)?;
        let context = format!(
            "POST {}://{}{}",
            parts.scheme, parts.authority, parts.path_with_query
        );
        let data = body.to_string().into_bytes();
        let headers = wt::Fields::new();
        for (n, v) in [
            ("content-type", "application/json"),
            ("accept", "application/json"),
            ("x-request-id", request_id),
            ("content-length", &data.len().to_string()),
        ] {
            headers
                .append(n, v.as_bytes())
                .map_err(|e| kit::invalid_argument(format!("header {n}: {e:?}")))?;
        }
        let request = OutgoingRequest::new(headers);
        let bad = |what: &str| kit::invalid_argument(format!("{context}: invalid {what}"));
        request
            .set_method(&Method::Post)
            .map_err(|()| bad("method"))?;
        let scheme = if parts.scheme == "https" {
            Scheme::Https
        } else {
            Scheme::Http
        };
        request
            .set_scheme(Some(&scheme))
            .map_err(|()| bad("scheme"))?;
        request
            .set_authority(Some(&parts.authority))
            .map_err(|()| bad("authority"))?;
        request
            .set_path_with_query(Some(&parts.path_with_query))
            .map_err(|()| bad("path"))?;
        let out = request
            .body()
            .map_err(|()| kit::provider(0, "request body taken"))?;
        let options = wt::RequestOptions::new();
        let _ = options.set_connect_timeout(Some(10_000_000_000));
        let _ = options.set_first_byte_timeout(Some(wait.as_nanos() as u64));
        let _ = options.set_between_bytes_timeout(Some(30_000_000_000));
        let future = outgoing_handler::handle(request, Some(options))
            .map_err(|code| kit::http::error_from_code(code, &context))?;
        // As the kit does: a server may answer (and the host drop the body stream) before the
        // last flush, so a body error only matters if no answer comes — `finish` tells.
        if let Ok(stream) = out.write() {
            let _ = kit::http::write_all(&stream, &data);
        }
        let _ = OutgoingBody::finish(out, None);
        Ok(Pending { future, context })
    }

    /// Waits for the answer: its status and whole body.
    pub fn finish(self) -> Result<(u16, Vec<u8>)> {
        let response = loop {
            match self.future.get() {
                Some(Ok(Ok(r))) => break r,
                Some(Ok(Err(code))) => return Err(kit::http::error_from_code(code, &self.context)),
                Some(Err(())) => return Err(kit::provider(0, "response already taken")),
                None => self.future.subscribe().block(),
            }
        };
        let status = response.status();
        let body = response
            .consume()
            .map_err(|()| kit::provider(0, "response body taken"))?;
        let mut bytes = Vec::new();
        {
            let stream = body
                .stream()
                .map_err(|()| kit::provider(0, "response body stream taken"))?;
            loop {
                match stream.blocking_read(64 * 1024) {
                    Ok(chunk) => bytes.extend_from_slice(&chunk),
                    Err(StreamError::Closed) => break,
                    Err(e) => {
                        return Err(kit::unavailable(format!(
                            "{}: reading the answer: {e:?}",
                            self.context
                        )))
                    }
                }
            }
        }
        drop(body);
        drop(response);
        Ok((status, bytes))
    }
}
