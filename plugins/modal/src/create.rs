//! Create: the image from a registry tag (built when not cached) and the open ports.

use super::*;

/// Image id for a registry tag: get-or-create, then follow the build until it has a result.
pub(crate) fn image_id(tag: &str, app_id: &str, env: &str) -> Result<String> {
    let envr: pb::EnvironmentGetOrCreateResponse = rpc::control(
        "EnvironmentGetOrCreate",
        None,
        &pb::EnvironmentGetOrCreateRequest {
            deployment_name: env.into(),
            ..Default::default()
        },
    )?;
    let builder = envr
        .metadata
        .and_then(|m| m.settings)
        .map(|s| s.image_builder_version)
        .unwrap_or_default();
    let req = pb::ImageGetOrCreateRequest {
        image: Some(pb::Image {
            dockerfile_commands: vec![format!("FROM {tag}")],
            ..Default::default()
        }),
        app_id: app_id.into(),
        namespace: pb::DeploymentNamespace::Workspace as i32,
        builder_version: builder,
        ..Default::default()
    };
    let resp: pb::ImageGetOrCreateResponse = rpc::control("ImageGetOrCreate", None, &req)?;
    let mut status = resp.result.map(|r| r.status).unwrap_or(0);
    let mut last_entry = String::new();
    let started = Instant::now();
    while status == 0 {
        if started.elapsed() > Duration::from_secs(1800) {
            return Err(kit::timeout(format!(
                "image {tag} did not build within 30 minutes"
            )));
        }
        let join = pb::ImageJoinStreamingRequest {
            image_id: resp.image_id.clone(),
            timeout: 55.0,
            last_entry_id: last_entry.clone(),
            ..Default::default()
        };
        let mut stream = rpc::control_stream("ImageJoinStreaming", None, &join)?;
        loop {
            match stream.next_message() {
                Ok(Some(bytes)) => {
                    let m: pb::ImageJoinStreamingResponse =
                        prost::Message::decode(bytes.as_slice()).map_err(|e| {
                            kit::provider(0, format!("malformed image build message: {e}"))
                        })?;
                    if !m.entry_id.is_empty() {
                        last_entry = m.entry_id;
                    }
                    if let Some(r) = m.result.filter(|r| r.status != 0) {
                        status = r.status;
                        if r.status != pb::generic_result::GenericStatus::Success as i32 {
                            return Err(kit::invalid_argument(format!(
                                "image {tag} failed to build: {}",
                                r.exception
                            )));
                        }
                        break;
                    }
                }
                Ok(None) => break,
                Err(e) if e.is_retryable() => break,
                Err(e) => return Err(e.into()),
            }
        }
    }
    Ok(resp.image_id)
}

pub(crate) fn open_ports(spec: &Spec) -> Result<Option<pb::sandbox::OpenPortsOneof>> {
    let unencrypted: Vec<u16> = match kit::pair(&spec.options, "unencrypted-ports") {
        Some(list) => list
            .split(',')
            .filter(|s| !s.trim().is_empty())
            .map(|s| {
                s.trim().parse::<u16>().map_err(|_| {
                    kit::invalid_argument(format!("unencrypted-ports: {s:?} is not a port"))
                })
            })
            .collect::<Result<_>>()?,
        None => vec![],
    };
    let mut ports: Vec<pb::PortSpec> = spec
        .ports
        .iter()
        .filter(|p| !unencrypted.contains(p))
        .map(|p| pb::PortSpec {
            port: *p as u32,
            unencrypted: false,
            tunnel_type: None,
        })
        .collect();
    ports.extend(unencrypted.iter().map(|p| pb::PortSpec {
        port: *p as u32,
        unencrypted: true,
        tunnel_type: None,
    }));
    Ok(
        (!ports.is_empty()).then_some(pb::sandbox::OpenPortsOneof::OpenPorts(pb::PortSpecs {
            ports,
        })),
    )
}
