//! The control plane, `modal.client.ModalClient`: the RPC subset the SDK's sandbox path uses
//! (fact sheet §3), V2 first, with V1 mirrors where they are the same shape.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use axum::http::HeaderMap;
use axum::response::Response;

use crate::grpc::{self, code, decode_one, unary, GrpcResult, Status};
use crate::proto::client as pb;
use crate::state::{generic, jwt, new_id, Emu, SandboxRec};

/// Lifetime of the JWTs handed out (the SDK refreshes at about half of it).
const JWT_TTL_SECS: u64 = 3600;
/// The image builder version `EnvironmentGetOrCreate` reports (one 1.6.4 accepts).
const BUILDER_VERSION: &str = "2025.06";

/// Requires the account token pair on every control-plane call.
fn check_token(headers: &HeaderMap) -> GrpcResult<()> {
    let has = |h: &str| headers.get(h).is_some_and(|v| !v.is_empty());
    if !has("x-modal-token-id") || !has("x-modal-token-secret") {
        return Err(Status::unauthenticated(
            "missing x-modal-token-id / x-modal-token-secret",
        ));
    }
    Ok(())
}

/// `*V2` sandbox calls also carry the short-lived `x-modal-auth-token`.
fn check_auth_token(headers: &HeaderMap) -> GrpcResult<()> {
    match headers
        .get("x-modal-auth-token")
        .and_then(|v| v.to_str().ok())
        .and_then(crate::state::parse_jwt)
    {
        Some((_, exp)) if exp as f64 > crate::state::now_secs() => Ok(()),
        Some(_) => Err(Status::unauthenticated("x-modal-auth-token expired")),
        None => Err(Status::unauthenticated(
            "missing or malformed x-modal-auth-token",
        )),
    }
}

/// Answers one control-plane method.
pub async fn handle(
    emu: &Arc<Emu>,
    method: &str,
    headers: &HeaderMap,
    authority: &str,
    body: &[u8],
) -> Response {
    if let Err(s) = check_token(headers) {
        return grpc::error_response(&s);
    }
    if method.ends_with("V2") || method == "SandboxGetCommandRouterAccess" {
        if let Err(s) = check_auth_token(headers) {
            return grpc::error_response(&s);
        }
    }
    macro_rules! call {
        ($f:expr) => {
            match decode_one(body) {
                Ok(req) => unary($f(req).await),
                Err(s) => grpc::error_response(&s),
            }
        };
    }
    match method {
        "ClientHello" => call!(|_: ()| async {
            Ok(pb::ClientHelloResponse {
                image_builder_version: BUILDER_VERSION.into(),
                ..Default::default()
            })
        }),
        "AuthTokenGet" => call!(|_: pb::AuthTokenGetRequest| async {
            Ok(pb::AuthTokenGetResponse {
                token: jwt("auth", JWT_TTL_SECS),
            })
        }),
        "EnvironmentGetOrCreate" => call!(|r: pb::EnvironmentGetOrCreateRequest| async move {
            Ok(pb::EnvironmentGetOrCreateResponse {
                environment_id: format!("en-{}", r.deployment_name),
                metadata: Some(pb::EnvironmentMetadata {
                    name: r.deployment_name,
                    settings: Some(pb::EnvironmentSettings {
                        image_builder_version: BUILDER_VERSION.into(),
                        ..Default::default()
                    }),
                    ..Default::default()
                }),
            })
        }),
        "AppGetOrCreate" => call!(|r: pb::AppGetOrCreateRequest| app_get_or_create(emu, r)),
        "SecretGetOrCreate" => call!(|r: pb::SecretGetOrCreateRequest| async move {
            let id = new_id("st-");
            emu.secrets
                .lock()
                .unwrap()
                .insert(id.clone(), r.env_dict.into_iter().collect());
            Ok(pb::SecretGetOrCreateResponse {
                secret_id: id,
                ..Default::default()
            })
        }),
        "ImageGetOrCreate" => call!(|r: pb::ImageGetOrCreateRequest| image_get_or_create(emu, r)),
        "ImageJoinStreaming" => match decode_one::<pb::ImageJoinStreamingRequest>(body) {
            // A build "runs" on the first join: one log line, then the result.
            Ok(r) => {
                let (tx, rx) = tokio::sync::mpsc::channel(2);
                let tag = emu
                    .images
                    .lock()
                    .unwrap()
                    .get(&format!("id:{}", r.image_id))
                    .cloned();
                match tag {
                    None => {
                        let _ = tx.try_send(Err(Status::not_found(format!(
                            "image {} not found",
                            r.image_id
                        ))));
                    }
                    Some(tag) => {
                        emu.images
                            .lock()
                            .unwrap()
                            .insert(format!("built:{}", r.image_id), String::new());
                        let log = pb::ImageJoinStreamingResponse {
                            task_logs: vec![pb::TaskLogs {
                                data: format!("Step 1/1 : FROM {tag}\n"),
                                file_descriptor: 1,
                                ..Default::default()
                            }],
                            entry_id: "1".into(),
                            ..Default::default()
                        };
                        let done = pb::ImageJoinStreamingResponse {
                            result: Some(generic(pb::generic_result::GenericStatus::Success, 0)),
                            entry_id: "2".into(),
                            eof: true,
                            ..Default::default()
                        };
                        let _ = tx.try_send(Ok(grpc::frame(&log)));
                        let _ = tx.try_send(Ok(grpc::frame(&done)));
                    }
                }
                grpc::streaming(rx)
            }
            Err(s) => grpc::error_response(&s),
        },
        "SandboxCreateV2" => {
            let key = headers
                .get("x-idempotency-key")
                .and_then(|v| v.to_str().ok())
                .map(str::to_string);
            call!(|r: pb::SandboxCreateV2Request| sandbox_create(emu, r, key, authority))
        }
        "SandboxGetTaskIdV2" | "SandboxGetTaskId" => {
            call!(|r: pb::SandboxGetTaskIdRequest| async move {
                let sb = find(emu, &r.sandbox_id)?;
                Ok(pb::SandboxGetTaskIdResponse {
                    task_id: Some(sb.task_id),
                    task_result: emu.result_of(&r.sandbox_id),
                })
            })
        }
        "SandboxGetCommandRouterAccess" => {
            call!(|r: pb::SandboxGetCommandRouterAccessRequest| async move {
                use pb::sandbox_get_command_router_access_request::Target;
                let sb = match r.target {
                    Some(Target::SandboxId(id)) => find(emu, &id)?,
                    Some(Target::TaskId(t)) => emu
                        .sandbox_by_task(&t)
                        .ok_or_else(|| Status::not_found(format!("task {t} not found")))?,
                    None => return Err(Status::invalid("sandbox_id or task_id required")),
                };
                Ok(pb::SandboxGetCommandRouterAccessResponse {
                    jwt: emu.router_jwt(&sb.task_id, JWT_TTL_SECS),
                    url: router_url(emu, authority),
                    ..Default::default()
                })
            })
        }
        "SandboxWaitV2" | "SandboxWait" => call!(|r: pb::SandboxWaitRequest| sandbox_wait(emu, r)),
        "SandboxGetTunnelsV2" | "SandboxGetTunnels" => {
            call!(|r: pb::SandboxGetTunnelsRequest| async move {
                let sb = find(emu, &r.sandbox_id)?;
                Ok(pb::SandboxGetTunnelsResponse {
                    result: None,
                    tunnels: tunnels(&sb),
                })
            })
        }
        "SandboxListV2" | "SandboxList" => call!(|r: pb::SandboxListRequest| sandbox_list(emu, r)),
        "SandboxTagsSetV2" | "SandboxTagsSet" => call!(|r: pb::SandboxTagsSetRequest| async move {
            let mut all = emu.sandboxes.lock().unwrap();
            let sb = all
                .get_mut(&r.sandbox_id)
                .ok_or_else(|| Status::not_found(format!("sandbox {} not found", r.sandbox_id)))?;
            sb.tags = r
                .tags
                .into_iter()
                .map(|t| (t.tag_name, t.tag_value))
                .collect();
            Ok(())
        }),
        "SandboxTagsGetV2" | "SandboxTagsGet" => call!(|r: pb::SandboxTagsGetRequest| async move {
            let sb = find(emu, &r.sandbox_id)?;
            Ok(pb::SandboxTagsGetResponse {
                tags: tag_protos(&sb.tags),
            })
        }),
        "SandboxTerminateV2" | "SandboxTerminate" => {
            call!(|r: pb::SandboxTerminateRequest| sandbox_terminate(emu, r))
        }
        "SandboxGetFromNameV2" | "SandboxGetFromName" => {
            call!(|r: pb::SandboxGetFromNameRequest| async move {
                let all = emu.sandboxes.lock().unwrap();
                let sb = all
                    .values()
                    .find(|s| {
                        s.name.as_deref() == Some(r.sandbox_name.as_str())
                            && (r.include_terminated || s.result.is_none())
                    })
                    .ok_or_else(|| {
                        Status::not_found(format!("sandbox named {:?} not found", r.sandbox_name))
                    })?;
                Ok(pb::SandboxGetFromNameResponse {
                    sandbox_id: sb.id.clone(),
                    metadata: Some(pb::SandboxHandleMetadata {
                        app_id: sb.app_id.clone(),
                        ..Default::default()
                    }),
                })
            })
        }
        _ => grpc::error_response(&Status::new(
            code::UNIMPLEMENTED,
            format!("the emulator does not implement {method}"),
        )),
    }
}

/// The router is served on this same port, under the name the client used to reach us (so a
/// `localhost` client gets a `localhost` router URL, which is what lets the SDK use `http`),
/// unless a test set another authority.
fn router_url(emu: &Emu, authority: &str) -> String {
    match emu.router_authority.lock().unwrap().as_deref() {
        Some(other) => format!("http://{other}"),
        None => format!("http://{authority}"),
    }
}

fn find(emu: &Emu, id: &str) -> GrpcResult<SandboxRec> {
    emu.sandbox(id)
        .ok_or_else(|| Status::not_found(format!("sandbox {id} not found")))
}

fn tag_protos(tags: &[(String, String)]) -> Vec<pb::SandboxTag> {
    tags.iter()
        .map(|(k, v)| pb::SandboxTag {
            tag_name: k.clone(),
            tag_value: v.clone(),
        })
        .collect()
}

/// Sandboxes share the host's network: unencrypted ports are reached on loopback directly,
/// encrypted ones through the emulator's TLS proxy (see `tunnels`).
fn tunnels(sb: &SandboxRec) -> Vec<pb::TunnelData> {
    sb.ports
        .iter()
        .map(|p| pb::TunnelData {
            host: "localhost".into(),
            // Encrypted: the TLS proxy; unencrypted: the port itself.
            port: sb.proxy_ports.get(&p.port).copied().unwrap_or(p.port),
            unencrypted_host: p.unencrypted.then(|| "127.0.0.1".to_string()),
            unencrypted_port: p.unencrypted.then_some(p.port),
            container_port: p.port,
        })
        .collect()
}

async fn app_get_or_create(
    emu: &Emu,
    r: pb::AppGetOrCreateRequest,
) -> GrpcResult<pb::AppGetOrCreateResponse> {
    let key = (r.environment_name.clone(), r.app_name.clone());
    let mut apps = emu.apps.lock().unwrap();
    let id = match apps.get(&key) {
        Some(id) => id.clone(),
        None if r.object_creation_type == pb::ObjectCreationType::CreateIfMissing as i32 => {
            let id = new_id("ap-");
            apps.insert(key, id.clone());
            id
        }
        None => {
            return Err(Status::not_found(format!(
                "app {:?} not found in environment {:?}",
                r.app_name, r.environment_name
            )))
        }
    };
    Ok(pb::AppGetOrCreateResponse {
        app_id: id,
        ..Default::default()
    })
}

async fn image_get_or_create(
    emu: &Emu,
    r: pb::ImageGetOrCreateRequest,
) -> GrpcResult<pb::ImageGetOrCreateResponse> {
    let commands = r.image.map(|i| i.dockerfile_commands).unwrap_or_default();
    // The base image's name, for `sandbox.image` (`FROM alpine:3.20`).
    let tag = commands
        .iter()
        .find_map(|c| c.strip_prefix("FROM "))
        .unwrap_or("")
        .to_string();
    let key = commands.join("\n");
    let mut images = emu.images.lock().unwrap();
    let id = images.entry(key).or_insert_with(|| new_id("im-")).clone();
    images.insert(format!("id:{id}"), tag);
    // A new image is built (the client follows `ImageJoinStreaming`); later ones are cached.
    let built = images.contains_key(&format!("built:{id}"));
    Ok(pb::ImageGetOrCreateResponse {
        image_id: id,
        result: built.then(|| generic(pb::generic_result::GenericStatus::Success, 0)),
        metadata: None,
    })
}

async fn sandbox_create(
    emu: &Arc<Emu>,
    r: pb::SandboxCreateV2Request,
    key: Option<String>,
    authority: &str,
) -> GrpcResult<pb::SandboxCreateV2Response> {
    if let Some(k) = &key {
        if let Some(done) = emu.creates.lock().unwrap().get(k) {
            return Ok(done.clone());
        }
    }
    let def = r.definition.unwrap_or_default();
    let mut env: BTreeMap<String, String> = BTreeMap::new();
    for id in &def.secret_ids {
        if let Some(s) = emu.secrets.lock().unwrap().get(id) {
            env.extend(s.clone());
        }
    }
    for src in r.secret_sources {
        match src.source {
            Some(pb::secret_source::Source::SecretId(id)) => {
                let s = emu
                    .secrets
                    .lock()
                    .unwrap()
                    .get(&id)
                    .cloned()
                    .ok_or_else(|| Status::not_found(format!("secret {id} not found")))?;
                env.extend(s);
            }
            Some(pb::secret_source::Source::Env(m)) => env.extend(m.contents),
            None => {}
        }
    }
    if let Some(m) = def.environment_variables {
        env.extend(m.contents);
    }
    let image = emu
        .images
        .lock()
        .unwrap()
        .get(&format!("id:{}", def.image_id))
        .cloned()
        .filter(|t| !t.is_empty());
    let timeout_secs = if def.timeout_secs == 0 {
        300
    } else {
        def.timeout_secs
    };
    let spec = localbox::SandboxSpec {
        name: None,
        image,
        env,
        labels: Default::default(),
        timeout_secs: Some(timeout_secs as u64),
        workdir: def.workdir.clone(),
    };
    if let Some(name) = &def.name {
        let taken = emu
            .sandboxes
            .lock()
            .unwrap()
            .values()
            .any(|s| s.name.as_ref() == Some(name) && s.result.is_none());
        if taken {
            return Err(Status::new(
                code::ALREADY_EXISTS,
                format!("a sandbox named {name:?} already exists"),
            ));
        }
    }
    let info = emu.engine.create(spec).await?;
    let entrypoint_pid = if def.entrypoint_args.is_empty() {
        None
    } else {
        let req = localbox::ExecRequest::argv(def.entrypoint_args.clone());
        match emu.engine.start_process(&info.id, req).await {
            Ok(p) => Some(p.pid),
            Err(e) => {
                let _ = emu.engine.destroy(&info.id).await;
                return Err(e.into());
            }
        }
    };
    let ports = match def.open_ports_oneof {
        Some(pb::sandbox::OpenPortsOneof::OpenPorts(p)) => p.ports,
        None => vec![],
    };
    let id = new_id("sb-");
    let mut proxy_ports = std::collections::HashMap::new();
    if let Some(tls) = &emu.tls {
        let mut tasks = Vec::new();
        for p in ports.iter().filter(|p| !p.unencrypted) {
            let (proxy, task) = tls
                .proxy(p.port as u16)
                .await
                .map_err(|e| Status::internal(format!("tunnel: {e}")))?;
            proxy_ports.insert(p.port, proxy as u32);
            tasks.push(task);
        }
        emu.proxies.lock().unwrap().insert(id.clone(), tasks);
    }
    let rec = SandboxRec {
        id,
        proxy_ports,
        lb_id: info.id,
        app_id: r.app_id.clone(),
        task_id: format!("ta-{}V", &new_id("")[..21]),
        name: def.name,
        image_id: def.image_id,
        tags: r
            .tags
            .into_iter()
            .map(|t| (t.tag_name, t.tag_value))
            .collect(),
        created_at: emu.next_created_at(),
        ports,
        result: None,
        entrypoint_pid,
        timeout_secs,
    };
    let resp = pb::SandboxCreateV2Response {
        sandbox_id: rec.id.clone(),
        tunnels: tunnels(&rec),
        task_id: rec.task_id.clone(),
        metadata: Some(pb::SandboxHandleMetadata {
            app_id: r.app_id,
            ..Default::default()
        }),
        command_router_access: Some(pb::CommandRouterAccess {
            jwt: emu.router_jwt(&rec.task_id, JWT_TTL_SECS),
            url: router_url(emu, authority),
        }),
        sandbox_token: String::new(),
    };
    emu.sandboxes.lock().unwrap().insert(rec.id.clone(), rec);
    if let Some(k) = key {
        emu.creates.lock().unwrap().insert(k, resp.clone());
    }
    Ok(resp)
}

async fn sandbox_wait(emu: &Emu, r: pb::SandboxWaitRequest) -> GrpcResult<pb::SandboxWaitResponse> {
    let sb = find(emu, &r.sandbox_id)?;
    // Long-poll up to `timeout` seconds (bounded), checking every 100 ms.
    let deadline =
        tokio::time::Instant::now() + Duration::from_secs_f32(r.timeout.clamp(0.0, 55.0));
    let result = loop {
        let result = emu.result_of(&r.sandbox_id);
        if result.is_some() || tokio::time::Instant::now() >= deadline {
            break result;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    Ok(pb::SandboxWaitResponse {
        metadata: Some(pb::SandboxHandleMetadata {
            result: result.clone(),
            app_id: sb.app_id,
        }),
        result,
    })
}

async fn sandbox_list(emu: &Emu, r: pb::SandboxListRequest) -> GrpcResult<pb::SandboxListResponse> {
    let ids: Vec<String> = emu.sandboxes.lock().unwrap().keys().cloned().collect();
    let mut out: Vec<(f64, pb::SandboxInfo)> = Vec::new();
    for id in ids {
        let result = emu.result_of(&id);
        let Some(sb) = emu.sandbox(&id) else { continue };
        if !r.include_finished && result.is_some() {
            continue;
        }
        if !r.app_id.is_empty() && sb.app_id != r.app_id {
            continue;
        }
        // Strictly before: the client pages with the last `created_at` until a page is empty.
        if r.before_timestamp > 0.0 && sb.created_at >= r.before_timestamp {
            continue;
        }
        if !r.tags.iter().all(|t| {
            sb.tags
                .iter()
                .any(|(k, v)| *k == t.tag_name && *v == t.tag_value)
        }) {
            continue;
        }
        out.push((
            sb.created_at,
            pb::SandboxInfo {
                id: sb.id.clone(),
                created_at: sb.created_at,
                task_info: Some(pb::TaskInfo {
                    id: sb.task_id.clone(),
                    result: result.clone(),
                    sandbox_id: sb.id.clone(),
                    ..Default::default()
                }),
                app_id: sb.app_id.clone(),
                tags: tag_protos(&sb.tags),
                name: sb.name.clone().unwrap_or_default(),
                image_id: sb.image_id.clone(),
                timeout_secs: sb.timeout_secs,
                tunnels: tunnels(&sb),
                metadata: Some(pb::SandboxHandleMetadata {
                    result,
                    app_id: sb.app_id.clone(),
                }),
                ..Default::default()
            },
        ));
    }
    // Newest first, in pages of 100.
    out.sort_by(|a, b| b.0.total_cmp(&a.0));
    out.truncate(100);
    Ok(pb::SandboxListResponse {
        sandboxes: out.into_iter().map(|(_, s)| s).collect(),
    })
}

async fn sandbox_terminate(
    emu: &Emu,
    r: pb::SandboxTerminateRequest,
) -> GrpcResult<pb::SandboxTerminateResponse> {
    let existing = emu.result_of(&r.sandbox_id);
    let sb = find(emu, &r.sandbox_id)?;
    if existing.is_none() {
        let _ = emu.engine.destroy(&sb.lb_id).await;
        if let Some(s) = emu.sandboxes.lock().unwrap().get_mut(&r.sandbox_id) {
            s.result = Some(generic(pb::generic_result::GenericStatus::Terminated, 137));
        }
        crate::exec::forget_task(emu, &sb.task_id);
        for task in emu
            .proxies
            .lock()
            .unwrap()
            .remove(&sb.id)
            .unwrap_or_default()
        {
            task.abort();
        }
    }
    Ok(pb::SandboxTerminateResponse {
        existing_result: existing,
    })
}
