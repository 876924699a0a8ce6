//! `GET /v1/events` (SSE): status events shaped like OpenHands' `RuntimeStatus`, only for the
//! caller's sandboxes (all for the admin); `?sandbox_id=` narrows to one. The stream ends when
//! the server shuts down, so it never holds up a graceful exit.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::Extension;
use serde::Deserialize;
use tokio::sync::broadcast::error::RecvError;

use super::auth::Caller;
use super::error::ApiQuery;
use super::state::{AppState, TenantEvent};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EventsQuery {
    pub sandbox_id: Option<String>,
}

pub async fn events(
    State(st): State<Arc<AppState>>,
    Extension(caller): Extension<Caller>,
    ApiQuery(q): ApiQuery<EventsQuery>,
) -> Sse<impl futures::Stream<Item = Result<Event, Infallible>>> {
    let rx = st.events.subscribe();
    let stop = st.shutdown.clone();
    let keep = move |e: &TenantEvent| {
        caller.may_see(e.owner.as_deref())
            && q.sandbox_id
                .as_ref()
                .is_none_or(|id| e.sandbox_id.as_ref() == Some(id))
    };
    let stream = futures::stream::unfold((rx, stop, keep), |(mut rx, stop, keep)| async move {
        loop {
            let next = tokio::select! {
                _ = stop.cancelled() => return None,
                r = rx.recv() => r,
            };
            match next {
                Ok(e) if keep(&e) => {
                    let ev = Event::default()
                        .event("status")
                        .data(serde_json::to_string(&e).expect("events serialize"));
                    return Some((Ok(ev), (rx, stop, keep)));
                }
                Ok(_) => continue,
                Err(RecvError::Lagged(n)) => {
                    let ev = Event::default()
                        .event("lagged")
                        .data(format!("{{\"missed\":{n}}}"));
                    return Some((Ok(ev), (rx, stop, keep)));
                }
                Err(RecvError::Closed) => return None,
            }
        }
    });
    Sse::new(stream).keep_alive(KeepAlive::new().interval(Duration::from_secs(15)))
}

/// Forwards the host's own status events that serve does not emit itself (a provider became
/// unreachable: `disconnected`, `error`), tagged with the sandbox's owner.
pub async fn forward_host_events(st: Arc<AppState>) {
    let mut rx = st.host.status_events();
    loop {
        let e = match rx.recv().await {
            Ok(e) => e,
            Err(RecvError::Lagged(_)) => continue,
            Err(RecvError::Closed) => return,
        };
        use crate::RuntimeStatus as R;
        let (R::Disconnected | R::Error) = e.status else {
            continue;
        };
        let Some(id) = e.sandbox_id.as_deref() else {
            continue;
        };
        if e.message == "destroyed" {
            continue;
        }
        let owner = st
            .host
            .sessions()
            .get(&e.provider, id)
            .ok()
            .flatten()
            .and_then(|r| r.owner);
        st.emit(owner.as_deref(), &e.provider, Some(id), e.status, e.message);
    }
}
