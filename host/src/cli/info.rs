//! plugins, doctor, config show, and the localbox command.

use std::collections::BTreeSet;
use std::net::SocketAddr;

use serde_json::{json, Map, Value};

use sandbox_host::config::{presets, Source};

use super::args::LocalboxCommand;
use super::{daemon, output, Ctx, Failure, Localbox, Res, Setup, LOCAL};

pub fn plugins(ctx: &Ctx) -> Res<i32> {
    let list: Vec<Value> = ctx
        .host
        .plugins()
        .iter()
        .map(|p| output::plugin(p))
        .collect();
    if ctx.json {
        output::print_json(&Value::Array(list));
    } else {
        output::out(&output::render_plugins(&list));
    }
    for e in ctx.host.load_errors() {
        output::warn(e, ctx.json);
    }
    Ok(0)
}

/// Checks for the local provider beyond the plugin's own preflight.
fn local_checks(ctx: &Ctx) -> Vec<Value> {
    let mut checks = vec![];
    let isolation = ctx
        .setup
        .config
        .localbox
        .isolation
        .as_deref()
        .unwrap_or("bubblewrap");
    if isolation == "none" {
        checks.push(output::check_parts(
            "bubblewrap",
            "skip",
            "isolation = \"none\" in [localbox]: commands run without isolation",
        ));
    } else {
        match localbox::find_bwrap() {
            Some(p) => checks.push(output::check_parts(
                "bubblewrap",
                "ok",
                &p.display().to_string(),
            )),
            None => checks.push(output::check_parts(
                "bubblewrap",
                "fail",
                "bwrap not found: install the `bubblewrap` package",
            )),
        }
    }
    match &ctx.localbox {
        Localbox::Daemon(info) => checks.push(output::check_parts(
            "localbox",
            "ok",
            &format!("CLI daemon at {} (pid {})", info.url, info.pid),
        )),
        Localbox::Operator => checks.push(output::check_parts(
            "localbox",
            "ok",
            "the operator's localbox (localbox-url setting)",
        )),
        Localbox::Failed(why) => checks.push(output::check_parts("localbox", "fail", why)),
        Localbox::NotNeeded => {}
    }
    checks
}

/// Per plugin: loaded, settings, secrets, allowlist, preflight. A plugin for which nothing at
/// all is configured is reported as `not configured` and fails the run only when it is the one
/// asked for with `--provider`.
pub async fn doctor(ctx: &Ctx, only: Option<&str>) -> Res<i32> {
    let mut reports = vec![];
    let mut ok = ctx.host.load_errors().is_empty();
    let loaded = ctx.host.plugins();
    if let Some(name) = only {
        if !loaded.iter().any(|p| p.name() == name) {
            ok = false;
            reports.push(json!({
                "name": name, "version": null, "status": "failed",
                "checks": [output::check_parts("loaded", "fail", &format!("no plugin named {name:?} is loaded (see `sandbox-host plugins`)"))],
            }));
        }
    }
    for p in loaded.iter().filter(|p| only.is_none_or(|n| n == p.name())) {
        let mut checks = vec![output::check_parts(
            "loaded",
            "ok",
            &p.path.display().to_string(),
        )];
        let mut configured_any = false;
        let mut needs_any = false;
        for s in p.info.settings.iter().filter(|s| s.required) {
            needs_any = true;
            let present = p.settings.contains_key(&s.name);
            configured_any |= present;
            let (status, detail) = if present {
                ("ok", "present")
            } else {
                ("fail", "missing (see `sandbox-host config show`)")
            };
            checks.push(output::check_parts(
                &format!("setting {}", s.name),
                status,
                detail,
            ));
        }
        for c in &p.info.credentials {
            needs_any = true;
            let bound = p.bound_secrets.contains(&c.secret);
            configured_any |= bound;
            let (status, detail) = if bound {
                ("ok", "bound")
            } else {
                ("fail", "not set (see `sandbox-host config show`)")
            };
            checks.push(output::check_parts(
                &format!("secret {}", c.secret),
                status,
                detail,
            ));
        }
        let unconfigured = needs_any && !configured_any;
        if unconfigured {
            checks.push(output::check_parts("preflight", "skip", "not configured"));
        } else {
            match ctx.host.provider(p.name())?.preflight().await {
                Ok(list) => checks.extend(list.iter().map(|c| {
                    let mut v = output::check(c);
                    v["name"] = Value::String(format!("preflight {}", c.name));
                    v
                })),
                Err(e) => checks.push(output::check_parts("preflight", "fail", &e.to_string())),
            }
        }
        if p.name() == LOCAL {
            checks.extend(local_checks(ctx));
        }
        let failed = checks.iter().any(|c| c["status"] == "fail");
        let status = match (unconfigured, failed) {
            (true, _) => "not configured",
            (false, true) => "failed",
            (false, false) => "ok",
        };
        if failed && (!unconfigured || only.is_some()) {
            ok = false;
        }
        reports.push(json!({
            "name": p.name(),
            "version": p.info.version,
            "status": status,
            "allow": p.allow.0.iter().map(|h| h.to_string()).collect::<Vec<_>>(),
            "secrets_bound": p.bound_secrets,
            "checks": checks,
        }));
    }
    let v = json!({ "ok": ok, "plugins": reports, "load_errors": ctx.host.load_errors() });
    if ctx.json {
        output::print_json(&v);
    } else {
        output::out(&output::render_doctor(&v));
    }
    Ok(if ok { 0 } else { 1 })
}

fn hosts_json<T: ToString>(v: &Option<Vec<T>>) -> Value {
    match v {
        Some(list) => Value::Array(list.iter().map(|h| Value::String(h.to_string())).collect()),
        None => Value::Null,
    }
}

/// A setting: where it comes from and its value (settings are not secrets).
fn setting_json(source: &Source) -> Value {
    let from = match source {
        Source::Literal(_) | Source::Value { .. } => "literal".to_string(),
        Source::Env {
            default: Some(d), ..
        } => format!("{}, default {d:?}", source.describe_redacted()),
        _ => source.describe_redacted(),
    };
    match source.resolve() {
        Ok(value) => json!({ "source": from, "value": value }),
        Err(e) => json!({ "source": from, "value": null, "error": e.to_string() }),
    }
}

/// A secret: where it comes from and whether it resolves; never its value.
fn secret_json(source: &Source) -> Value {
    let (status, error) = match source.resolve() {
        Ok(Some(_)) => ("set", None),
        Ok(None) => ("unset", None),
        Err(e) => ("error", Some(e.to_string())),
    };
    let mut v = json!({ "source": source.describe_redacted(), "status": status });
    if let Some(e) = error {
        v["error"] = Value::String(e);
    }
    if let Some(hosts) = source.hosts() {
        v["hosts"] = hosts_json(&Some(hosts.to_vec()));
    }
    v
}

pub fn config_show(ctx: &Ctx) -> Res<i32> {
    let config = &ctx.setup.config;
    let loaded: BTreeSet<String> = ctx
        .host
        .plugins()
        .iter()
        .map(|p| p.name().to_string())
        .collect();
    let names: BTreeSet<String> = presets()
        .keys()
        .chain(config.plugins.keys())
        .chain(loaded.iter())
        .cloned()
        .collect();
    let mut plugins = Map::new();
    for name in names {
        let cfg = config.plugin(&name);
        let limits = config.limits(&name);
        plugins.insert(
            name.clone(),
            json!({
                "loaded": loaded.contains(&name),
                "allow": hosts_json(&cfg.allow),
                "allow_from_settings": cfg.allow_from_settings,
                "h2c": hosts_json(&cfg.h2c),
                "settings": cfg.settings.iter().map(|(k, s)| (k.clone(), setting_json(s))).collect::<Map<_, _>>(),
                "secrets": cfg.secrets.iter().map(|(k, s)| (k.clone(), secret_json(s))).collect::<Map<_, _>>(),
                "limits": {
                    "memory_mb": limits.memory_bytes >> 20,
                    "cpu_ms": limits.cpu_budget.as_millis() as u64,
                    "call_timeout_secs": limits.call_timeout.as_secs(),
                    "response_mb": limits.response_bytes >> 20,
                    "file_mb": limits.file_bytes >> 20,
                    "max_concurrent": limits.max_concurrent,
                },
                "sha256": cfg.sha256,
                "ca_files": cfg.ca_files.as_ref().map(|f| f.iter().map(|p| p.display().to_string()).collect::<Vec<_>>()),
            }),
        );
    }
    if !sandbox_host::local::operator_localbox(config) {
        if let Some(Value::Object(local)) = plugins.get_mut(LOCAL) {
            local.insert(
                "note".into(),
                Value::String("unset here, localbox-url and localbox-token point at the CLI's localbox daemon (`sandbox-host localbox status`)".into()),
            );
        }
    }
    let to_value = |v: Result<Value, serde_json::Error>| {
        v.map_err(|e| Failure::host(format!("configuration: {e}")))
    };
    let v = json!({
        "config_file": ctx.setup.config_file.display().to_string(),
        "config_file_found": ctx.setup.config_found,
        "home": ctx.setup.home.display().to_string(),
        "plugin_dirs": ctx.host.plugin_dirs().iter().map(|d| d.display().to_string()).collect::<Vec<_>>(),
        "host": to_value(serde_json::to_value(&config.host))?,
        "defaults": to_value(serde_json::to_value(&config.defaults))?,
        "localbox": to_value(serde_json::to_value(&config.localbox))?,
        "plugins": plugins,
    });
    if ctx.json {
        output::print_json(&v);
    } else {
        output::out(&output::render_config(&v));
    }
    Ok(0)
}

/// `localbox --daemon | --listen ADDR | stop | status`.
pub async fn localbox(
    setup: &Setup,
    json: bool,
    listen: Option<&str>,
    token: Option<String>,
    action: Option<&LocalboxCommand>,
    daemon_mode: bool,
) -> Res<i32> {
    if daemon_mode {
        daemon::run(&setup.home, &setup.config).await?;
        return Ok(0);
    }
    match (action, listen) {
        (Some(_), Some(_)) => Err(Failure::host(
            "--listen runs a localbox; `stop` and `status` are separate commands",
        )),
        (Some(LocalboxCommand::Stop), None) => {
            let stopped = daemon::stop(&setup.home)?;
            if json {
                output::print_json(&json!({ "stopped": stopped }));
            } else {
                output::line(if stopped {
                    "localbox daemon stopped"
                } else {
                    "no localbox daemon was running"
                });
            }
            Ok(0)
        }
        (Some(LocalboxCommand::Status), None) | (None, None) => {
            let info = daemon::running(&setup.home);
            if json {
                output::print_json(&match &info {
                    Some(i) => json!({ "running": true, "url": i.url, "pid": i.pid }),
                    None => json!({ "running": false, "url": null, "pid": null }),
                });
            } else {
                match &info {
                    Some(i) => output::line(format!(
                        "localbox daemon running at {} (pid {})",
                        i.url, i.pid
                    )),
                    None => output::line("no localbox daemon is running"),
                }
            }
            Ok(0)
        }
        (None, Some(addr)) => standalone(setup, json, addr, token).await,
    }
}

/// Runs localbox in the foreground, serving `addr` until Ctrl-C.
async fn standalone(setup: &Setup, json: bool, addr: &str, token: Option<String>) -> Res<i32> {
    let addr: SocketAddr = addr.parse().map_err(|_| {
        Failure::host(format!(
            "invalid --listen address {addr:?}: expected IP:PORT, e.g. 0.0.0.0:7070"
        ))
    })?;
    if let Some(d) = daemon::running(&setup.home) {
        return Err(Failure::host(format!(
            "the CLI's localbox daemon (pid {}) uses this state directory; stop it first (`sandbox-host localbox stop`) or set SANDBOX_HOST_HOME",
            d.pid
        )));
    }
    let engine = sandbox_host::local::engine_config(&setup.config.localbox, &setup.home)?;
    let (token, generated) = match token.filter(|t| !t.is_empty()) {
        Some(t) => (t, false),
        None => (
            format!(
                "{}{}",
                uuid::Uuid::new_v4().simple(),
                uuid::Uuid::new_v4().simple()
            ),
            true,
        ),
    };
    let mut server = localbox::ServerConfig::new(token.clone());
    if !addr.ip().is_unspecified() {
        server.advertise_host = addr.ip().to_string();
    }
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| Failure::host(format!("cannot listen on {addr}: {e}")))?;
    // The bound address: with port 0 the system picked one.
    let addr = listener
        .local_addr()
        .map_err(|e| Failure::host(e.to_string()))?;
    let url = format!("http://{addr}");
    if json {
        let mut v = json!({ "listen": addr.to_string(), "url": url });
        if generated {
            v["token"] = Value::String(token.clone());
        }
        output::print_ndjson(&v);
    } else {
        output::line(format!("localbox listening on {addr} (Ctrl-C stops it)"));
        if generated {
            output::line(format!("token: {token}"));
        }
        output::line(format!(
            "hosts reach it with LOCALBOX_URL={url} and LOCALBOX_TOKEN set to the token"
        ));
    }
    localbox::run_standalone(listener, engine, server, None).await?;
    Ok(0)
}
