//! The CRI server against bad input, over gRPC on a temporary socket, with the FakeRuntime as
//! its backend (no root needed): every RPC with empty ids, unknown ids and malformed configs
//! answers the right code with a message; garbage and panics cost only their own call or
//! connection; the socket is 0660; shutdown drains in-flight calls. Also: the CRI proxy
//! composition (a server in front of a `CriClient`) and the server's round-trip overhead.

mod common;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::server::Served;
use node_core::{ImageBackend, RuntimeBackend, RuntimeError, cri};
use node_cri::server::{CriServer, CriServerConfig};
use node_test_support::FakeRuntime;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tonic::Code;

fn fake() -> Arc<FakeRuntime> {
    let rt = Arc::new(FakeRuntime::new());
    rt.add_image("busybox:test");
    rt
}

fn server(rt: &Arc<FakeRuntime>) -> CriServer {
    CriServer::new(rt.clone(), rt.clone())
}

/// Assert a call failed with `code` and a message containing every one of `words`.
#[track_caller]
fn fails<T: std::fmt::Debug>(
    r: Result<tonic::Response<T>, tonic::Status>,
    code: Code,
    words: &[&str],
) {
    match r {
        Ok(v) => panic!("expected {code:?}, got {v:?}"),
        Err(s) => {
            assert_eq!(s.code(), code, "{}", s.message());
            for w in words {
                assert!(s.message().contains(w), "{:?} lacks {w:?}", s.message());
            }
        }
    }
}

fn sandbox_config(name: &str) -> cri::PodSandboxConfig {
    cri::PodSandboxConfig {
        metadata: Some(cri::PodSandboxMetadata {
            name: name.into(),
            uid: format!("uid-{name}"),
            namespace: "default".into(),
            attempt: 0,
        }),
        labels: HashMap::from([("app".into(), name.into())]),
        ..Default::default()
    }
}

fn container_config(name: &str) -> cri::ContainerConfig {
    cri::ContainerConfig {
        metadata: Some(cri::ContainerMetadata {
            name: name.into(),
            attempt: 0,
        }),
        image: Some(cri::ImageSpec {
            image: "busybox:test".into(),
            ..Default::default()
        }),
        labels: HashMap::from([("tier".into(), name.into())]),
        ..Default::default()
    }
}

#[tokio::test]
async fn every_rpc_with_an_empty_id_is_invalid_argument_naming_the_field() {
    let rt = fake();
    let s = Served::start(server(&rt)).await;
    let mut c = s.runtime().await;
    let mut i = s.images().await;
    let bad = Code::InvalidArgument;
    fails(
        c.stop_pod_sandbox(cri::StopPodSandboxRequest::default())
            .await,
        bad,
        &["StopPodSandbox", "pod_sandbox_id is empty"],
    );
    fails(
        c.remove_pod_sandbox(cri::RemovePodSandboxRequest::default())
            .await,
        bad,
        &["RemovePodSandbox", "pod_sandbox_id"],
    );
    fails(
        c.pod_sandbox_status(cri::PodSandboxStatusRequest::default())
            .await,
        bad,
        &["PodSandboxStatus", "pod_sandbox_id"],
    );
    fails(
        c.create_container(cri::CreateContainerRequest {
            config: Some(container_config("a")),
            ..Default::default()
        })
        .await,
        bad,
        &["CreateContainer", "pod_sandbox_id"],
    );
    fails(
        c.start_container(cri::StartContainerRequest::default())
            .await,
        bad,
        &["StartContainer", "container_id"],
    );
    fails(
        c.stop_container(cri::StopContainerRequest::default()).await,
        bad,
        &["StopContainer", "container_id"],
    );
    fails(
        c.remove_container(cri::RemoveContainerRequest::default())
            .await,
        bad,
        &["RemoveContainer", "container_id"],
    );
    fails(
        c.container_status(cri::ContainerStatusRequest::default())
            .await,
        bad,
        &["ContainerStatus", "container_id"],
    );
    fails(
        c.update_container_resources(cri::UpdateContainerResourcesRequest::default())
            .await,
        bad,
        &["UpdateContainerResources", "container_id"],
    );
    fails(
        c.reopen_container_log(cri::ReopenContainerLogRequest::default())
            .await,
        bad,
        &["ReopenContainerLog", "container_id"],
    );
    fails(
        c.exec_sync(cri::ExecSyncRequest {
            cmd: vec!["true".into()],
            ..Default::default()
        })
        .await,
        bad,
        &["ExecSync", "container_id"],
    );
    fails(
        c.exec(cri::ExecRequest {
            cmd: vec!["sh".into()],
            stdout: true,
            ..Default::default()
        })
        .await,
        bad,
        &["Exec", "container_id"],
    );
    fails(
        c.attach(cri::AttachRequest {
            stdout: true,
            ..Default::default()
        })
        .await,
        bad,
        &["Attach", "container_id"],
    );
    fails(
        c.port_forward(cri::PortForwardRequest::default()).await,
        bad,
        &["PortForward", "pod_sandbox_id"],
    );
    fails(
        c.container_stats(cri::ContainerStatsRequest::default())
            .await,
        bad,
        &["ContainerStats", "container_id"],
    );
    fails(
        c.pod_sandbox_stats(cri::PodSandboxStatsRequest::default())
            .await,
        bad,
        &["PodSandboxStats", "pod_sandbox_id"],
    );
    fails(
        c.checkpoint_container(cri::CheckpointContainerRequest::default())
            .await,
        bad,
        &["CheckpointContainer", "container_id"],
    );
    fails(
        i.pull_image(cri::PullImageRequest::default()).await,
        bad,
        &["PullImage", "image is missing"],
    );
    fails(
        i.pull_image(cri::PullImageRequest {
            image: Some(cri::ImageSpec::default()),
            ..Default::default()
        })
        .await,
        bad,
        &["PullImage", "image.image is empty"],
    );
    fails(
        i.image_status(cri::ImageStatusRequest::default()).await,
        bad,
        &["ImageStatus", "image"],
    );
    fails(
        i.remove_image(cri::RemoveImageRequest {
            image: Some(cri::ImageSpec {
                image: " ".into(),
                ..Default::default()
            }),
        })
        .await,
        bad,
        &["RemoveImage", "image.image is empty"],
    );
    // none of them reached the backend
    assert!(rt.calls().is_empty(), "{:?}", rt.calls());
}

#[tokio::test]
async fn unknown_ids_are_not_found_on_status_calls_and_success_on_stop_and_remove() {
    let rt = fake();
    let s = Served::start(server(&rt)).await;
    let mut c = s.runtime().await;
    let mut i = s.images().await;
    let nf = Code::NotFound;
    fails(
        c.pod_sandbox_status(cri::PodSandboxStatusRequest {
            pod_sandbox_id: "nope".into(),
            verbose: false,
        })
        .await,
        nf,
        &["nope"],
    );
    fails(
        c.container_status(cri::ContainerStatusRequest {
            container_id: "nope".into(),
            verbose: true,
        })
        .await,
        nf,
        &["nope"],
    );
    fails(
        c.start_container(cri::StartContainerRequest {
            container_id: "nope".into(),
        })
        .await,
        nf,
        &["nope"],
    );
    fails(
        c.exec_sync(cri::ExecSyncRequest {
            container_id: "nope".into(),
            cmd: vec!["true".into()],
            timeout: 1,
        })
        .await,
        nf,
        &["nope"],
    );
    fails(
        c.create_container(cri::CreateContainerRequest {
            pod_sandbox_id: "nope".into(),
            config: Some(container_config("a")),
            sandbox_config: Some(sandbox_config("x")),
        })
        .await,
        nf,
        &["nope"],
    );
    // idempotent stop and remove: cri-tools' "should not return an error if not found"
    c.stop_pod_sandbox(cri::StopPodSandboxRequest {
        pod_sandbox_id: "nope".into(),
    })
    .await
    .unwrap();
    c.remove_pod_sandbox(cri::RemovePodSandboxRequest {
        pod_sandbox_id: "nope".into(),
    })
    .await
    .unwrap();
    c.stop_container(cri::StopContainerRequest {
        container_id: "nope".into(),
        timeout: 0,
    })
    .await
    .unwrap();
    c.remove_container(cri::RemoveContainerRequest {
        container_id: "nope".into(),
    })
    .await
    .unwrap();
    let fake_image = "0000000000000000000000000000000000000000000000000000000000000000";
    for _ in 0..2 {
        i.remove_image(cri::RemoveImageRequest {
            image: Some(cri::ImageSpec {
                image: fake_image.into(),
                ..Default::default()
            }),
        })
        .await
        .unwrap();
    }
    // an absent image has no status, which is no error
    let st = i
        .image_status(cri::ImageStatusRequest {
            image: Some(cri::ImageSpec {
                image: "absent:1".into(),
                ..Default::default()
            }),
            verbose: false,
        })
        .await
        .unwrap()
        .into_inner();
    assert!(st.image.is_none());
    // the backend was asked each time (the server did not guess)
    let calls = rt.calls();
    for m in [
        "stop_pod_sandbox",
        "remove_pod_sandbox",
        "container_status",
        "pod_sandbox_status",
    ] {
        assert!(
            calls.iter().any(|c| c.starts_with(m)),
            "{m} not in {calls:?}"
        );
    }
    // stopping twice a container that exists is fine too
    let mut cri_client = s.cri_client().await;
    let _ = &mut cri_client;
    let sb = c
        .run_pod_sandbox(cri::RunPodSandboxRequest {
            config: Some(sandbox_config("twice")),
            runtime_handler: String::new(),
        })
        .await
        .unwrap()
        .into_inner()
        .pod_sandbox_id;
    for _ in 0..2 {
        c.stop_pod_sandbox(cri::StopPodSandboxRequest {
            pod_sandbox_id: sb.clone(),
        })
        .await
        .unwrap();
    }
    for _ in 0..2 {
        c.remove_pod_sandbox(cri::RemovePodSandboxRequest {
            pod_sandbox_id: sb.clone(),
        })
        .await
        .unwrap();
    }
    assert!(rt.sandboxes().is_empty());
}

#[tokio::test]
async fn malformed_configs_are_invalid_argument_naming_the_field() {
    let rt = fake();
    let s = Served::start(server(&rt)).await;
    let mut c = s.runtime().await;
    let bad = Code::InvalidArgument;
    let run = |cfg: Option<cri::PodSandboxConfig>| cri::RunPodSandboxRequest {
        config: cfg,
        runtime_handler: String::new(),
    };
    fails(
        c.run_pod_sandbox(run(None)).await,
        bad,
        &["RunPodSandbox", "config is missing"],
    );
    fails(
        c.run_pod_sandbox(run(Some(cri::PodSandboxConfig::default())))
            .await,
        bad,
        &["config.metadata is missing"],
    );
    let mut no_name = sandbox_config("");
    no_name.metadata.as_mut().unwrap().name.clear();
    fails(
        c.run_pod_sandbox(run(Some(no_name))).await,
        bad,
        &["config.metadata.name is empty"],
    );
    let mut no_ns = sandbox_config("x");
    no_ns.metadata.as_mut().unwrap().namespace.clear();
    fails(
        c.run_pod_sandbox(run(Some(no_ns))).await,
        bad,
        &["config.metadata.namespace is empty"],
    );
    let mut bad_port = sandbox_config("x");
    bad_port.port_mappings = vec![cri::PortMapping {
        container_port: 80,
        host_port: 99999,
        ..Default::default()
    }];
    fails(
        c.run_pod_sandbox(run(Some(bad_port))).await,
        bad,
        &["port_mappings[0].host_port 99999"],
    );
    let mut bad_proto = sandbox_config("x");
    bad_proto.port_mappings = vec![cri::PortMapping {
        container_port: 80,
        protocol: 42,
        ..Default::default()
    }];
    fails(
        c.run_pod_sandbox(run(Some(bad_proto))).await,
        bad,
        &["protocol 42"],
    );
    let mut bad_ip = sandbox_config("x");
    bad_ip.port_mappings = vec![cri::PortMapping {
        container_port: 80,
        host_ip: "not-an-ip".into(),
        ..Default::default()
    }];
    fails(
        c.run_pod_sandbox(run(Some(bad_ip))).await,
        bad,
        &["not-an-ip"],
    );

    let sb = c
        .run_pod_sandbox(run(Some(sandbox_config("ok"))))
        .await
        .unwrap()
        .into_inner()
        .pod_sandbox_id;
    let create = |cfg: Option<cri::ContainerConfig>| cri::CreateContainerRequest {
        pod_sandbox_id: sb.clone(),
        config: cfg,
        sandbox_config: Some(sandbox_config("ok")),
    };
    fails(
        c.create_container(create(None)).await,
        bad,
        &["CreateContainer", "config is missing"],
    );
    let mut no_meta = container_config("a");
    no_meta.metadata = None;
    fails(
        c.create_container(create(Some(no_meta))).await,
        bad,
        &["config.metadata is missing"],
    );
    let mut no_image = container_config("a");
    no_image.image = None;
    fails(
        c.create_container(create(Some(no_image))).await,
        bad,
        &["\"a\"", "config.image is empty"],
    );
    let mut bad_mount = container_config("a");
    bad_mount.mounts = vec![cri::Mount {
        host_path: "/tmp".into(),
        ..Default::default()
    }];
    fails(
        c.create_container(create(Some(bad_mount))).await,
        bad,
        &["mounts[0].container_path is empty"],
    );
    let mut bad_env = container_config("a");
    bad_env.envs = vec![cri::KeyValue {
        key: String::new(),
        value: "v".into(),
    }];
    fails(
        c.create_container(create(Some(bad_env))).await,
        bad,
        &["envs[0].key is empty"],
    );
    let mut group_only = container_config("a");
    group_only.linux = Some(cri::LinuxContainerConfig {
        security_context: Some(cri::LinuxContainerSecurityContext {
            run_as_group: Some(cri::Int64Value { value: 1000 }),
            ..Default::default()
        }),
        ..Default::default()
    });
    fails(
        c.create_container(create(Some(group_only))).await,
        bad,
        &["run_as_group is set without run_as_user"],
    );

    let ctr = c
        .create_container(create(Some(container_config("a"))))
        .await
        .unwrap()
        .into_inner()
        .container_id;
    fails(
        c.exec_sync(cri::ExecSyncRequest {
            container_id: ctr.clone(),
            cmd: vec![],
            timeout: 1,
        })
        .await,
        bad,
        &["ExecSync", "cmd is empty"],
    );
    fails(
        c.exec_sync(cri::ExecSyncRequest {
            container_id: ctr.clone(),
            cmd: vec!["true".into()],
            timeout: -1,
        })
        .await,
        bad,
        &["timeout is negative"],
    );
    fails(
        c.stop_container(cri::StopContainerRequest {
            container_id: ctr.clone(),
            timeout: -5,
        })
        .await,
        bad,
        &["timeout is negative (-5)"],
    );
    fails(
        c.exec(cri::ExecRequest {
            container_id: ctr.clone(),
            cmd: vec!["sh".into()],
            ..Default::default()
        })
        .await,
        bad,
        &["one of stdin, stdout and stderr"],
    );
    fails(
        c.exec(cri::ExecRequest {
            container_id: ctr.clone(),
            cmd: vec!["sh".into()],
            tty: true,
            stdout: true,
            stderr: true,
            ..Default::default()
        })
        .await,
        bad,
        &["tty and stderr"],
    );
    fails(
        c.attach(cri::AttachRequest {
            container_id: ctr.clone(),
            ..Default::default()
        })
        .await,
        bad,
        &["one of stdin, stdout and stderr"],
    );
    fails(
        c.port_forward(cri::PortForwardRequest {
            pod_sandbox_id: sb.clone(),
            port: vec![80, 0],
        })
        .await,
        bad,
        &["port 0 is not a port"],
    );
    fails(
        c.update_container_resources(cri::UpdateContainerResourcesRequest {
            container_id: ctr.clone(),
            ..Default::default()
        })
        .await,
        bad,
        &["no resources"],
    );
    fails(
        c.update_runtime_config(cri::UpdateRuntimeConfigRequest::default())
            .await,
        bad,
        &["runtime_config is missing"],
    );
    // only the two good creations reached the backend
    let creates: Vec<_> = rt
        .calls()
        .into_iter()
        .filter(|c| c.starts_with("run_pod_sandbox") || c.starts_with("create_container"))
        .collect();
    assert_eq!(creates.len(), 2, "{creates:?}");
}

#[tokio::test]
async fn backend_errors_keep_their_code_and_message() {
    let rt = fake();
    let s = Served::start(server(&rt)).await;
    let mut c = s.runtime().await;
    let mut i = s.images().await;
    rt.fail_next(
        "run_pod_sandbox",
        RuntimeError::AlreadyExists("name \"web_default\" is reserved".into()),
    );
    fails(
        c.run_pod_sandbox(cri::RunPodSandboxRequest {
            config: Some(sandbox_config("web")),
            runtime_handler: String::new(),
        })
        .await,
        Code::AlreadyExists,
        &["RunPodSandbox", "reserved"],
    );
    rt.fail_next(
        "run_pod_sandbox",
        RuntimeError::Network("bridge nk0: no free address".into()),
    );
    fails(
        c.run_pod_sandbox(cri::RunPodSandboxRequest {
            config: Some(sandbox_config("web")),
            runtime_handler: String::new(),
        })
        .await,
        Code::Unknown,
        &["failed to set up network", "no free address"],
    );
    rt.fail_next(
        "pull_image",
        RuntimeError::ImagePull {
            image: "reg/x:1".into(),
            message: "manifest unknown".into(),
        },
    );
    fails(
        i.pull_image(cri::PullImageRequest {
            image: Some(cri::ImageSpec {
                image: "reg/x:1".into(),
                ..Default::default()
            }),
            ..Default::default()
        })
        .await,
        Code::Unknown,
        &["reg/x:1", "manifest unknown"],
    );
    rt.fail_next("stop_pod_sandbox", RuntimeError::Unavailable("busy".into()));
    fails(
        c.stop_pod_sandbox(cri::StopPodSandboxRequest {
            pod_sandbox_id: "x".into(),
        })
        .await,
        Code::Unavailable,
        &["busy"],
    );
    rt.fail_next(
        "list_containers",
        RuntimeError::Internal("state file corrupt".into()),
    );
    fails(
        c.list_containers(cri::ListContainersRequest::default())
            .await,
        Code::Internal,
        &["ListContainers", "state file corrupt"],
    );
    // a failing Status is an answer: not ready, saying why
    rt.fail_next("status", RuntimeError::Unavailable("restarting".into()));
    let st = c
        .status(cri::StatusRequest { verbose: false })
        .await
        .unwrap()
        .into_inner();
    let conds = st.status.unwrap().conditions;
    assert!(
        conds
            .iter()
            .any(|c| c.r#type == "RuntimeReady" && !c.status && c.message.contains("restarting")),
        "{conds:?}"
    );
}

#[tokio::test]
async fn optional_calls_answer_unimplemented_or_an_empty_answer_with_a_message() {
    let rt = fake();
    let s = Served::start(server(&rt)).await;
    let mut c = s.runtime().await;
    let mut i = s.images().await;
    let un = Code::Unimplemented;
    fails(
        c.exec(cri::ExecRequest {
            container_id: "c".into(),
            cmd: vec!["sh".into()],
            stdout: true,
            ..Default::default()
        })
        .await,
        un,
        &["Exec", "not implemented"],
    );
    fails(
        c.attach(cri::AttachRequest {
            container_id: "c".into(),
            stdout: true,
            ..Default::default()
        })
        .await,
        un,
        &["Attach"],
    );
    fails(
        c.port_forward(cri::PortForwardRequest {
            pod_sandbox_id: "p".into(),
            port: vec![80],
        })
        .await,
        un,
        &["PortForward"],
    );
    // the fake answers container stats (as the native runtime): an unknown container, none listed
    fails(
        c.container_stats(cri::ContainerStatsRequest {
            container_id: "c".into(),
        })
        .await,
        Code::NotFound,
        &["\"c\""],
    );
    assert!(
        c.list_container_stats(cri::ListContainerStatsRequest::default())
            .await
            .unwrap()
            .into_inner()
            .stats
            .is_empty()
    );
    fails(
        c.pod_sandbox_stats(cri::PodSandboxStatsRequest {
            pod_sandbox_id: "p".into(),
        })
        .await,
        un,
        &["PodSandboxStats"],
    );
    fails(
        c.list_pod_sandbox_stats(cri::ListPodSandboxStatsRequest::default())
            .await,
        un,
        &["ListPodSandboxStats"],
    );
    // the fake implements ReopenContainerLog (as the native runtime): an unknown container
    fails(
        c.reopen_container_log(cri::ReopenContainerLogRequest {
            container_id: "c".into(),
        })
        .await,
        Code::NotFound,
        &["\"c\""],
    );
    fails(
        c.update_container_resources(cri::UpdateContainerResourcesRequest {
            container_id: "c".into(),
            linux: Some(Default::default()),
            ..Default::default()
        })
        .await,
        un,
        &["UpdateContainerResources"],
    );
    fails(
        c.checkpoint_container(cri::CheckpointContainerRequest {
            container_id: "c".into(),
            ..Default::default()
        })
        .await,
        un,
        &["checkpointing"],
    );
    fails(
        c.get_container_events(cri::GetEventsRequest {}).await,
        un,
        &["GetContainerEvents"],
    );
    fails(
        c.runtime_config(cri::RuntimeConfigRequest {}).await,
        un,
        &["RuntimeConfig", "cgroup driver"],
    );
    fails(
        i.image_fs_info(cri::ImageFsInfoRequest {}).await,
        un,
        &["ImageFsInfo"],
    );
    assert!(
        c.list_metric_descriptors(cri::ListMetricDescriptorsRequest {})
            .await
            .unwrap()
            .into_inner()
            .descriptors
            .is_empty()
    );
    assert!(
        c.list_pod_sandbox_metrics(cri::ListPodSandboxMetricsRequest {})
            .await
            .unwrap()
            .into_inner()
            .pod_metrics
            .is_empty()
    );
    // a runtime that does not use the pod CIDR accepts it
    c.update_runtime_config(cri::UpdateRuntimeConfigRequest {
        runtime_config: Some(cri::RuntimeConfig {
            network_config: Some(cri::NetworkConfig {
                pod_cidr: "10.88.0.0/16".into(),
            }),
        }),
    })
    .await
    .unwrap();
    drop(s);

    // with a cgroup driver configured, RuntimeConfig answers it
    let s = Served::start(CriServer::with_config(
        rt.clone(),
        rt.clone(),
        CriServerConfig {
            cgroup_driver: Some(cri::CgroupDriver::Cgroupfs),
            ..Default::default()
        },
    ))
    .await;
    let rc = s
        .runtime()
        .await
        .runtime_config(cri::RuntimeConfigRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        rc.linux.unwrap().cgroup_driver,
        cri::CgroupDriver::Cgroupfs as i32
    );
}

#[tokio::test]
async fn filters_verbose_and_conditions_hold_whatever_the_backend_does() {
    let rt = fake();
    rt.add_image("docker.io/library/nginx:1.27");
    let s = Served::start(CriServer::with_config(
        rt.clone(),
        rt.clone(),
        CriServerConfig {
            sandbox_image: "busybox:test".into(),
            ..Default::default()
        },
    ))
    .await;
    let mut c = s.runtime().await;
    let i = s.images().await;
    let mut ids = vec![];
    for name in ["web", "db"] {
        let sb = c
            .run_pod_sandbox(cri::RunPodSandboxRequest {
                config: Some(sandbox_config(name)),
                runtime_handler: String::new(),
            })
            .await
            .unwrap()
            .into_inner()
            .pod_sandbox_id;
        let ctr = c
            .create_container(cri::CreateContainerRequest {
                pod_sandbox_id: sb.clone(),
                config: Some(container_config(name)),
                sandbox_config: Some(sandbox_config(name)),
            })
            .await
            .unwrap()
            .into_inner()
            .container_id;
        ids.push((sb, ctr));
    }
    c.start_container(cri::StartContainerRequest {
        container_id: ids[0].1.clone(),
    })
    .await
    .unwrap();
    c.stop_pod_sandbox(cri::StopPodSandboxRequest {
        pod_sandbox_id: ids[1].0.clone(),
    })
    .await
    .unwrap();
    let list_sb = |f: cri::PodSandboxFilter| {
        let mut c = c.clone();
        async move {
            let items = c
                .list_pod_sandbox(cri::ListPodSandboxRequest { filter: Some(f) })
                .await
                .unwrap()
                .into_inner()
                .items;
            items
                .into_iter()
                .map(|s| s.metadata.unwrap().name)
                .collect::<Vec<_>>()
        }
    };
    assert_eq!(
        list_sb(cri::PodSandboxFilter {
            label_selector: HashMap::from([("app".into(), "db".into())]),
            ..Default::default()
        })
        .await,
        ["db"]
    );
    assert_eq!(
        list_sb(cri::PodSandboxFilter {
            state: Some(cri::PodSandboxStateValue {
                state: cri::PodSandboxState::SandboxReady as i32
            }),
            ..Default::default()
        })
        .await,
        ["web"]
    );
    // ids match whole, or by a prefix naming one sandbox (here ambiguous: nothing)
    assert_eq!(
        list_sb(cri::PodSandboxFilter {
            id: ids[1].0.clone(),
            ..Default::default()
        })
        .await,
        ["db"]
    );
    let prefix = &ids[1].0[..ids[1].0.len() - 1];
    assert!(
        list_sb(cri::PodSandboxFilter {
            id: prefix.into(),
            ..Default::default()
        })
        .await
        .is_empty()
    );
    let running = c
        .list_containers(cri::ListContainersRequest {
            filter: Some(cri::ContainerFilter {
                state: Some(cri::ContainerStateValue {
                    state: cri::ContainerState::ContainerRunning as i32,
                }),
                ..Default::default()
            }),
        })
        .await
        .unwrap()
        .into_inner()
        .containers;
    assert_eq!(
        running.iter().map(|c| c.id.clone()).collect::<Vec<_>>(),
        [ids[0].1.clone()]
    );
    // the FakeRuntime ignores image filters: the server applies them
    let images = |want: &str| {
        let mut i = i.clone();
        let want = want.to_string();
        async move {
            i.list_images(cri::ListImagesRequest {
                filter: Some(cri::ImageFilter {
                    image: Some(cri::ImageSpec {
                        image: want,
                        ..Default::default()
                    }),
                }),
            })
            .await
            .unwrap()
            .into_inner()
            .images
        }
    };
    assert_eq!(images("nginx:1.27").await.len(), 1);
    assert_eq!(images("busybox:test").await.len(), 1);
    assert!(images("redis").await.is_empty());
    // the sandbox image is pinned, others are not
    assert!(images("busybox:test").await[0].pinned);
    assert!(!images("nginx:1.27").await[0].pinned);
    // Status: both conditions; info only when verbose
    let st = c
        .status(cri::StatusRequest { verbose: false })
        .await
        .unwrap()
        .into_inner();
    let types: Vec<_> = st
        .status
        .unwrap()
        .conditions
        .into_iter()
        .map(|c| (c.r#type, c.status))
        .collect();
    assert_eq!(
        types,
        [
            ("RuntimeReady".to_string(), true),
            ("NetworkReady".to_string(), true)
        ]
    );
    assert!(st.info.is_empty());
    let st = c
        .status(cri::StatusRequest { verbose: true })
        .await
        .unwrap()
        .into_inner();
    let info: serde_json::Value = serde_json::from_str(&st.info["server"]).unwrap();
    assert_eq!(info["sandboxImage"], "busybox:test");
    let v = c
        .version(cri::VersionRequest {
            version: "0.1.0".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        (v.runtime_name.as_str(), v.runtime_api_version.as_str()),
        ("fake", "v1")
    );
}

/// A backend whose every call panics.
struct Panicking;

#[async_trait::async_trait]
impl RuntimeBackend for Panicking {
    async fn version(&self) -> Result<cri::VersionResponse, RuntimeError> {
        panic!("version exploded")
    }
    async fn status(&self, _v: bool) -> Result<cri::StatusResponse, RuntimeError> {
        panic!("status exploded")
    }
    async fn run_pod_sandbox(&self, _r: cri::RunPodSandboxRequest) -> Result<String, RuntimeError> {
        panic!("run exploded")
    }
    async fn stop_pod_sandbox(&self, _id: &str) -> Result<(), RuntimeError> {
        panic!("stop exploded")
    }
    async fn remove_pod_sandbox(&self, _id: &str) -> Result<(), RuntimeError> {
        panic!("remove exploded")
    }
    async fn pod_sandbox_status(
        &self,
        _id: &str,
        _v: bool,
    ) -> Result<cri::PodSandboxStatusResponse, RuntimeError> {
        panic!("status exploded")
    }
    async fn list_pod_sandbox(
        &self,
        _f: Option<cri::PodSandboxFilter>,
    ) -> Result<Vec<cri::PodSandbox>, RuntimeError> {
        let v: Vec<i32> = vec![];
        #[allow(clippy::useless_vec)]
        let _ = v[3]; // an index out of bounds, as a real bug would
        Ok(vec![])
    }
    async fn create_container(
        &self,
        _r: cri::CreateContainerRequest,
    ) -> Result<String, RuntimeError> {
        panic!("create exploded")
    }
    async fn start_container(&self, _id: &str) -> Result<(), RuntimeError> {
        panic!("start exploded")
    }
    async fn stop_container(&self, _id: &str, _t: Duration) -> Result<(), RuntimeError> {
        panic!("stop exploded")
    }
    async fn remove_container(&self, _id: &str) -> Result<(), RuntimeError> {
        panic!("remove exploded")
    }
    async fn container_status(
        &self,
        _id: &str,
        _v: bool,
    ) -> Result<cri::ContainerStatusResponse, RuntimeError> {
        panic!("status exploded")
    }
    async fn list_containers(
        &self,
        _f: Option<cri::ContainerFilter>,
    ) -> Result<Vec<cri::Container>, RuntimeError> {
        panic!("list exploded")
    }
    async fn exec_sync(
        &self,
        _id: &str,
        _c: Vec<String>,
        _t: Duration,
    ) -> Result<cri::ExecSyncResponse, RuntimeError> {
        panic!("exec exploded")
    }
}

#[tokio::test]
async fn a_panicking_backend_answers_internal_and_the_server_keeps_serving() {
    let images = fake();
    let s = Served::start(CriServer::new(Arc::new(Panicking), images.clone())).await;
    let mut c = s.runtime().await;
    for _ in 0..3 {
        fails(
            c.version(cri::VersionRequest::default()).await,
            Code::Internal,
            &["Version", "panicked", "version exploded"],
        );
        fails(
            c.list_pod_sandbox(cri::ListPodSandboxRequest::default())
                .await,
            Code::Internal,
            &["ListPodSandbox", "panicked", "index out of bounds"],
        );
        fails(
            c.stop_container(cri::StopContainerRequest {
                container_id: "x".into(),
                timeout: 1,
            })
            .await,
            Code::Internal,
            &["stop exploded"],
        );
    }
    // the same connection and a new one are still served
    let l = s
        .images()
        .await
        .list_images(cri::ListImagesRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(l.images.len(), 1);
    fails(
        c.status(cri::StatusRequest::default()).await,
        Code::Internal,
        &["Status", "status exploded"],
    );
}

#[tokio::test]
async fn garbage_from_one_client_does_not_disturb_another() {
    let rt = fake();
    let s = Served::start(server(&rt)).await;
    let mut good = s.runtime().await;
    good.version(cri::VersionRequest::default()).await.unwrap();
    let socket = s.socket.clone();
    let garbage = tokio::spawn(async move {
        let mut answered = 0;
        for n in 0..50u32 {
            let mut raw = tokio::net::UnixStream::connect(&socket).await.unwrap();
            let junk: Vec<u8> = match n % 3 {
                0 => b"GET / HTTP/1.1\r\nHost: x\r\n\r\n".to_vec(),
                1 => (0..4096u32)
                    .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
                    .collect(),
                // a valid HTTP/2 preface followed by nonsense frames
                _ => [b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".as_slice(), &[0xff; 64]].concat(),
            };
            let _ = raw.write_all(&junk).await;
            let mut buf = vec![0u8; 1024];
            if let Ok(Ok(n)) =
                tokio::time::timeout(Duration::from_secs(5), raw.read(&mut buf)).await
            {
                answered += usize::from(n > 0);
            }
        }
        answered
    });
    // a gRPC call whose message is not protobuf
    let mut raw = tonic::client::Grpc::new(common::server::channel(&s.socket).await);
    raw.ready().await.unwrap();
    let r: Result<tonic::Response<cri::VersionResponse>, _> = raw
        .unary(
            tonic::Request::new(vec![0xffu8, 0xff, 0xff, 0x01]),
            http::uri::PathAndQuery::from_static("/runtime.v1.RuntimeService/StopPodSandbox"),
            RawCodec,
        )
        .await;
    let e = r.unwrap_err();
    assert!(!e.message().is_empty(), "{e:?}");
    assert_ne!(e.code(), Code::Ok);
    // the well-behaved client is served all along
    let t0 = Instant::now();
    let mut served = 0;
    while !garbage.is_finished() || served < 20 {
        good.version(cri::VersionRequest::default())
            .await
            .expect("the good client keeps being served");
        good.list_pod_sandbox(cri::ListPodSandboxRequest::default())
            .await
            .unwrap();
        served += 1;
        assert!(
            t0.elapsed() < Duration::from_secs(60),
            "garbage client never finished"
        );
    }
    let answered = garbage.await.unwrap();
    assert!(answered > 0, "the server answers or closes bad connections");
    assert!(served >= 20);
}

/// Sends raw bytes as the message and decodes the answer as a `VersionResponse` (never reached).
#[derive(Clone, Copy)]
struct RawCodec;

struct RawEncoder;
struct ProstDecoder;

impl tonic::codec::Encoder for RawEncoder {
    type Item = Vec<u8>;
    type Error = tonic::Status;
    fn encode(
        &mut self,
        item: Vec<u8>,
        dst: &mut tonic::codec::EncodeBuf<'_>,
    ) -> Result<(), tonic::Status> {
        use bytes::BufMut;
        dst.put_slice(&item);
        Ok(())
    }
}

impl tonic::codec::Decoder for ProstDecoder {
    type Item = cri::VersionResponse;
    type Error = tonic::Status;
    fn decode(
        &mut self,
        src: &mut tonic::codec::DecodeBuf<'_>,
    ) -> Result<Option<cri::VersionResponse>, tonic::Status> {
        use bytes::Buf;
        let b = src.copy_to_bytes(src.remaining());
        prost::Message::decode(b)
            .map(Some)
            .map_err(|e| tonic::Status::internal(e.to_string()))
    }
}

impl tonic::codec::Codec for RawCodec {
    type Encode = Vec<u8>;
    type Decode = cri::VersionResponse;
    type Encoder = RawEncoder;
    type Decoder = ProstDecoder;
    fn encoder(&mut self) -> RawEncoder {
        RawEncoder
    }
    fn decoder(&mut self) -> ProstDecoder {
        ProstDecoder
    }
}

#[tokio::test]
async fn the_socket_is_0660_root_owned_and_removed_after_a_graceful_shutdown() {
    use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
    let rt = fake();
    rt.set_pull_delay(Duration::from_millis(700));
    let mut s = Served::start(server(&rt)).await;
    let m = std::fs::symlink_metadata(&s.socket).unwrap();
    assert!(m.file_type().is_socket());
    assert_eq!(m.permissions().mode() & 0o7777, 0o660);
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        assert_eq!((m.uid(), m.gid()), (0, 0), "root-owned");
    }
    // a call in flight when shutdown begins still completes
    let mut i = s.images().await;
    let pull = tokio::spawn(async move {
        i.pull_image(cri::PullImageRequest {
            image: Some(cri::ImageSpec {
                image: "slow:1".into(),
                ..Default::default()
            }),
            ..Default::default()
        })
        .await
    });
    tokio::time::sleep(Duration::from_millis(200)).await;
    let stopping = s.begin_stop();
    let t0 = Instant::now();
    let pulled = pull
        .await
        .unwrap()
        .expect("the in-flight pull completes during the drain");
    assert!(!pulled.into_inner().image_ref.is_empty());
    tokio::time::timeout(Duration::from_secs(30), stopping)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert!(
        t0.elapsed() >= Duration::from_millis(300),
        "the server waited for the pull"
    );
    assert!(!s.socket.exists(), "the socket is removed on shutdown");
    assert!(tokio::net::UnixStream::connect(&s.socket).await.is_err());
}

#[tokio::test]
async fn a_stale_socket_is_replaced_and_a_live_one_is_refused() {
    let rt = fake();
    let s = Served::start(server(&rt)).await;
    // a second server on the same socket is refused, the first one keeps serving
    let e = CriServer::new(rt.clone(), rt.clone())
        .serve(&s.socket, async {})
        .await
        .unwrap_err();
    assert!(e.to_string().contains("another server is listening"), "{e}");
    s.runtime()
        .await
        .version(cri::VersionRequest::default())
        .await
        .unwrap();
    // a socket left by a dead server is replaced
    let dir = tempfile::tempdir().unwrap();
    let stale = dir.path().join("cri.sock");
    drop(std::os::unix::net::UnixListener::bind(&stale).unwrap());
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let path = stale.clone();
    let task = tokio::spawn(
        CriServer::new(rt.clone(), rt.clone()).serve(path, async move {
            let _ = rx.await;
        }),
    );
    let client = async {
        loop {
            if let Ok(c) = node_cri::CriClient::connect(node_cri::CriClientConfig {
                endpoint: stale.display().to_string(),
                ..Default::default()
            })
            .await
            {
                return c;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    };
    let c = tokio::time::timeout(Duration::from_secs(10), client)
        .await
        .expect("served on the replaced socket");
    assert_eq!(c.runtime_name(), "fake");
    tx.send(()).unwrap();
    task.await.unwrap().unwrap();
}

#[tokio::test]
async fn a_server_in_front_of_a_cri_client_is_a_cri_proxy() {
    let rt = fake();
    let inner = Served::start(server(&rt)).await;
    // the one line of composition: any backend, here a CRI client of another server
    let upstream = Arc::new(inner.cri_client().await);
    let proxy = Served::start(CriServer::new(upstream.clone(), upstream)).await;
    let c = proxy.cri_client().await;
    assert_eq!(c.runtime_name(), "fake");
    let sb = c
        .run_pod_sandbox(cri::RunPodSandboxRequest {
            config: Some(sandbox_config("via-proxy")),
            runtime_handler: String::new(),
        })
        .await
        .unwrap();
    let ctr = c
        .create_container(cri::CreateContainerRequest {
            pod_sandbox_id: sb.clone(),
            config: Some(container_config("app")),
            sandbox_config: Some(sandbox_config("via-proxy")),
        })
        .await
        .unwrap();
    c.start_container(&ctr).await.unwrap();
    assert_eq!(
        rt.containers().len(),
        1,
        "the call reached the backend two hops away"
    );
    // errors keep their meaning over two hops
    let e = c.container_status("missing", false).await.unwrap_err();
    assert!(
        matches!(e, RuntimeError::NotFound { kind: "container", ref id } if id == "missing"),
        "{e:?}"
    );
    rt.fail_next(
        "start_container",
        RuntimeError::FailedPrecondition("container is running".into()),
    );
    let e = c.start_container(&ctr).await.unwrap_err();
    assert!(
        matches!(e, RuntimeError::FailedPrecondition(ref m) if m.contains("container is running")),
        "{e:?}"
    );
    c.remove_pod_sandbox(&sb).await.unwrap();
    assert!(rt.sandboxes().is_empty());
    let _ = c
        .pull_image(
            cri::ImageSpec {
                image: "reg/app:2".into(),
                ..Default::default()
            },
            None,
            None,
        )
        .await
        .unwrap();
    assert!(
        c.image_status(
            cri::ImageSpec {
                image: "reg/app:2".into(),
                ..Default::default()
            },
            false
        )
        .await
        .unwrap()
        .image
        .is_some()
    );
}

/// Percentiles of a set of durations, in microseconds.
fn micros(mut v: Vec<Duration>) -> String {
    v.sort();
    let at = |q: f64| v[((q * v.len() as f64) as usize).min(v.len() - 1)].as_secs_f64() * 1e6;
    format!(
        "p50 {:7.1} us  p90 {:7.1} us  p99 {:7.1} us",
        at(0.5),
        at(0.9),
        at(0.99)
    )
}

/// The figure: what a round trip through the server costs over calling the backend directly
/// (printed, not asserted; run with `--nocapture`; noisy on a shared machine).
#[tokio::test]
async fn round_trip_latency_through_the_server_vs_direct() {
    const N: usize = 300;
    let rt = fake();
    let s = Served::start(server(&rt)).await;
    let client = s.cri_client().await;
    let direct: &dyn RuntimeBackend = rt.as_ref();
    let via: &dyn RuntimeBackend = &client;
    let mut rows = vec![];
    for (name, backend) in [("direct", direct), ("via CriServer", via)] {
        let mut version = vec![];
        let mut run = vec![];
        for n in 0..N {
            let t = Instant::now();
            backend.version().await.unwrap();
            version.push(t.elapsed());
            let t = Instant::now();
            let id = backend
                .run_pod_sandbox(cri::RunPodSandboxRequest {
                    config: Some(sandbox_config(&format!("{name}-{n}"))),
                    runtime_handler: String::new(),
                })
                .await
                .unwrap();
            run.push(t.elapsed());
            backend.remove_pod_sandbox(&id).await.unwrap();
        }
        rows.push(format!("{name:>14} Version:       {}", micros(version)));
        rows.push(format!("{name:>14} RunPodSandbox: {}", micros(run)));
    }
    println!(
        "CRI server round trip over a unix socket, FakeRuntime backend, {N} calls each:\n{}",
        rows.join("\n")
    );
    let _ = ImageBackend::list_images(rt.as_ref(), None).await.unwrap();
    assert!(rt.sandboxes().is_empty());
}
