//! `RuntimeService` over a [`node_core::RuntimeBackend`]: checks, delegation, CRI semantics.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use k8s_cri::v1::runtime_service_server::RuntimeService;
use node_core::{RuntimeError, cri};
use tonic::{Request, Response, Status};

use super::status::{invalid, to_status};
use super::{CriApi, filter, guarded, rpc, strict};

type Answer<T> = Result<Response<T>, Status>;

/// A required id field: `InvalidArgument` naming the field when it is empty.
fn need_id(method: &str, field: &str, id: &str) -> Result<(), Status> {
    if id.trim().is_empty() {
        return Err(invalid(method, format!("{field} is empty")));
    }
    Ok(())
}

/// A CRI timeout in seconds: negative is invalid.
fn seconds(method: &str, field: &str, n: i64) -> Result<Duration, Status> {
    u64::try_from(n)
        .map(Duration::from_secs)
        .map_err(|_| invalid(method, format!("{field} is negative ({n})")))
}

/// The backend's answer, with `NotFound` counting as success (idempotent stop/remove).
fn idempotent(method: &str, r: Result<(), RuntimeError>) -> Result<(), Status> {
    match r {
        Ok(()) => Ok(()),
        Err(e) if e.is_not_found() => {
            tracing::debug!(method, error = %e, "nothing to do: not found");
            Ok(())
        }
        Err(e) => Err(to_status(method, &e)),
    }
}

/// An id the backend answered for what it made: an empty one is the backend's fault (`Internal`).
fn need_answer(method: &str, what: &str, id: String) -> Result<String, Status> {
    if id.is_empty() {
        return Err(Status::internal(format!(
            "{method}: the runtime backend returned an empty {what}"
        )));
    }
    Ok(id)
}

/// The command of an exec: present, its first word not empty.
fn need_cmd(method: &str, cmd: &[String]) -> Result<(), Status> {
    if cmd.first().is_none_or(|c| c.is_empty()) {
        return Err(invalid(method, "cmd is empty"));
    }
    Ok(())
}

/// `NotFound` for a status call whose backend answered no status for `id`.
fn not_found(kind: &str, id: &str) -> Status {
    Status::not_found(format!("{kind} {id:?} not found"))
}

/// The body of an RPC whose request is one id and whose response is empty: the id field is
/// checked (`InvalidArgument` naming it when empty), the backend method named after `=>` called
/// with it, and its answer passed through `finish` ([`strict`] or [`idempotent`]).
macro_rules! by_id {
    ($r:ident, $method:literal: $field:ident => $finish:ident($self:ident.0.runtime.$call:ident)) => {
        rpc!(M = $method, $r, |req| {
            need_id(M, stringify!($field), &req.$field)?;
            $finish(M, $self.0.runtime.$call(&req.$field).await)?;
            Ok(Default::default())
        })
    };
}

/// The body of a status RPC (`PodSandboxStatus`, `ContainerStatus`): the id field checked, the
/// backend's method called with it and `verbose`, `NotFound` naming the `kind` when it answers
/// no status, and `info` kept only when `verbose` was asked.
macro_rules! status_by_id {
    ($r:ident, $method:literal: $field:ident => $self:ident.0.runtime.$call:ident, $kind:literal) => {
        rpc!(M = $method, $r, |req| {
            let id = &req.$field;
            need_id(M, stringify!($field), id)?;
            let mut resp = strict(M, $self.0.runtime.$call(id, req.verbose).await)?;
            if resp.status.is_none() {
                return Err(not_found($kind, id));
            }
            verbosity(&mut resp.info, req.verbose);
            Ok(resp)
        })
    };
}

/// The filter given to the backend: without the id, which the server matches itself (exactly or
/// by a unique prefix, as containerd does), so that truncated ids work with any backend.
fn without_id<F: Clone>(f: &Option<F>, id: impl Fn(&mut F) -> &mut String) -> Option<F> {
    f.clone().map(|mut f| {
        id(&mut f).clear();
        f
    })
}

/// `info` maps are only answered when `verbose` was asked.
fn verbosity(info: &mut HashMap<String, String>, verbose: bool) {
    if !verbose {
        info.clear();
    }
}

/// Check a sandbox config: metadata with a name and namespace, valid port mappings.
fn check_sandbox_config(
    method: &str,
    config: Option<&cri::PodSandboxConfig>,
) -> Result<(), Status> {
    let config = config.ok_or_else(|| invalid(method, "config is missing"))?;
    let meta = config
        .metadata
        .as_ref()
        .ok_or_else(|| invalid(method, "config.metadata is missing"))?;
    if meta.name.trim().is_empty() {
        return Err(invalid(method, "config.metadata.name is empty"));
    }
    if meta.namespace.trim().is_empty() {
        return Err(invalid(method, "config.metadata.namespace is empty"));
    }
    for (i, pm) in config.port_mappings.iter().enumerate() {
        if !(1..=65535).contains(&pm.container_port) {
            return Err(invalid(
                method,
                format!(
                    "config.port_mappings[{i}].container_port {} is not a port",
                    pm.container_port
                ),
            ));
        }
        if !(0..=65535).contains(&pm.host_port) {
            return Err(invalid(
                method,
                format!(
                    "config.port_mappings[{i}].host_port {} is not a port",
                    pm.host_port
                ),
            ));
        }
        if cri::Protocol::try_from(pm.protocol).is_err() {
            return Err(invalid(
                method,
                format!(
                    "config.port_mappings[{i}].protocol {} is not TCP, UDP or SCTP",
                    pm.protocol
                ),
            ));
        }
        if !pm.host_ip.is_empty() && pm.host_ip.parse::<std::net::IpAddr>().is_err() {
            return Err(invalid(
                method,
                format!(
                    "config.port_mappings[{i}].host_ip {:?} is not an IP address",
                    pm.host_ip
                ),
            ));
        }
    }
    Ok(())
}

/// Check a container config: metadata name, image, mounts, the user/group combination.
fn check_container_config(
    method: &str,
    config: Option<&cri::ContainerConfig>,
) -> Result<(), Status> {
    let config = config.ok_or_else(|| invalid(method, "config is missing"))?;
    let meta = config
        .metadata
        .as_ref()
        .ok_or_else(|| invalid(method, "config.metadata is missing"))?;
    if meta.name.trim().is_empty() {
        return Err(invalid(method, "config.metadata.name is empty"));
    }
    let image = config.image.as_ref().map(|i| i.image.trim()).unwrap_or("");
    if image.is_empty() {
        return Err(invalid(
            method,
            format!("container {:?}: config.image is empty", meta.name),
        ));
    }
    for (i, m) in config.mounts.iter().enumerate() {
        if m.container_path.is_empty() {
            return Err(invalid(
                method,
                format!(
                    "container {:?}: mounts[{i}].container_path is empty",
                    meta.name
                ),
            ));
        }
    }
    for (i, kv) in config.envs.iter().enumerate() {
        if kv.key.is_empty() {
            return Err(invalid(
                method,
                format!("container {:?}: envs[{i}].key is empty", meta.name),
            ));
        }
    }
    if let Some(sc) = config
        .linux
        .as_ref()
        .and_then(|l| l.security_context.as_ref())
        && sc.run_as_group.is_some()
        && sc.run_as_user.is_none()
        && sc.run_as_username.is_empty()
    {
        // the kubelet never sends this; cri-tools' validation expects it refused
        return Err(invalid(
            method,
            format!(
                "container {:?}: run_as_group is set without run_as_user or run_as_username",
                meta.name
            ),
        ));
    }
    Ok(())
}

/// The streams of an exec or attach: at least one, and no stderr with a TTY (it is merged).
fn check_streams(
    method: &str,
    tty: bool,
    stdin: bool,
    stdout: bool,
    stderr: bool,
) -> Result<(), Status> {
    if !(stdin || stdout || stderr) {
        return Err(invalid(
            method,
            "one of stdin, stdout and stderr must be set",
        ));
    }
    if tty && stderr {
        return Err(invalid(
            method,
            "tty and stderr cannot both be set (a TTY merges stderr into stdout)",
        ));
    }
    Ok(())
}

/// `RuntimeReady` and `NetworkReady`, filled in when the backend's answer lacks them.
fn with_conditions(mut resp: cri::StatusResponse) -> cri::StatusResponse {
    let status = resp.status.get_or_insert_with(Default::default);
    for t in ["RuntimeReady", "NetworkReady"] {
        if !status.conditions.iter().any(|c| c.r#type == t) {
            status.conditions.push(cri::RuntimeCondition {
                r#type: t.into(),
                status: true,
                reason: String::new(),
                message: "not reported by the runtime backend; assumed from its answer to Status"
                    .into(),
            });
        }
    }
    resp
}

/// The `Status` of a backend whose own `Status` failed: not ready, saying why.
fn not_ready(err: &RuntimeError) -> cri::StatusResponse {
    let cond = |t: &str, reason: &str| cri::RuntimeCondition {
        r#type: t.into(),
        status: false,
        reason: reason.into(),
        message: err.to_string(),
    };
    cri::StatusResponse {
        status: Some(cri::RuntimeStatus {
            conditions: vec![
                cond("RuntimeReady", "RuntimeStatusFailed"),
                cond("NetworkReady", "RuntimeStatusFailed"),
            ],
        }),
        ..Default::default()
    }
}

#[tonic::async_trait]
impl RuntimeService for CriApi {
    async fn version(&self, r: Request<cri::VersionRequest>) -> Answer<cri::VersionResponse> {
        rpc!(M = "Version", r, |_| strict(
            M,
            self.0.runtime.version().await
        ))
    }

    async fn status(&self, r: Request<cri::StatusRequest>) -> Answer<cri::StatusResponse> {
        rpc!(M = "Status", r, |req| {
            let verbose = req.verbose;
            let mut resp = match self.0.runtime.status(verbose).await {
                Ok(resp) => with_conditions(resp),
                Err(e) => {
                    tracing::warn!(error = %e, "the runtime backend's Status failed");
                    not_ready(&e)
                }
            };
            verbosity(&mut resp.info, verbose);
            if verbose {
                let cfg = &self.0.config;
                let server = serde_json::json!({
                    "name": "nodekit-cri-server",
                    "version": env!("CARGO_PKG_VERSION"),
                    "sandboxImage": cfg.sandbox_image,
                    "maxMessageSize": cfg.max_message_size,
                });
                resp.info.insert("server".into(), server.to_string());
            }
            Ok(resp)
        })
    }

    async fn run_pod_sandbox(
        &self,
        r: Request<cri::RunPodSandboxRequest>,
    ) -> Answer<cri::RunPodSandboxResponse> {
        rpc!(M = "RunPodSandbox", r, |req| {
            check_sandbox_config(M, req.config.as_ref())?;
            let id = strict(M, self.0.runtime.run_pod_sandbox(req).await)?;
            Ok(cri::RunPodSandboxResponse {
                pod_sandbox_id: need_answer(M, "sandbox id", id)?,
            })
        })
    }

    async fn stop_pod_sandbox(
        &self,
        r: Request<cri::StopPodSandboxRequest>,
    ) -> Answer<cri::StopPodSandboxResponse> {
        by_id!(r, "StopPodSandbox": pod_sandbox_id => idempotent(self.0.runtime.stop_pod_sandbox))
    }

    async fn remove_pod_sandbox(
        &self,
        r: Request<cri::RemovePodSandboxRequest>,
    ) -> Answer<cri::RemovePodSandboxResponse> {
        by_id!(r, "RemovePodSandbox": pod_sandbox_id =>
            idempotent(self.0.runtime.remove_pod_sandbox))
    }

    async fn pod_sandbox_status(
        &self,
        r: Request<cri::PodSandboxStatusRequest>,
    ) -> Answer<cri::PodSandboxStatusResponse> {
        status_by_id!(r, "PodSandboxStatus": pod_sandbox_id =>
            self.0.runtime.pod_sandbox_status, "pod sandbox")
    }

    async fn list_pod_sandbox(
        &self,
        r: Request<cri::ListPodSandboxRequest>,
    ) -> Answer<cri::ListPodSandboxResponse> {
        rpc!(M = "ListPodSandbox", r, |req| {
            let f = req.filter;
            let unfiltered = without_id(&f, |f| &mut f.id);
            let items = strict(M, self.0.runtime.list_pod_sandbox(unfiltered).await)?;
            Ok(cri::ListPodSandboxResponse {
                items: filter::pod_sandboxes(items, f.as_ref()),
            })
        })
    }

    async fn create_container(
        &self,
        r: Request<cri::CreateContainerRequest>,
    ) -> Answer<cri::CreateContainerResponse> {
        rpc!(M = "CreateContainer", r, |req| {
            need_id(M, "pod_sandbox_id", &req.pod_sandbox_id)?;
            check_container_config(M, req.config.as_ref())?;
            let id = strict(M, self.0.runtime.create_container(req).await)?;
            Ok(cri::CreateContainerResponse {
                container_id: need_answer(M, "container id", id)?,
            })
        })
    }

    async fn start_container(
        &self,
        r: Request<cri::StartContainerRequest>,
    ) -> Answer<cri::StartContainerResponse> {
        by_id!(r, "StartContainer": container_id => strict(self.0.runtime.start_container))
    }

    async fn stop_container(
        &self,
        r: Request<cri::StopContainerRequest>,
    ) -> Answer<cri::StopContainerResponse> {
        rpc!(M = "StopContainer", r, |req| {
            let id = &req.container_id;
            need_id(M, "container_id", id)?;
            let timeout = seconds(M, "timeout", req.timeout)?;
            idempotent(M, self.0.runtime.stop_container(id, timeout).await)?;
            Ok(cri::StopContainerResponse {})
        })
    }

    async fn remove_container(
        &self,
        r: Request<cri::RemoveContainerRequest>,
    ) -> Answer<cri::RemoveContainerResponse> {
        by_id!(r, "RemoveContainer": container_id => idempotent(self.0.runtime.remove_container))
    }

    async fn list_containers(
        &self,
        r: Request<cri::ListContainersRequest>,
    ) -> Answer<cri::ListContainersResponse> {
        rpc!(M = "ListContainers", r, |req| {
            let f = req.filter;
            let unfiltered = without_id(&f, |f| &mut f.id).map(|mut f| {
                f.pod_sandbox_id.clear();
                f
            });
            let items = strict(M, self.0.runtime.list_containers(unfiltered).await)?;
            Ok(cri::ListContainersResponse {
                containers: filter::containers(items, f.as_ref()),
            })
        })
    }

    async fn container_status(
        &self,
        r: Request<cri::ContainerStatusRequest>,
    ) -> Answer<cri::ContainerStatusResponse> {
        status_by_id!(r, "ContainerStatus": container_id =>
            self.0.runtime.container_status, "container")
    }

    async fn update_container_resources(
        &self,
        r: Request<cri::UpdateContainerResourcesRequest>,
    ) -> Answer<cri::UpdateContainerResourcesResponse> {
        rpc!(M = "UpdateContainerResources", r, |req| {
            need_id(M, "container_id", &req.container_id)?;
            if req.linux.is_none() && req.windows.is_none() {
                return Err(invalid(
                    M,
                    "no resources (linux and windows are both missing)",
                ));
            }
            strict(M, self.0.runtime.update_container_resources(req).await)?;
            Ok(cri::UpdateContainerResourcesResponse {})
        })
    }

    async fn reopen_container_log(
        &self,
        r: Request<cri::ReopenContainerLogRequest>,
    ) -> Answer<cri::ReopenContainerLogResponse> {
        by_id!(r, "ReopenContainerLog": container_id => strict(self.0.runtime.reopen_container_log))
    }

    async fn exec_sync(&self, r: Request<cri::ExecSyncRequest>) -> Answer<cri::ExecSyncResponse> {
        rpc!(M = "ExecSync", r, |req| {
            need_id(M, "container_id", &req.container_id)?;
            need_cmd(M, &req.cmd)?;
            let timeout = seconds(M, "timeout", req.timeout)?;
            let id = &req.container_id;
            strict(M, self.0.runtime.exec_sync(id, req.cmd, timeout).await)
        })
    }

    async fn exec(&self, r: Request<cri::ExecRequest>) -> Answer<cri::ExecResponse> {
        rpc!(M = "Exec", r, |req| {
            need_id(M, "container_id", &req.container_id)?;
            need_cmd(M, &req.cmd)?;
            check_streams(M, req.tty, req.stdin, req.stdout, req.stderr)?;
            strict(M, self.0.runtime.exec(req).await)
        })
    }

    async fn attach(&self, r: Request<cri::AttachRequest>) -> Answer<cri::AttachResponse> {
        rpc!(M = "Attach", r, |req| {
            need_id(M, "container_id", &req.container_id)?;
            check_streams(M, req.tty, req.stdin, req.stdout, req.stderr)?;
            strict(M, self.0.runtime.attach(req).await)
        })
    }

    async fn port_forward(
        &self,
        r: Request<cri::PortForwardRequest>,
    ) -> Answer<cri::PortForwardResponse> {
        rpc!(M = "PortForward", r, |req| {
            need_id(M, "pod_sandbox_id", &req.pod_sandbox_id)?;
            if let Some(p) = req.port.iter().find(|p| !(1..=65535).contains(*p)) {
                return Err(invalid(M, format!("port {p} is not a port")));
            }
            strict(M, self.0.runtime.port_forward(req).await)
        })
    }

    async fn container_stats(
        &self,
        r: Request<cri::ContainerStatsRequest>,
    ) -> Answer<cri::ContainerStatsResponse> {
        rpc!(M = "ContainerStats", r, |req| {
            need_id(M, "container_id", &req.container_id)?;
            let stats = strict(M, self.0.runtime.container_stats(&req.container_id).await)?;
            Ok(cri::ContainerStatsResponse { stats: Some(stats) })
        })
    }

    async fn list_container_stats(
        &self,
        r: Request<cri::ListContainerStatsRequest>,
    ) -> Answer<cri::ListContainerStatsResponse> {
        rpc!(M = "ListContainerStats", r, |req| {
            let f = req.filter;
            let unfiltered = without_id(&f, |f| &mut f.id);
            let stats = strict(M, self.0.runtime.list_container_stats(unfiltered).await)?;
            // stats do not say which sandbox a container is in: ask the container list
            let members: Option<HashSet<String>> = match f.as_ref() {
                Some(f) if !f.pod_sandbox_id.is_empty() => {
                    let cf = cri::ContainerFilter {
                        pod_sandbox_id: f.pod_sandbox_id.clone(),
                        ..Default::default()
                    };
                    let list = self.0.runtime.list_containers(Some(cf.clone())).await;
                    let list = filter::containers(strict(M, list)?, Some(&cf));
                    Some(list.into_iter().map(|c| c.id).collect())
                }
                _ => None,
            };
            Ok(cri::ListContainerStatsResponse {
                stats: filter::container_stats(stats, f.as_ref(), members.as_ref()),
            })
        })
    }

    async fn pod_sandbox_stats(
        &self,
        r: Request<cri::PodSandboxStatsRequest>,
    ) -> Answer<cri::PodSandboxStatsResponse> {
        rpc!(M = "PodSandboxStats", r, |req| {
            need_id(M, "pod_sandbox_id", &req.pod_sandbox_id)?;
            let stats = strict(
                M,
                self.0.runtime.pod_sandbox_stats(&req.pod_sandbox_id).await,
            )?;
            Ok(cri::PodSandboxStatsResponse { stats: Some(stats) })
        })
    }

    async fn list_pod_sandbox_stats(
        &self,
        r: Request<cri::ListPodSandboxStatsRequest>,
    ) -> Answer<cri::ListPodSandboxStatsResponse> {
        rpc!(M = "ListPodSandboxStats", r, |req| {
            let f = req.filter;
            let unfiltered = without_id(&f, |f| &mut f.id);
            let stats = strict(M, self.0.runtime.list_pod_sandbox_stats(unfiltered).await)?;
            Ok(cri::ListPodSandboxStatsResponse {
                stats: filter::pod_sandbox_stats(stats, f.as_ref()),
            })
        })
    }

    async fn update_runtime_config(
        &self,
        r: Request<cri::UpdateRuntimeConfigRequest>,
    ) -> Answer<cri::UpdateRuntimeConfigResponse> {
        rpc!(M = "UpdateRuntimeConfig", r, |req| {
            let config = req
                .runtime_config
                .ok_or_else(|| invalid(M, "runtime_config is missing"))?;
            match self.0.runtime.update_runtime_config(config).await {
                Ok(()) => {}
                // a runtime that does not use the pod CIDR has nothing to update
                Err(RuntimeError::Unimplemented(_)) => {
                    tracing::debug!("UpdateRuntimeConfig: the backend does not use it")
                }
                Err(e) => return Err(to_status(M, &e)),
            }
            Ok(cri::UpdateRuntimeConfigResponse {})
        })
    }

    async fn checkpoint_container(
        &self,
        r: Request<cri::CheckpointContainerRequest>,
    ) -> Answer<cri::CheckpointContainerResponse> {
        rpc!(M = "CheckpointContainer", r, |req| {
            need_id(M, "container_id", &req.container_id)?;
            Err(Status::unimplemented(format!(
                "{M}: checkpointing containers is not supported by this runtime"
            )))
        })
    }

    type GetContainerEventsStream =
        futures::stream::BoxStream<'static, Result<cri::ContainerEventResponse, Status>>;

    async fn get_container_events(
        &self,
        r: Request<cri::GetEventsRequest>,
    ) -> Answer<Self::GetContainerEventsStream> {
        use futures::StreamExt;
        // the stream ends when the server shuts down (it would hold the drain otherwise)
        let mut stop = self.0.events_stop.subscribe();
        rpc!(M = "GetContainerEvents", r, |_| {
            let events = strict(M, self.0.runtime.get_container_events().await)?;
            let stopped = async move {
                let _ = stop.wait_for(|s| *s).await;
            };
            Ok(events
                .map(|r| r.map_err(|e| to_status(M, &e)))
                .take_until(stopped)
                .boxed())
        })
    }

    async fn list_metric_descriptors(
        &self,
        _r: Request<cri::ListMetricDescriptorsRequest>,
    ) -> Answer<cri::ListMetricDescriptorsResponse> {
        // the runtime offers no metrics beyond the CRI stats: an empty list says so
        Ok(Response::new(cri::ListMetricDescriptorsResponse {
            descriptors: vec![],
        }))
    }

    async fn list_pod_sandbox_metrics(
        &self,
        _r: Request<cri::ListPodSandboxMetricsRequest>,
    ) -> Answer<cri::ListPodSandboxMetricsResponse> {
        Ok(Response::new(cri::ListPodSandboxMetricsResponse {
            pod_metrics: vec![],
        }))
    }

    async fn runtime_config(
        &self,
        _r: Request<cri::RuntimeConfigRequest>,
    ) -> Answer<cri::RuntimeConfigResponse> {
        match self.0.config.cgroup_driver {
            Some(driver) => Ok(Response::new(cri::RuntimeConfigResponse {
                linux: Some(cri::LinuxRuntimeConfiguration {
                    cgroup_driver: driver as i32,
                }),
            })),
            None => Err(Status::unimplemented(
                "RuntimeConfig: no cgroup driver configured for this CRI server (CriServerConfig::cgroup_driver); use the kubelet's --cgroup-driver",
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_conditions_are_filled_and_failures_are_not_ready() {
        let r = with_conditions(cri::StatusResponse::default());
        let c = r.status.unwrap().conditions;
        assert_eq!(
            c.iter()
                .map(|c| (c.r#type.as_str(), c.status))
                .collect::<Vec<_>>(),
            [("RuntimeReady", true), ("NetworkReady", true)]
        );
        let given = cri::StatusResponse {
            status: Some(cri::RuntimeStatus {
                conditions: vec![cri::RuntimeCondition {
                    r#type: "NetworkReady".into(),
                    status: false,
                    reason: "NoCni".into(),
                    message: "no config".into(),
                }],
            }),
            ..Default::default()
        };
        let c = with_conditions(given).status.unwrap().conditions;
        assert!(
            c.iter()
                .any(|c| c.r#type == "NetworkReady" && !c.status && c.reason == "NoCni")
        );
        assert!(c.iter().any(|c| c.r#type == "RuntimeReady" && c.status));
        let nr = not_ready(&RuntimeError::Unavailable("containerd is down".into()));
        assert!(
            nr.status
                .unwrap()
                .conditions
                .iter()
                .all(|c| !c.status && c.message.contains("containerd is down"))
        );
    }

    #[test]
    fn configs_are_checked_field_by_field() {
        let e = check_sandbox_config("RunPodSandbox", None).unwrap_err();
        assert_eq!(e.code(), tonic::Code::InvalidArgument);
        assert!(e.message().contains("config is missing"), "{}", e.message());
        let mut cfg = cri::PodSandboxConfig {
            metadata: Some(cri::PodSandboxMetadata {
                name: "web".into(),
                namespace: "default".into(),
                ..Default::default()
            }),
            ..Default::default()
        };
        check_sandbox_config("RunPodSandbox", Some(&cfg)).unwrap();
        cfg.port_mappings = vec![cri::PortMapping {
            container_port: 70000,
            ..Default::default()
        }];
        let e = check_sandbox_config("RunPodSandbox", Some(&cfg)).unwrap_err();
        assert!(
            e.message()
                .contains("port_mappings[0].container_port 70000"),
            "{}",
            e.message()
        );
        let c = cri::ContainerConfig {
            metadata: Some(cri::ContainerMetadata {
                name: "app".into(),
                attempt: 0,
            }),
            image: Some(cri::ImageSpec {
                image: "busybox".into(),
                ..Default::default()
            }),
            linux: Some(cri::LinuxContainerConfig {
                security_context: Some(cri::LinuxContainerSecurityContext {
                    run_as_group: Some(cri::Int64Value { value: 5 }),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        };
        let e = check_container_config("CreateContainer", Some(&c)).unwrap_err();
        assert!(e.message().contains("run_as_group"), "{}", e.message());
        assert!(check_streams("Exec", true, true, true, true).is_err());
        assert!(check_streams("Exec", false, false, false, false).is_err());
        check_streams("Exec", true, true, true, false).unwrap();
    }
}
