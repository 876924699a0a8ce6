//! Prometheus metrics, rendered as text exposition format by hand (a handful of series does not
//! need a metrics crate): provider calls by provider/op/outcome with latency histograms, calls
//! in flight, plugin loads/reloads/failures, denied outbound requests, HTTP requests by status.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::future::Future;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Mutex;
use std::time::Instant;

use crate::error::Error;

/// Upper bounds (seconds) of the latency histogram buckets.
const BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 120.0,
];

#[derive(Default)]
struct Histogram {
    counts: Vec<u64>,
    sum: f64,
    count: u64,
}

#[derive(Default)]
pub struct Metrics {
    calls: Mutex<BTreeMap<(String, String, String), u64>>,
    latency: Mutex<BTreeMap<(String, String), Histogram>>,
    in_flight: AtomicI64,
    plugin_events: Mutex<BTreeMap<(String, String), u64>>,
    denied: Mutex<BTreeMap<String, u64>>,
    http: Mutex<BTreeMap<u16, u64>>,
}

/// The outcome label of a call: `ok` or the error's code.
pub fn outcome<T>(r: &Result<T, Error>) -> String {
    match r {
        Ok(_) => "ok".into(),
        Err(e) => match e.provider_error() {
            Some(p) => p.code().into(),
            None => super::error::ApiError::from_ref(e),
        },
    }
}

impl Metrics {
    /// Runs one provider call, counting it and timing it.
    pub async fn call<T>(
        &self,
        provider: &str,
        op: &str,
        fut: impl Future<Output = Result<T, Error>>,
    ) -> Result<T, Error> {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        let started = Instant::now();
        let r = fut.await;
        let secs = started.elapsed().as_secs_f64();
        self.in_flight.fetch_sub(1, Ordering::Relaxed);
        *self
            .calls
            .lock()
            .unwrap()
            .entry((provider.into(), op.into(), outcome(&r)))
            .or_default() += 1;
        let mut lat = self.latency.lock().unwrap();
        let h = lat.entry((provider.into(), op.into())).or_default();
        if h.counts.is_empty() {
            h.counts = vec![0; BUCKETS.len()];
        }
        for (i, b) in BUCKETS.iter().enumerate() {
            if secs <= *b {
                h.counts[i] += 1;
            }
        }
        h.sum += secs;
        h.count += 1;
        r
    }

    pub fn plugin_event(&self, kind: &str, plugin: &str) {
        *self
            .plugin_events
            .lock()
            .unwrap()
            .entry((kind.into(), plugin.into()))
            .or_default() += 1;
    }

    pub fn denied(&self, plugin: &str) {
        *self
            .denied
            .lock()
            .unwrap()
            .entry(plugin.into())
            .or_default() += 1;
    }

    pub fn http_status(&self, status: u16) {
        *self.http.lock().unwrap().entry(status).or_default() += 1;
    }

    pub fn render(&self, sessions: usize) -> String {
        let mut t = String::new();
        let esc = |s: &str| {
            s.replace('\\', "\\\\")
                .replace('"', "\\\"")
                .replace('\n', "\\n")
        };
        t.push_str("# HELP sandbox_host_calls_total Provider calls by provider, operation and outcome.\n# TYPE sandbox_host_calls_total counter\n");
        for ((p, op, o), n) in self.calls.lock().unwrap().iter() {
            let _ = writeln!(
                t,
                "sandbox_host_calls_total{{provider=\"{}\",op=\"{}\",outcome=\"{}\"}} {n}",
                esc(p),
                esc(op),
                esc(o)
            );
        }
        t.push_str("# HELP sandbox_host_call_duration_seconds Provider call latency.\n# TYPE sandbox_host_call_duration_seconds histogram\n");
        for ((p, op), h) in self.latency.lock().unwrap().iter() {
            let l = format!("provider=\"{}\",op=\"{}\"", esc(p), esc(op));
            for (b, n) in BUCKETS.iter().zip(&h.counts) {
                let _ = writeln!(
                    t,
                    "sandbox_host_call_duration_seconds_bucket{{{l},le=\"{b}\"}} {n}"
                );
            }
            let _ = writeln!(
                t,
                "sandbox_host_call_duration_seconds_bucket{{{l},le=\"+Inf\"}} {}",
                h.count
            );
            let _ = writeln!(t, "sandbox_host_call_duration_seconds_sum{{{l}}} {}", h.sum);
            let _ = writeln!(
                t,
                "sandbox_host_call_duration_seconds_count{{{l}}} {}",
                h.count
            );
        }
        t.push_str("# HELP sandbox_host_calls_in_flight Provider calls running now.\n# TYPE sandbox_host_calls_in_flight gauge\n");
        let _ = writeln!(
            t,
            "sandbox_host_calls_in_flight {}",
            self.in_flight.load(Ordering::Relaxed)
        );
        t.push_str("# HELP sandbox_host_plugin_events_total Plugin loads, reloads, unloads and failures.\n# TYPE sandbox_host_plugin_events_total counter\n");
        for ((k, p), n) in self.plugin_events.lock().unwrap().iter() {
            let _ = writeln!(
                t,
                "sandbox_host_plugin_events_total{{event=\"{}\",plugin=\"{}\"}} {n}",
                esc(k),
                esc(p)
            );
        }
        t.push_str("# HELP sandbox_host_outbound_denied_total Outbound requests the policy denied.\n# TYPE sandbox_host_outbound_denied_total counter\n");
        for (p, n) in self.denied.lock().unwrap().iter() {
            let _ = writeln!(
                t,
                "sandbox_host_outbound_denied_total{{plugin=\"{}\"}} {n}",
                esc(p)
            );
        }
        t.push_str("# HELP sandbox_host_http_responses_total API responses by status.\n# TYPE sandbox_host_http_responses_total counter\n");
        for (s, n) in self.http.lock().unwrap().iter() {
            let _ = writeln!(t, "sandbox_host_http_responses_total{{status=\"{s}\"}} {n}");
        }
        t.push_str("# HELP sandbox_host_sessions Sandboxes in the registry.\n# TYPE sandbox_host_sessions gauge\n");
        let _ = writeln!(t, "sandbox_host_sessions {sessions}");
        t
    }
}
