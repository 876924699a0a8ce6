//! Lifecycle guarantees: at start every recorded sandbox is re-attached (asked for its state)
//! or marked `lost`, never silently forgotten; while serving, a sandbox nobody called for
//! `idle_timeout_secs` is paused (or destroyed) so none leaks when its owner is gone.

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;

use super::state::AppState;
use crate::registry::{now_ms, SessionRecord};
use crate::types::Capabilities;
use crate::RuntimeStatus;

/// Asks each recorded sandbox's provider for its state, then marks the server ready.
pub async fn reattach(st: Arc<AppState>) {
    let records = st
        .host
        .registered(None, &BTreeMap::new())
        .unwrap_or_else(|e| {
            tracing::error!("re-attach: cannot read the registry: {e}");
            vec![]
        });
    let (mut ok, mut lost) = (0usize, 0usize);
    let results: Vec<bool> = futures::stream::iter(records)
        .map(|r| reattach_one(st.clone(), r))
        .buffer_unordered(8)
        .collect()
        .await;
    for r in results {
        if r {
            ok += 1
        } else {
            lost += 1
        }
    }
    tracing::info!(reattached = ok, lost, "sessions re-attached");
    st.ready.store(true, Ordering::Relaxed);
}

async fn reattach_one(st: Arc<AppState>, r: SessionRecord) -> bool {
    let id = r.sandbox_id.as_str();
    let mark_lost = |why: String| {
        tracing::warn!(provider = %r.provider, sandbox = id, "re-attach: {why}");
        let _ = st.host.sessions().set_state(&r.provider, id, "lost", &why);
        st.emit(
            r.owner.as_deref(),
            &r.provider,
            Some(id),
            RuntimeStatus::Error,
            why,
        );
        false
    };
    let sandbox = match st.host.sandbox(id, Some(&r.provider)) {
        Ok(s) => s,
        Err(e) => return mark_lost(e.to_string()),
    };
    if st.host.provider(&r.provider).is_err() {
        return mark_lost(format!("provider {:?} is not loaded", r.provider));
    }
    match sandbox.info().await {
        Ok(_) => {
            // Idle time counts from the restart, not from the last call before it.
            st.touch(&r.provider, id);
            true
        }
        Err(e) if e.is_not_found() => mark_lost("the provider no longer knows it".into()),
        Err(e) => {
            // Unreachable now is not gone: keep the record, say so.
            st.emit(
                r.owner.as_deref(),
                &r.provider,
                Some(id),
                RuntimeStatus::Disconnected,
                e.to_string(),
            );
            true
        }
    }
}

/// Every `reap_interval_secs`, pauses or destroys running sandboxes idle past the timeout.
pub async fn idle_reaper(st: Arc<AppState>) {
    let Some(idle) = st.cfg.idle_timeout_secs else {
        return;
    };
    let idle_ms = (idle * 1000) as i64;
    let destroy = st.cfg.idle_action.as_deref() == Some("destroy");
    let every = Duration::from_secs(st.cfg.reap_interval_secs.unwrap_or(30).max(1));
    loop {
        tokio::select! {
            _ = st.shutdown.cancelled() => return,
            _ = tokio::time::sleep(every) => {}
        }
        let Ok(records) = st.host.registered(None, &BTreeMap::new()) else {
            continue;
        };
        let now = now_ms();
        for r in records
            .into_iter()
            .filter(|r| r.state == "running" || r.state == "starting")
        {
            let key = (r.provider.clone(), r.sandbox_id.clone());
            let last = st
                .activity
                .lock()
                .unwrap()
                .get(&key)
                .copied()
                .unwrap_or(r.updated_at_ms);
            if now - last < idle_ms {
                continue;
            }
            reap(&st, &r, destroy).await;
        }
    }
}

async fn reap(st: &AppState, r: &SessionRecord, destroy: bool) {
    let Ok(sandbox) = st.host.sandbox(&r.sandbox_id, Some(&r.provider)) else {
        return;
    };
    let can_pause = st
        .host
        .provider(&r.provider)
        .and_then(|p| p.info())
        .is_ok_and(|i| i.capabilities.contains(Capabilities::PAUSE_RESUME));
    let (what, result) = if destroy || !can_pause {
        (
            "destroyed",
            st.metrics
                .call(&r.provider, "destroy", sandbox.destroy())
                .await,
        )
    } else {
        (
            "paused",
            st.metrics.call(&r.provider, "pause", sandbox.pause()).await,
        )
    };
    match result {
        Ok(()) => {
            tracing::info!(provider = %r.provider, sandbox = %r.sandbox_id, "idle: {what}");
            st.activity
                .lock()
                .unwrap()
                .remove(&(r.provider.clone(), r.sandbox_id.clone()));
            st.emit(
                r.owner.as_deref(),
                &r.provider,
                Some(&r.sandbox_id),
                RuntimeStatus::Disconnected,
                format!("idle: {what}"),
            );
        }
        Err(e) => {
            tracing::warn!(provider = %r.provider, sandbox = %r.sandbox_id, "idle reaper: {e}")
        }
    }
}
