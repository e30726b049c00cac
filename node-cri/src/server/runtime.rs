//! `RuntimeService` over a [`node_core::RuntimeBackend`]: checks, delegation, CRI semantics.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use k8s_cri::v1::runtime_service_server::RuntimeService;
use node_core::{RuntimeError, cri};
use tonic::{Request, Response, Status};

use super::status::{invalid, to_status};
use super::{CriApi, filter, guarded};

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

/// The backend's answer, its error mapped to the call's status.
fn strict<T>(method: &str, r: Result<T, RuntimeError>) -> Result<T, Status> {
    r.map_err(|e| to_status(method, &e))
}

/// The body of an RPC whose request is one id: the id is checked, the backend called with it,
/// its answer passed through `finish` ([`strict`] or [`idempotent`]) and wrapped by `respond`.
macro_rules! by_id {
    ($r:ident, $method:literal, $field:ident, $finish:ident, |$id:ident| $call:expr, |$out:pat_param| $respond:expr) => {{
        const M: &str = $method;
        let $id = $r.into_inner().$field;
        guarded(M, async {
            need_id(M, stringify!($field), &$id)?;
            let $out = $finish(M, $call.await)?;
            Ok($respond)
        })
        .await
    }};
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
    async fn version(&self, _r: Request<cri::VersionRequest>) -> Answer<cri::VersionResponse> {
        guarded("Version", async {
            self.0
                .runtime
                .version()
                .await
                .map_err(|e| to_status("Version", &e))
        })
        .await
    }

    async fn status(&self, r: Request<cri::StatusRequest>) -> Answer<cri::StatusResponse> {
        let verbose = r.get_ref().verbose;
        guarded("Status", async {
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
        .await
    }

    async fn run_pod_sandbox(
        &self,
        r: Request<cri::RunPodSandboxRequest>,
    ) -> Answer<cri::RunPodSandboxResponse> {
        const M: &str = "RunPodSandbox";
        let req = r.into_inner();
        guarded(M, async {
            check_sandbox_config(M, req.config.as_ref())?;
            let id = self
                .0
                .runtime
                .run_pod_sandbox(req)
                .await
                .map_err(|e| to_status(M, &e))?;
            if id.is_empty() {
                return Err(Status::internal(format!(
                    "{M}: the runtime backend returned an empty sandbox id"
                )));
            }
            Ok(cri::RunPodSandboxResponse { pod_sandbox_id: id })
        })
        .await
    }

    async fn stop_pod_sandbox(
        &self,
        r: Request<cri::StopPodSandboxRequest>,
    ) -> Answer<cri::StopPodSandboxResponse> {
        by_id!(
            r,
            "StopPodSandbox",
            pod_sandbox_id,
            idempotent,
            |id| self.0.runtime.stop_pod_sandbox(&id),
            |()| cri::StopPodSandboxResponse {}
        )
    }

    async fn remove_pod_sandbox(
        &self,
        r: Request<cri::RemovePodSandboxRequest>,
    ) -> Answer<cri::RemovePodSandboxResponse> {
        by_id!(
            r,
            "RemovePodSandbox",
            pod_sandbox_id,
            idempotent,
            |id| self.0.runtime.remove_pod_sandbox(&id),
            |()| cri::RemovePodSandboxResponse {}
        )
    }

    async fn pod_sandbox_status(
        &self,
        r: Request<cri::PodSandboxStatusRequest>,
    ) -> Answer<cri::PodSandboxStatusResponse> {
        const M: &str = "PodSandboxStatus";
        let req = r.into_inner();
        guarded(M, async {
            need_id(M, "pod_sandbox_id", &req.pod_sandbox_id)?;
            let mut resp = self
                .0
                .runtime
                .pod_sandbox_status(&req.pod_sandbox_id, req.verbose)
                .await
                .map_err(|e| to_status(M, &e))?;
            if resp.status.is_none() {
                return Err(Status::not_found(format!(
                    "pod sandbox {:?} not found",
                    req.pod_sandbox_id
                )));
            }
            verbosity(&mut resp.info, req.verbose);
            Ok(resp)
        })
        .await
    }

    async fn list_pod_sandbox(
        &self,
        r: Request<cri::ListPodSandboxRequest>,
    ) -> Answer<cri::ListPodSandboxResponse> {
        const M: &str = "ListPodSandbox";
        let f = r.into_inner().filter;
        guarded(M, async {
            let items = self
                .0
                .runtime
                .list_pod_sandbox(without_id(&f, |f| &mut f.id))
                .await
                .map_err(|e| to_status(M, &e))?;
            Ok(cri::ListPodSandboxResponse {
                items: filter::pod_sandboxes(items, f.as_ref()),
            })
        })
        .await
    }

    async fn create_container(
        &self,
        r: Request<cri::CreateContainerRequest>,
    ) -> Answer<cri::CreateContainerResponse> {
        const M: &str = "CreateContainer";
        let req = r.into_inner();
        guarded(M, async {
            need_id(M, "pod_sandbox_id", &req.pod_sandbox_id)?;
            check_container_config(M, req.config.as_ref())?;
            let id = self
                .0
                .runtime
                .create_container(req)
                .await
                .map_err(|e| to_status(M, &e))?;
            if id.is_empty() {
                return Err(Status::internal(format!(
                    "{M}: the runtime backend returned an empty container id"
                )));
            }
            Ok(cri::CreateContainerResponse { container_id: id })
        })
        .await
    }

    async fn start_container(
        &self,
        r: Request<cri::StartContainerRequest>,
    ) -> Answer<cri::StartContainerResponse> {
        by_id!(
            r,
            "StartContainer",
            container_id,
            strict,
            |id| self.0.runtime.start_container(&id),
            |()| cri::StartContainerResponse {}
        )
    }

    async fn stop_container(
        &self,
        r: Request<cri::StopContainerRequest>,
    ) -> Answer<cri::StopContainerResponse> {
        const M: &str = "StopContainer";
        let req = r.into_inner();
        guarded(M, async {
            need_id(M, "container_id", &req.container_id)?;
            let timeout = seconds(M, "timeout", req.timeout)?;
            idempotent(
                M,
                self.0
                    .runtime
                    .stop_container(&req.container_id, timeout)
                    .await,
            )?;
            Ok(cri::StopContainerResponse {})
        })
        .await
    }

    async fn remove_container(
        &self,
        r: Request<cri::RemoveContainerRequest>,
    ) -> Answer<cri::RemoveContainerResponse> {
        by_id!(
            r,
            "RemoveContainer",
            container_id,
            idempotent,
            |id| self.0.runtime.remove_container(&id),
            |()| cri::RemoveContainerResponse {}
        )
    }

    async fn list_containers(
        &self,
        r: Request<cri::ListContainersRequest>,
    ) -> Answer<cri::ListContainersResponse> {
        const M: &str = "ListContainers";
        let f = r.into_inner().filter;
        guarded(M, async {
            let items = self
                .0
                .runtime
                .list_containers(without_id(&f, |f| &mut f.id).map(|mut f| {
                    f.pod_sandbox_id.clear();
                    f
                }))
                .await
                .map_err(|e| to_status(M, &e))?;
            Ok(cri::ListContainersResponse {
                containers: filter::containers(items, f.as_ref()),
            })
        })
        .await
    }

    async fn container_status(
        &self,
        r: Request<cri::ContainerStatusRequest>,
    ) -> Answer<cri::ContainerStatusResponse> {
        const M: &str = "ContainerStatus";
        let req = r.into_inner();
        guarded(M, async {
            need_id(M, "container_id", &req.container_id)?;
            let mut resp = self
                .0
                .runtime
                .container_status(&req.container_id, req.verbose)
                .await
                .map_err(|e| to_status(M, &e))?;
            if resp.status.is_none() {
                return Err(Status::not_found(format!(
                    "container {:?} not found",
                    req.container_id
                )));
            }
            verbosity(&mut resp.info, req.verbose);
            Ok(resp)
        })
        .await
    }

    async fn update_container_resources(
        &self,
        r: Request<cri::UpdateContainerResourcesRequest>,
    ) -> Answer<cri::UpdateContainerResourcesResponse> {
        const M: &str = "UpdateContainerResources";
        let req = r.into_inner();
        guarded(M, async {
            need_id(M, "container_id", &req.container_id)?;
            if req.linux.is_none() && req.windows.is_none() {
                return Err(invalid(
                    M,
                    "no resources (linux and windows are both missing)",
                ));
            }
            self.0
                .runtime
                .update_container_resources(req)
                .await
                .map_err(|e| to_status(M, &e))?;
            Ok(cri::UpdateContainerResourcesResponse {})
        })
        .await
    }

    async fn reopen_container_log(
        &self,
        r: Request<cri::ReopenContainerLogRequest>,
    ) -> Answer<cri::ReopenContainerLogResponse> {
        by_id!(
            r,
            "ReopenContainerLog",
            container_id,
            strict,
            |id| self.0.runtime.reopen_container_log(&id),
            |()| cri::ReopenContainerLogResponse {}
        )
    }

    async fn exec_sync(&self, r: Request<cri::ExecSyncRequest>) -> Answer<cri::ExecSyncResponse> {
        const M: &str = "ExecSync";
        let req = r.into_inner();
        guarded(M, async {
            need_id(M, "container_id", &req.container_id)?;
            if req.cmd.is_empty() || req.cmd[0].is_empty() {
                return Err(invalid(M, "cmd is empty"));
            }
            let timeout = seconds(M, "timeout", req.timeout)?;
            self.0
                .runtime
                .exec_sync(&req.container_id, req.cmd, timeout)
                .await
                .map_err(|e| to_status(M, &e))
        })
        .await
    }

    async fn exec(&self, r: Request<cri::ExecRequest>) -> Answer<cri::ExecResponse> {
        const M: &str = "Exec";
        let req = r.into_inner();
        guarded(M, async {
            need_id(M, "container_id", &req.container_id)?;
            if req.cmd.is_empty() || req.cmd[0].is_empty() {
                return Err(invalid(M, "cmd is empty"));
            }
            check_streams(M, req.tty, req.stdin, req.stdout, req.stderr)?;
            self.0.runtime.exec(req).await.map_err(|e| to_status(M, &e))
        })
        .await
    }

    async fn attach(&self, r: Request<cri::AttachRequest>) -> Answer<cri::AttachResponse> {
        const M: &str = "Attach";
        let req = r.into_inner();
        guarded(M, async {
            need_id(M, "container_id", &req.container_id)?;
            check_streams(M, req.tty, req.stdin, req.stdout, req.stderr)?;
            self.0
                .runtime
                .attach(req)
                .await
                .map_err(|e| to_status(M, &e))
        })
        .await
    }

    async fn port_forward(
        &self,
        r: Request<cri::PortForwardRequest>,
    ) -> Answer<cri::PortForwardResponse> {
        const M: &str = "PortForward";
        let req = r.into_inner();
        guarded(M, async {
            need_id(M, "pod_sandbox_id", &req.pod_sandbox_id)?;
            if let Some(p) = req.port.iter().find(|p| !(1..=65535).contains(*p)) {
                return Err(invalid(M, format!("port {p} is not a port")));
            }
            self.0
                .runtime
                .port_forward(req)
                .await
                .map_err(|e| to_status(M, &e))
        })
        .await
    }

    async fn container_stats(
        &self,
        r: Request<cri::ContainerStatsRequest>,
    ) -> Answer<cri::ContainerStatsResponse> {
        by_id!(
            r,
            "ContainerStats",
            container_id,
            strict,
            |id| self.0.runtime.container_stats(&id),
            |stats| cri::ContainerStatsResponse { stats: Some(stats) }
        )
    }

    async fn list_container_stats(
        &self,
        r: Request<cri::ListContainerStatsRequest>,
    ) -> Answer<cri::ListContainerStatsResponse> {
        const M: &str = "ListContainerStats";
        let f = r.into_inner().filter;
        guarded(M, async {
            let stats = self
                .0
                .runtime
                .list_container_stats(without_id(&f, |f| &mut f.id))
                .await
                .map_err(|e| to_status(M, &e))?;
            // stats do not say which sandbox a container is in: ask the container list
            let members: Option<HashSet<String>> = match f.as_ref() {
                Some(f) if !f.pod_sandbox_id.is_empty() => {
                    let cf = cri::ContainerFilter {
                        pod_sandbox_id: f.pod_sandbox_id.clone(),
                        ..Default::default()
                    };
                    let list = self
                        .0
                        .runtime
                        .list_containers(Some(cf.clone()))
                        .await
                        .map_err(|e| to_status(M, &e))?;
                    Some(
                        filter::containers(list, Some(&cf))
                            .into_iter()
                            .map(|c| c.id)
                            .collect(),
                    )
                }
                _ => None,
            };
            Ok(cri::ListContainerStatsResponse {
                stats: filter::container_stats(stats, f.as_ref(), members.as_ref()),
            })
        })
        .await
    }

    async fn pod_sandbox_stats(
        &self,
        r: Request<cri::PodSandboxStatsRequest>,
    ) -> Answer<cri::PodSandboxStatsResponse> {
        by_id!(
            r,
            "PodSandboxStats",
            pod_sandbox_id,
            strict,
            |id| self.0.runtime.pod_sandbox_stats(&id),
            |stats| cri::PodSandboxStatsResponse { stats: Some(stats) }
        )
    }

    async fn list_pod_sandbox_stats(
        &self,
        r: Request<cri::ListPodSandboxStatsRequest>,
    ) -> Answer<cri::ListPodSandboxStatsResponse> {
        const M: &str = "ListPodSandboxStats";
        let f = r.into_inner().filter;
        guarded(M, async {
            let stats = self
                .0
                .runtime
                .list_pod_sandbox_stats(without_id(&f, |f| &mut f.id))
                .await
                .map_err(|e| to_status(M, &e))?;
            Ok(cri::ListPodSandboxStatsResponse {
                stats: filter::pod_sandbox_stats(stats, f.as_ref()),
            })
        })
        .await
    }

    async fn update_runtime_config(
        &self,
        r: Request<cri::UpdateRuntimeConfigRequest>,
    ) -> Answer<cri::UpdateRuntimeConfigResponse> {
        const M: &str = "UpdateRuntimeConfig";
        let config = r.into_inner().runtime_config;
        guarded(M, async {
            let config = config.ok_or_else(|| invalid(M, "runtime_config is missing"))?;
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
        .await
    }

    async fn checkpoint_container(
        &self,
        r: Request<cri::CheckpointContainerRequest>,
    ) -> Answer<cri::CheckpointContainerResponse> {
        const M: &str = "CheckpointContainer";
        let id = r.into_inner().container_id;
        guarded(M, async {
            need_id(M, "container_id", &id)?;
            Err(Status::unimplemented(format!(
                "{M}: checkpointing containers is not supported by this runtime"
            )))
        })
        .await
    }

    type GetContainerEventsStream =
        futures::stream::BoxStream<'static, Result<cri::ContainerEventResponse, Status>>;

    async fn get_container_events(
        &self,
        _r: Request<cri::GetEventsRequest>,
    ) -> Answer<Self::GetContainerEventsStream> {
        use futures::StreamExt;
        const M: &str = "GetContainerEvents";
        // the stream ends when the server shuts down (it would hold the drain otherwise)
        let mut stop = self.0.events_stop.subscribe();
        guarded(M, async {
            let events = strict(M, self.0.runtime.get_container_events().await)?;
            let stopped = async move {
                let _ = stop.wait_for(|s| *s).await;
            };
            Ok(events
                .map(|r| r.map_err(|e| to_status(M, &e)))
                .take_until(stopped)
                .boxed())
        })
        .await
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
