//! [`CriClient`] against a scripted CRI server on a unix socket (no root): the version check,
//! call deadlines, pull credentials and the typing of runtime answers, which a well-behaved
//! containerd cannot be made to show on demand.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use k8s_cri::v1::image_service_server::{ImageService, ImageServiceServer};
use k8s_cri::v1::runtime_service_server::{RuntimeService, RuntimeServiceServer};
use node_core::{ImageBackend, RuntimeBackend, RuntimeError, cri};
use tonic::{Request, Response, Status};

use super::{CriClient, CriClientConfig};

/// Each pull's image and the credentials it came with.
type Pulls = Arc<Mutex<Vec<(String, Option<cri::AuthConfig>)>>>;

/// A scripted runtime.
#[derive(Clone, Default)]
struct Fake {
    /// What `Version` answers as `runtime_api_version`.
    api_version: String,
    /// How long `Status` takes.
    status_delay: Duration,
    /// The credentials each pull came with.
    pulls: Pulls,
    /// The grpc-timeout header of each call, as the server saw it.
    timeouts: Arc<Mutex<Vec<Option<String>>>>,
    /// What `GetContainerEvents` sends (`None`: it answers `Unimplemented`, as containerd 1.6).
    events: Option<Vec<cri::ContainerEventResponse>>,
    /// How long `GetContainerEvents` waits before it answers (a runtime that sends its headers
    /// with the first event).
    events_delay: Duration,
}

/// An implementation of a CRI service whose listed methods answer `Unimplemented`.
macro_rules! cri_service {
    (
        impl $svc:ident for $ty:ty { $($custom:tt)* }
        unimplemented { $($name:ident($req:ident) -> $resp:ident;)* }
    ) => {
        #[tonic::async_trait]
        impl $svc for $ty {
            $($custom)*
            $(
                async fn $name(&self, _r: Request<cri::$req>) -> Result<Response<cri::$resp>, Status> {
                    Err(Status::unimplemented(stringify!($name)))
                }
            )*
        }
    };
}

cri_service! {
    impl RuntimeService for Fake {
        type GetContainerEventsStream =
            futures::stream::BoxStream<'static, Result<cri::ContainerEventResponse, Status>>;

        async fn version(&self, r: Request<cri::VersionRequest>) -> Result<Response<cri::VersionResponse>, Status> {
            self.timeouts.lock().unwrap().push(r.metadata().get("grpc-timeout").map(|v| v.to_str().unwrap().to_string()));
            Ok(Response::new(cri::VersionResponse {
                version: "0.1.0".into(),
                runtime_name: "fake".into(),
                runtime_version: "9.9".into(),
                runtime_api_version: self.api_version.clone(),
            }))
        }
        async fn status(&self, _r: Request<cri::StatusRequest>) -> Result<Response<cri::StatusResponse>, Status> {
            tokio::time::sleep(self.status_delay).await;
            Ok(Response::new(cri::StatusResponse::default()))
        }
        async fn container_status(
            &self,
            r: Request<cri::ContainerStatusRequest>,
        ) -> Result<Response<cri::ContainerStatusResponse>, Status> {
            let id = &r.get_ref().container_id;
            Err(Status::unknown(format!("an error occurred when try to find container {id:?}: not found")))
        }
        async fn start_container(
            &self,
            _r: Request<cri::StartContainerRequest>,
        ) -> Result<Response<cri::StartContainerResponse>, Status> {
            Err(Status::resource_exhausted("pids: cannot fork"))
        }
        async fn get_container_events(
            &self,
            _r: Request<cri::GetEventsRequest>,
        ) -> Result<Response<Self::GetContainerEventsStream>, Status> {
            use futures::StreamExt;
            tokio::time::sleep(self.events_delay).await;
            let Some(events) = self.events.clone() else {
                return Err(Status::unimplemented("unknown method GetContainerEvents for service runtime.v1.RuntimeService"));
            };
            // the scripted events, then the stream stays open
            Ok(Response::new(
                futures::stream::iter(events.into_iter().map(Ok))
                    .chain(futures::stream::pending())
                    .boxed(),
            ))
        }
    }
    unimplemented {
        run_pod_sandbox(RunPodSandboxRequest) -> RunPodSandboxResponse;
        stop_pod_sandbox(StopPodSandboxRequest) -> StopPodSandboxResponse;
        remove_pod_sandbox(RemovePodSandboxRequest) -> RemovePodSandboxResponse;
        pod_sandbox_status(PodSandboxStatusRequest) -> PodSandboxStatusResponse;
        list_pod_sandbox(ListPodSandboxRequest) -> ListPodSandboxResponse;
        create_container(CreateContainerRequest) -> CreateContainerResponse;
        stop_container(StopContainerRequest) -> StopContainerResponse;
        remove_container(RemoveContainerRequest) -> RemoveContainerResponse;
        list_containers(ListContainersRequest) -> ListContainersResponse;
        update_container_resources(UpdateContainerResourcesRequest) -> UpdateContainerResourcesResponse;
        reopen_container_log(ReopenContainerLogRequest) -> ReopenContainerLogResponse;
        exec_sync(ExecSyncRequest) -> ExecSyncResponse;
        exec(ExecRequest) -> ExecResponse;
        attach(AttachRequest) -> AttachResponse;
        port_forward(PortForwardRequest) -> PortForwardResponse;
        container_stats(ContainerStatsRequest) -> ContainerStatsResponse;
        list_container_stats(ListContainerStatsRequest) -> ListContainerStatsResponse;
        pod_sandbox_stats(PodSandboxStatsRequest) -> PodSandboxStatsResponse;
        list_pod_sandbox_stats(ListPodSandboxStatsRequest) -> ListPodSandboxStatsResponse;
        update_runtime_config(UpdateRuntimeConfigRequest) -> UpdateRuntimeConfigResponse;
        checkpoint_container(CheckpointContainerRequest) -> CheckpointContainerResponse;
        list_metric_descriptors(ListMetricDescriptorsRequest) -> ListMetricDescriptorsResponse;
        list_pod_sandbox_metrics(ListPodSandboxMetricsRequest) -> ListPodSandboxMetricsResponse;
        runtime_config(RuntimeConfigRequest) -> RuntimeConfigResponse;
    }
}

cri_service! {
    impl ImageService for Fake {
        async fn pull_image(&self, r: Request<cri::PullImageRequest>) -> Result<Response<cri::PullImageResponse>, Status> {
            let r = r.into_inner();
            let image = r.image.map(|i| i.image).unwrap_or_default();
            self.pulls.lock().unwrap().push((image.clone(), r.auth));
            if image.contains("denied") {
                return Err(Status::unknown(format!(
                    "failed to pull and unpack image {image:?}: failed to authorize: 401 Unauthorized"
                )));
            }
            Ok(Response::new(cri::PullImageResponse { image_ref: "sha256:feed".into() }))
        }
    }
    unimplemented {
        list_images(ListImagesRequest) -> ListImagesResponse;
        image_status(ImageStatusRequest) -> ImageStatusResponse;
        remove_image(RemoveImageRequest) -> RemoveImageResponse;
        image_fs_info(ImageFsInfoRequest) -> ImageFsInfoResponse;
    }
}

/// Serve `fake` on a fresh socket (without the runtime service when `runtime` is false).
fn serve(fake: Fake, runtime: bool) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("cri.sock");
    let listener = tokio::net::UnixListener::bind(&sock).unwrap();
    let incoming = futures::stream::unfold(listener, |l| async move {
        let conn = l.accept().await.map(|(s, _)| s);
        Some((conn, l))
    });
    let server = tonic::transport::Server::builder()
        .add_service(ImageServiceServer::new(fake.clone()))
        .add_optional_service(runtime.then(|| RuntimeServiceServer::new(fake)));
    tokio::spawn(server.serve_with_incoming(incoming));
    (dir, sock)
}

fn config(sock: &std::path::Path) -> CriClientConfig {
    CriClientConfig {
        endpoint: format!("unix://{}", sock.display()),
        connect_timeout: Duration::from_secs(2),
        call_timeout: Duration::from_secs(5),
        image_pull_timeout: Duration::from_secs(5),
    }
}

fn v1() -> Fake {
    Fake {
        api_version: "v1".into(),
        ..Default::default()
    }
}

#[tokio::test]
async fn connects_and_sends_the_call_deadline() {
    let fake = v1();
    let (_dir, sock) = serve(fake.clone(), true);
    let c = CriClient::connect(config(&sock)).await.unwrap();
    assert_eq!((c.runtime_name(), c.runtime_version()), ("fake", "9.9"));
    assert_eq!(c.socket(), sock);
    // the runtime learns the deadline (grpc-timeout), so it can give up too
    let timeouts = fake.timeouts.lock().unwrap().clone();
    assert_eq!(timeouts.len(), 1);
    let t = timeouts[0].as_deref().expect("a grpc-timeout header");
    assert!(
        t.ends_with('m') || t.ends_with('u') || t.ends_with('n') || t.ends_with('S'),
        "{t}"
    );
}

#[tokio::test]
async fn refuses_a_runtime_of_another_api_version() {
    let (_dir, sock) = serve(
        Fake {
            api_version: "v1alpha2".into(),
            ..Default::default()
        },
        true,
    );
    match CriClient::connect(config(&sock)).await {
        Err(RuntimeError::FailedPrecondition(m)) => {
            assert!(
                m.contains("\"v1alpha2\"") && m.contains("fake") && m.contains("cri.sock"),
                "{m}"
            )
        }
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn refuses_a_server_without_the_v1_runtime_service() {
    let (_dir, sock) = serve(v1(), false);
    match CriClient::connect(config(&sock)).await {
        Err(RuntimeError::FailedPrecondition(m)) => {
            assert!(m.contains("does not serve CRI runtime.v1"), "{m}")
        }
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn a_slow_call_times_out_with_its_deadline() {
    let (_dir, sock) = serve(
        Fake {
            status_delay: Duration::from_secs(30),
            ..v1()
        },
        true,
    );
    let c = CriClient::connect(CriClientConfig {
        call_timeout: Duration::from_millis(300),
        ..config(&sock)
    })
    .await
    .unwrap();
    let t = Instant::now();
    match c.status(false).await {
        Err(RuntimeError::Timeout(d)) => assert_eq!(d, Duration::from_millis(300)),
        other => panic!("{other:?}"),
    }
    assert!(t.elapsed() < Duration::from_secs(10), "{:?}", t.elapsed());
}

#[tokio::test]
async fn pulls_carry_credentials_and_failures_name_the_image() {
    let fake = v1();
    let (_dir, sock) = serve(fake.clone(), true);
    let c = CriClient::connect(config(&sock)).await.unwrap();
    let auth = cri::AuthConfig {
        username: "alice".into(),
        password: "s3cret".into(),
        ..Default::default()
    };
    let image = cri::ImageSpec {
        image: "registry.example/app:1".into(),
        ..Default::default()
    };
    assert_eq!(
        c.pull_image(image, Some(auth.clone()), None).await.unwrap(),
        "sha256:feed"
    );
    let denied = cri::ImageSpec {
        image: "registry.example/denied:1".into(),
        ..Default::default()
    };
    match c.pull_image(denied, None, None).await {
        Err(RuntimeError::ImagePull { image, message }) => {
            assert_eq!(image, "registry.example/denied:1");
            assert!(message.contains("401 Unauthorized"), "{message}");
        }
        other => panic!("{other:?}"),
    }
    let pulls = fake.pulls.lock().unwrap().clone();
    assert_eq!(pulls[0], ("registry.example/app:1".to_string(), Some(auth)));
    assert_eq!(pulls[1], ("registry.example/denied:1".to_string(), None));
}

#[tokio::test]
async fn runtime_answers_are_typed() {
    let (_dir, sock) = serve(v1(), true);
    let c = CriClient::connect(config(&sock)).await.unwrap();
    match c.container_status("abc", false).await {
        Err(RuntimeError::NotFound {
            kind: "container",
            id,
        }) => assert_eq!(id, "abc"),
        other => panic!("{other:?}"),
    }
    match c.start_container("abc").await {
        Err(RuntimeError::ResourceExhausted(m)) => {
            assert_eq!(m, "StartContainer: pids: cannot fork")
        }
        other => panic!("{other:?}"),
    }
    assert!(matches!(
        c.image_fs_info().await,
        Err(RuntimeError::Unimplemented("ImageFsInfo"))
    ));
    assert!(matches!(
        c.exec_sync("abc", vec!["true".into()], Duration::ZERO)
            .await,
        Err(RuntimeError::Unimplemented("ExecSync"))
    ));
}

#[tokio::test]
async fn the_runtime_going_away_is_unavailable_not_a_hang() {
    let (dir, sock) = serve(v1(), true);
    let c = CriClient::connect(config(&sock)).await.unwrap();
    drop(dir); // the socket file disappears; the open connection may linger
    let fresh = CriClient::connect(config(&sock)).await;
    assert!(
        matches!(fresh, Err(RuntimeError::Unavailable(_))),
        "{fresh:?}"
    );
    // the existing client still answers (its connection is open) or fails typed, within bounds
    let t = Instant::now();
    let r = tokio::time::timeout(Duration::from_secs(10), c.version())
        .await
        .expect("no hang");
    assert!(
        r.is_ok() || matches!(r, Err(RuntimeError::Unavailable(_))),
        "{r:?}"
    );
    assert!(t.elapsed() < Duration::from_secs(10));
}

#[tokio::test]
async fn connect_waiting_waits_for_a_late_runtime() {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("late.sock");
    // nobody there: gives up after its patience, typed
    let t = Instant::now();
    let r = CriClient::connect_waiting(config(&sock), Duration::from_millis(600)).await;
    assert!(
        matches!(&r, Err(RuntimeError::Unavailable(m)) if m.contains("waited")),
        "{r:?}"
    );
    assert!(t.elapsed() >= Duration::from_millis(600) && t.elapsed() < Duration::from_secs(5));
    // the runtime comes up while the client waits
    let late = sock.clone();
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(700)).await;
        let listener = tokio::net::UnixListener::bind(&late).unwrap();
        let incoming = futures::stream::unfold(listener, |l| async move {
            let conn = l.accept().await.map(|(s, _)| s);
            Some((conn, l))
        });
        tonic::transport::Server::builder()
            .add_service(RuntimeServiceServer::new(v1()))
            .serve_with_incoming(incoming)
            .await
            .unwrap();
    });
    let c = CriClient::connect_waiting(config(&sock), Duration::from_secs(10))
        .await
        .unwrap();
    assert_eq!(c.runtime_name(), "fake");
    // a wrong runtime is not waited for
    let (_d2, other) = serve(
        Fake {
            api_version: "v0".into(),
            ..Default::default()
        },
        true,
    );
    let t = Instant::now();
    let r = CriClient::connect_waiting(config(&other), Duration::from_secs(30)).await;
    assert!(
        matches!(r, Err(RuntimeError::FailedPrecondition(_))),
        "{r:?}"
    );
    assert!(t.elapsed() < Duration::from_secs(5));
}

fn event(id: &str) -> cri::ContainerEventResponse {
    cri::ContainerEventResponse {
        container_id: id.into(),
        container_event_type: cri::ContainerEventType::ContainerStoppedEvent as i32,
        created_at: 1,
        pod_sandbox_status: None,
        containers_statuses: vec![],
    }
}

#[tokio::test]
async fn container_events_stream_and_unimplemented_says_relist() {
    use futures::StreamExt;
    // containerd 1.6: Unimplemented, which the kubelet takes as "relist only"
    let (_dir, sock) = serve(v1(), true);
    let c = CriClient::connect(config(&sock)).await.unwrap();
    match c.get_container_events().await {
        Err(RuntimeError::Unimplemented(m)) => assert_eq!(m, "GetContainerEvents"),
        Err(e) => panic!("{e}"),
        Ok(_) => panic!("a stream from a runtime without events"),
    }
    let (_dir, sock) = serve(
        Fake {
            events: Some(vec![event("a"), event("b")]),
            ..v1()
        },
        true,
    );
    let c = CriClient::connect(config(&sock)).await.unwrap();
    let mut s = c.get_container_events().await.unwrap();
    for want in ["a", "b"] {
        let ev = tokio::time::timeout(Duration::from_secs(5), s.next())
            .await
            .expect("an event within 5 s")
            .unwrap()
            .unwrap();
        assert_eq!(ev.container_id, want);
    }
    // the stream has no deadline: still open after the call timeout would have passed
    assert!(
        tokio::time::timeout(Duration::from_millis(300), s.next())
            .await
            .is_err()
    );
}

#[tokio::test]
async fn container_events_of_a_runtime_that_answers_with_the_first_event() {
    use futures::StreamExt;
    let (_dir, sock) = serve(
        Fake {
            events: Some(vec![event("late")]),
            events_delay: Duration::from_millis(1500),
            ..v1()
        },
        true,
    );
    let c = CriClient::connect(CriClientConfig {
        connect_timeout: Duration::from_millis(500),
        ..config(&sock)
    })
    .await
    .unwrap();
    let started = Instant::now();
    let mut s = c.get_container_events().await.unwrap();
    assert!(
        started.elapsed() < Duration::from_millis(1400),
        "the subscription did not wait for the first event"
    );
    let ev = tokio::time::timeout(Duration::from_secs(10), s.next())
        .await
        .expect("the late event within 10 s")
        .unwrap()
        .unwrap();
    assert_eq!(ev.container_id, "late");
    // a runtime that fails late fails the stream
    let (_dir, sock) = serve(
        Fake {
            events_delay: Duration::from_millis(1500),
            ..v1()
        },
        true,
    );
    let c = CriClient::connect(CriClientConfig {
        connect_timeout: Duration::from_millis(500),
        ..config(&sock)
    })
    .await
    .unwrap();
    let mut s = c.get_container_events().await.unwrap();
    let err = tokio::time::timeout(Duration::from_secs(10), s.next())
        .await
        .expect("an answer within 10 s")
        .unwrap()
        .unwrap_err();
    assert!(matches!(err, RuntimeError::Unimplemented(_)), "{err}");
}
