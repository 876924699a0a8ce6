//! Sandbox lifecycle: create, attach, inspect, ls, pause, resume, rm, timeout, port.

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::io::IsTerminal;
use std::time::Duration;

use serde_json::{json, Value};

use sandbox_host::types::Spec;
use sandbox_host::Sandbox;

use super::args::{CreateArgs, Target};
use super::{output, parse_env, parse_kv, Ctx, Res};

/// The spec `create` and `run` ask for.
pub fn spec_from(args: &CreateArgs) -> Res<Spec> {
    Ok(Spec {
        image: args.image.clone(),
        name: args.name.clone(),
        env: parse_env(&args.env)?,
        labels: args
            .labels
            .iter()
            .map(|l| parse_kv(l, "--label"))
            .collect::<Res<_>>()?,
        timeout_secs: args.timeout,
        options: args
            .options
            .iter()
            .map(|o| parse_kv(o, "--option"))
            .collect::<Res<_>>()?,
        ..Spec::default()
    })
}

/// Labels from `--label K=V` arguments.
pub fn labels_from(items: &[String]) -> Res<BTreeMap<String, String>> {
    items.iter().map(|l| parse_kv(l, "--label")).collect()
}

/// Awaits `fut`; when it takes over a second, shows a spinner on stderr meanwhile (only on a
/// terminal and not in JSON mode).
pub async fn with_spinner<T>(ctx: &Ctx, message: String, fut: impl Future<Output = T>) -> T {
    if ctx.json || !std::io::stderr().is_terminal() {
        return fut.await;
    }
    tokio::pin!(fut);
    tokio::select! {
        r = &mut fut => return r,
        _ = tokio::time::sleep(Duration::from_secs(1)) => {}
    }
    let bar =
        indicatif::ProgressBar::with_draw_target(None, indicatif::ProgressDrawTarget::stderr());
    bar.set_style(
        indicatif::ProgressStyle::with_template("{spinner} {msg} ({elapsed})")
            .expect("valid template"),
    );
    bar.set_message(message);
    bar.enable_steady_tick(Duration::from_millis(100));
    let r = fut.await;
    bar.finish_and_clear();
    r
}

/// Creates a sandbox as `create` and `run` do (spinner included).
pub async fn create_sandbox(ctx: &Ctx, args: &CreateArgs) -> Res<Sandbox> {
    let spec = spec_from(args)?;
    let provider = ctx.provider(&args.provider)?;
    let created = with_spinner(
        ctx,
        format!("creating a sandbox on {}", args.provider),
        provider.create(spec),
    )
    .await?;
    Ok(created)
}

fn print_record(ctx: &Ctx, sandbox: &Sandbox) -> Res<()> {
    if ctx.json {
        output::print_json(&output::record(&sandbox.record()?));
    } else {
        output::line(sandbox.id());
    }
    Ok(())
}

pub async fn create(ctx: &Ctx, args: &CreateArgs) -> Res<i32> {
    let sandbox = create_sandbox(ctx, args).await?;
    print_record(ctx, &sandbox)?;
    Ok(0)
}

pub async fn attach(ctx: &Ctx, provider: &str, id: &str) -> Res<i32> {
    let sandbox = ctx.provider(provider)?.attach(id).await?;
    print_record(ctx, &sandbox)?;
    Ok(0)
}

pub async fn inspect(ctx: &Ctx, target: &Target) -> Res<i32> {
    let sandbox = ctx.sandbox(target)?;
    // Ask the provider first: it updates the registry's state and history.
    let (view, error) = match sandbox.info().await {
        Ok(info) => (output::sandbox(sandbox.provider(), &info), Value::Null),
        Err(e) => {
            let f = super::Failure::from(e);
            (Value::Null, json!({ "code": f.code, "message": f.message }))
        }
    };
    let record = sandbox.record()?;
    let history = ctx
        .host
        .sessions()
        .history(sandbox.provider(), sandbox.id())?;
    let v = json!({
        "record": output::record(&record),
        "provider_view": view,
        "provider_error": error,
        "history": history.iter().map(output::state_change).collect::<Vec<_>>(),
    });
    if ctx.json {
        output::print_json(&v);
    } else {
        output::out(&output::render_inspect(&v));
    }
    Ok(0)
}

pub async fn ls(ctx: &Ctx, provider: Option<&str>, labels: &[String], all: bool) -> Res<i32> {
    let labels = labels_from(labels)?;
    let records = ctx.host.registered(provider, &labels)?;
    let mut entries: Vec<Value> = records
        .iter()
        .map(|r| output::listed(output::record(r), true))
        .collect();
    if all {
        let names: Vec<String> = match provider {
            Some(p) => vec![p.to_string()],
            None => ctx
                .host
                .plugins()
                .iter()
                .map(|p| p.name().to_string())
                .collect(),
        };
        if let super::Localbox::Failed(why) = &ctx.localbox {
            output::warn(why, ctx.json);
        }
        for name in names {
            let listed = match ctx.host.provider(&name) {
                Ok(p) => p.list(&labels).await,
                Err(e) => Err(e),
            };
            let found = match listed {
                Ok(found) => found,
                Err(e) => {
                    output::warn(&format!("{name}: cannot list sandboxes: {e}"), ctx.json);
                    continue;
                }
            };
            let on_provider: BTreeMap<&str, _> = found.iter().map(|s| (s.id.as_str(), s)).collect();
            let registered: BTreeSet<String> = records
                .iter()
                .filter(|r| r.provider == name)
                .map(|r| r.sandbox_id.clone())
                .collect();
            // Registered sandboxes show the provider's current state, or `missing`.
            for e in entries
                .iter_mut()
                .filter(|e| e["provider"] == name.as_str())
            {
                let state = match on_provider.get(e["id"].as_str().unwrap_or("")) {
                    Some(s) => output::state_name(s.state),
                    None => "missing",
                };
                e["state"] = Value::String(state.into());
            }
            for s in found.iter().filter(|s| !registered.contains(&s.id)) {
                entries.push(output::listed(output::sandbox(&name, s), false));
            }
        }
    }
    if ctx.json {
        output::print_json(&Value::Array(entries));
    } else {
        output::out(&output::render_ls(&entries, all));
    }
    Ok(0)
}

/// `{"id","provider","state"}` or the id alone.
fn print_done(ctx: &Ctx, sandbox: &Sandbox, extra: Value) {
    if ctx.json {
        let mut v = json!({ "id": sandbox.id(), "provider": sandbox.provider() });
        if let (Some(m), Value::Object(e)) = (v.as_object_mut(), extra) {
            m.extend(e);
        }
        output::print_json(&v);
    } else {
        output::line(sandbox.id());
    }
}

pub async fn pause(ctx: &Ctx, target: &Target) -> Res<i32> {
    let sandbox = ctx.sandbox(target)?;
    sandbox.pause().await?;
    print_done(ctx, &sandbox, json!({ "state": "paused" }));
    Ok(0)
}

pub async fn resume(ctx: &Ctx, target: &Target) -> Res<i32> {
    let sandbox = ctx.sandbox(target)?;
    let info = sandbox.resume().await?;
    if ctx.json {
        output::print_json(&output::sandbox(sandbox.provider(), &info));
    } else {
        output::line(sandbox.id());
    }
    Ok(0)
}

pub async fn rm(ctx: &Ctx, target: &Target) -> Res<i32> {
    let sandbox = ctx.sandbox(target)?;
    sandbox.destroy().await?;
    print_done(ctx, &sandbox, json!({ "removed": true }));
    Ok(0)
}

pub async fn timeout(ctx: &Ctx, target: &Target, secs: u64) -> Res<i32> {
    let sandbox = ctx.sandbox(target)?;
    sandbox.set_timeout(secs).await?;
    print_done(ctx, &sandbox, json!({ "timeout_secs": secs }));
    Ok(0)
}

pub async fn port(ctx: &Ctx, target: &Target, port: u16) -> Res<i32> {
    let sandbox = ctx.sandbox(target)?;
    let endpoint = sandbox.port_url(port).await?;
    if ctx.json {
        output::print_json(&output::endpoint(&endpoint));
    } else {
        output::line(&endpoint.url);
        // Headers a client must send (e.g. an access token): on stderr, so the URL alone can be
        // captured with $(...).
        for (k, v) in &endpoint.headers {
            eprintln!("header: {k}: {v}");
        }
    }
    Ok(0)
}
