//! Probes (startup, liveness, readiness) and lifecycle hooks (postStart, preStop): the handlers
//! (exec through the runtime, httpGet with hyper, tcpSocket, grpc with tonic-health, sleep) and
//! the per-container probe workers that keep a [`ProbeStatus`] per container up to date.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Empty;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use k8s_openapi::api::core::v1::{Container, ContainerPort, LifecycleHandler, Probe};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use node_core::RuntimeBackend;
use tokio::sync::mpsc;
use tokio::task::AbortHandle;

use crate::reconcile::{ProbeResults, ProbeStatus};

/// The three kinds of probe.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ProbeKind {
    /// `startupProbe`: the others wait for it; failing it restarts the container.
    Startup,
    /// `livenessProbe`: failing it restarts the container.
    Liveness,
    /// `readinessProbe`: drives the container's (and the pod's) readiness.
    Readiness,
}

/// One check or hook action.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Handler {
    /// Run a command in the container (`exec`).
    Exec(Vec<String>),
    /// An HTTP GET (`httpGet`).
    Http {
        /// `HTTP` or `HTTPS`.
        scheme: String,
        /// The host (default: the pod IP).
        host: Option<String>,
        /// The port, a number or a container port name.
        port: IntOrString,
        /// The path.
        path: String,
        /// Extra headers.
        headers: Vec<(String, String)>,
    },
    /// A TCP connect (`tcpSocket`).
    Tcp {
        /// The host (default: the pod IP).
        host: Option<String>,
        /// The port.
        port: IntOrString,
    },
    /// A gRPC health check (`grpc`).
    Grpc {
        /// The port.
        port: i32,
        /// The service name asked about (empty: the server as a whole).
        service: String,
    },
    /// Wait (`sleep`, lifecycle hooks only).
    Sleep(Duration),
}

impl Handler {
    /// The handler of a probe, if it names one.
    pub fn of_probe(p: &Probe) -> Option<Handler> {
        if let Some(e) = &p.exec {
            return Some(Handler::Exec(e.command.clone().unwrap_or_default()));
        }
        if let Some(h) = &p.http_get {
            return Some(Handler::Http {
                scheme: h.scheme.clone().unwrap_or_else(|| "HTTP".into()),
                host: h.host.clone().filter(|h| !h.is_empty()),
                port: h.port.clone(),
                path: h.path.clone().unwrap_or_else(|| "/".into()),
                headers: h
                    .http_headers
                    .iter()
                    .flatten()
                    .map(|h| (h.name.clone(), h.value.clone()))
                    .collect(),
            });
        }
        if let Some(t) = &p.tcp_socket {
            return Some(Handler::Tcp {
                host: t.host.clone().filter(|h| !h.is_empty()),
                port: t.port.clone(),
            });
        }
        if let Some(g) = &p.grpc {
            return Some(Handler::Grpc {
                port: g.port,
                service: g.service.clone().unwrap_or_default(),
            });
        }
        None
    }

    /// The handler of a lifecycle hook, if it names one.
    pub fn of_hook(h: &LifecycleHandler) -> Option<Handler> {
        if let Some(e) = &h.exec {
            return Some(Handler::Exec(e.command.clone().unwrap_or_default()));
        }
        if let Some(g) = &h.http_get {
            return Some(Handler::Http {
                scheme: g.scheme.clone().unwrap_or_else(|| "HTTP".into()),
                host: g.host.clone().filter(|h| !h.is_empty()),
                port: g.port.clone(),
                path: g.path.clone().unwrap_or_else(|| "/".into()),
                headers: g
                    .http_headers
                    .iter()
                    .flatten()
                    .map(|h| (h.name.clone(), h.value.clone()))
                    .collect(),
            });
        }
        if let Some(s) = &h.sleep {
            return Some(Handler::Sleep(Duration::from_secs(s.seconds.max(0) as u64)));
        }
        if let Some(t) = &h.tcp_socket {
            return Some(Handler::Tcp {
                host: t.host.clone().filter(|h| !h.is_empty()),
                port: t.port.clone(),
            });
        }
        None
    }
}

/// What a handler runs against.
#[derive(Clone)]
pub struct Target {
    /// The runtime (for exec).
    pub runtime: Arc<dyn RuntimeBackend>,
    /// The container's runtime id.
    pub container_id: String,
    /// The pod IP (default host of network checks).
    pub pod_ip: Option<String>,
    /// The container's ports (to resolve named ports).
    pub ports: Vec<ContainerPort>,
}

fn resolve_port(port: &IntOrString, ports: &[ContainerPort]) -> Result<u16, String> {
    match port {
        IntOrString::Int(n) => u16::try_from(*n).map_err(|_| format!("invalid port {n}")),
        IntOrString::String(name) => match name.parse::<u16>() {
            Ok(n) => Ok(n),
            Err(_) => ports
                .iter()
                .find(|p| p.name.as_deref() == Some(name.as_str()))
                .and_then(|p| u16::try_from(p.container_port).ok())
                .ok_or_else(|| format!("no container port named {name:?}")),
        },
    }
}

fn host_of(host: &Option<String>, t: &Target) -> Result<String, String> {
    host.clone()
        .or_else(|| t.pod_ip.clone())
        .ok_or_else(|| "the pod has no IP yet".to_string())
}

fn host_port(host: &str, port: u16) -> String {
    if host.contains(':') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    }
}

/// Accepts any server certificate, as the kubelet's HTTPS probes do (they check liveness, not
/// identity); signatures are still verified against the presented certificate.
#[derive(Debug)]
struct AnyServerCert(Arc<rustls::crypto::CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for AnyServerCert {
    fn verify_server_cert(
        &self,
        _end_entity: &rustls::pki_types::CertificateDer<'_>,
        _intermediates: &[rustls::pki_types::CertificateDer<'_>],
        _server_name: &rustls::pki_types::ServerName<'_>,
        _ocsp_response: &[u8],
        _now: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// One GET over TLS (certificate not verified); returns the status code.
async fn https_get(host: &str, port: u16, req: http::Request<Empty<Bytes>>) -> Result<u16, String> {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AnyServerCert(provider)))
        .with_no_client_auth();
    let tcp = tokio::net::TcpStream::connect(host_port(host, port))
        .await
        .map_err(|e| e.to_string())?;
    let name =
        rustls::pki_types::ServerName::try_from(host.to_string()).map_err(|e| e.to_string())?;
    let tls = tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(name, tcp)
        .await
        .map_err(|e| format!("tls: {e}"))?;
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tls))
            .await
            .map_err(|e| e.to_string())?;
    tokio::spawn(conn);
    let resp = sender.send_request(req).await.map_err(|e| e.to_string())?;
    Ok(resp.status().as_u16())
}

/// Run a handler once, within `timeout`: `Ok(())` on success, the failure's text otherwise.
pub async fn run_handler(handler: &Handler, t: &Target, timeout: Duration) -> Result<(), String> {
    let work = async {
        match handler {
            Handler::Exec(cmd) => {
                let r = t
                    .runtime
                    .exec_sync(&t.container_id, cmd.clone(), timeout)
                    .await
                    .map_err(|e| e.to_string())?;
                if r.exit_code == 0 {
                    Ok(())
                } else {
                    let out = String::from_utf8_lossy(if r.stderr.is_empty() {
                        &r.stdout
                    } else {
                        &r.stderr
                    })
                    .trim()
                    .to_string();
                    Err(format!(
                        "command {cmd:?} exited with {}: {out}",
                        r.exit_code
                    ))
                }
            }
            Handler::Http {
                scheme,
                host,
                port,
                path,
                headers,
            } => {
                let https = scheme.eq_ignore_ascii_case("HTTPS");
                if !https && !scheme.eq_ignore_ascii_case("HTTP") {
                    return Err(format!("scheme {scheme} is not HTTP or HTTPS"));
                }
                let host = host_of(host, t)?;
                let port = resolve_port(port, &t.ports)?;
                let path = if path.starts_with('/') {
                    path.clone()
                } else {
                    format!("/{path}")
                };
                let authority = host_port(&host, port);
                let url = format!(
                    "{}://{authority}{path}",
                    if https { "https" } else { "http" }
                );
                let mut req =
                    http::Request::get(&url).header(http::header::USER_AGENT, "kube-probe/1.34");
                if !headers.iter().any(|(k, _)| k.eq_ignore_ascii_case("host")) {
                    req = req.header(http::header::HOST, authority.as_str());
                }
                for (k, v) in headers {
                    req = req.header(k.as_str(), v.as_str());
                }
                let req = req.body(Empty::<Bytes>::new()).map_err(|e| e.to_string())?;
                let status = if https {
                    https_get(&host, port, req)
                        .await
                        .map_err(|e| format!("GET {url}: {e}"))?
                } else {
                    let client = Client::builder(TokioExecutor::new()).build_http::<Empty<Bytes>>();
                    client
                        .request(req)
                        .await
                        .map_err(|e| format!("GET {url}: {e}"))?
                        .status()
                        .as_u16()
                };
                if (200..400).contains(&status) {
                    Ok(())
                } else {
                    Err(format!(
                        "GET {url}: HTTP probe failed with statuscode: {status}"
                    ))
                }
            }
            Handler::Tcp { host, port } => {
                let host = host_of(host, t)?;
                let port = resolve_port(port, &t.ports)?;
                tokio::net::TcpStream::connect(host_port(&host, port))
                    .await
                    .map(|_| ())
                    .map_err(|e| format!("dial tcp {host}:{port}: {e}"))
            }
            Handler::Grpc { port, service } => {
                let host = host_of(&None, t)?;
                let port = u16::try_from(*port).map_err(|_| format!("invalid port {port}"))?;
                let uri = format!("http://{}", host_port(&host, port));
                let channel = tonic::transport::Endpoint::from_shared(uri.clone())
                    .map_err(|e| e.to_string())?
                    .connect()
                    .await
                    .map_err(|e| format!("grpc {uri}: {e}"))?;
                let mut client = tonic_health::pb::health_client::HealthClient::new(channel);
                let resp = client
                    .check(tonic_health::pb::HealthCheckRequest {
                        service: service.clone(),
                    })
                    .await
                    .map_err(|e| format!("grpc {uri}: {}", e.message()))?;
                let status = resp.into_inner().status;
                if status == tonic_health::pb::health_check_response::ServingStatus::Serving as i32
                {
                    Ok(())
                } else {
                    Err(format!(
                        "grpc {uri}: service {service:?} is not serving (status {status})"
                    ))
                }
            }
            Handler::Sleep(d) => {
                tokio::time::sleep(*d).await;
                Ok(())
            }
        }
    };
    if timeout.is_zero() {
        return work.await;
    }
    match tokio::time::timeout(timeout, work).await {
        Ok(r) => r,
        Err(_) => Err(format!("timeout: no answer within {timeout:?}")),
    }
}

/// The timing of a probe, with Kubernetes' defaults.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProbeTiming {
    /// `initialDelaySeconds` (0).
    pub initial_delay: Duration,
    /// `periodSeconds` (10).
    pub period: Duration,
    /// `timeoutSeconds` (1).
    pub timeout: Duration,
    /// `successThreshold` (1).
    pub success_threshold: u32,
    /// `failureThreshold` (3).
    pub failure_threshold: u32,
}

impl ProbeTiming {
    /// The timing of a probe spec.
    pub fn of(p: &Probe) -> Self {
        let secs = |v: Option<i32>, d: i32| Duration::from_secs(v.unwrap_or(d).max(0) as u64);
        Self {
            initial_delay: secs(p.initial_delay_seconds, 0),
            period: secs(p.period_seconds, 10).max(Duration::from_secs(1)),
            timeout: secs(p.timeout_seconds, 1).max(Duration::from_secs(1)),
            success_threshold: p.success_threshold.unwrap_or(1).max(1) as u32,
            failure_threshold: p.failure_threshold.unwrap_or(3).max(1) as u32,
        }
    }
}

/// The probe workers of one pod: one task per probe of each running container; results are
/// shared with the pod worker, which is woken on every change.
pub struct ProbeWorkers {
    results: Arc<Mutex<ProbeResults>>,
    tasks: HashMap<(String, ProbeKind), AbortHandle>,
    wake: mpsc::UnboundedSender<()>,
}

impl Drop for ProbeWorkers {
    fn drop(&mut self) {
        for t in self.tasks.values() {
            t.abort();
        }
    }
}

impl ProbeWorkers {
    /// Probe workers that call `wake` when a result changes.
    pub fn new(wake: mpsc::UnboundedSender<()>) -> Self {
        Self {
            results: Arc::default(),
            tasks: HashMap::new(),
            wake,
        }
    }

    /// The results now, by container id.
    pub fn results(&self) -> ProbeResults {
        self.results.lock().expect("probe results lock").clone()
    }

    /// Make sure the probes of a running container run.
    pub fn ensure(&mut self, spec: &Container, target: Target) {
        let probes = [
            (ProbeKind::Startup, &spec.startup_probe),
            (ProbeKind::Liveness, &spec.liveness_probe),
            (ProbeKind::Readiness, &spec.readiness_probe),
        ];
        let has_startup = spec.startup_probe.is_some();
        for (kind, probe) in probes {
            let Some(probe) = probe else { continue };
            let key = (target.container_id.clone(), kind);
            if self.tasks.contains_key(&key) {
                continue;
            }
            let Some(handler) = Handler::of_probe(probe) else {
                continue;
            };
            let timing = ProbeTiming::of(probe);
            let results = self.results.clone();
            let wake = self.wake.clone();
            let t = target.clone();
            let task = tokio::spawn(probe_loop(
                kind,
                handler,
                timing,
                has_startup,
                t,
                results,
                wake,
            ));
            self.tasks.insert(key, task.abort_handle());
        }
    }

    /// Stop the probes of every container not in `live`, and forget their results.
    pub fn retain(&mut self, live: &HashSet<String>) {
        self.tasks.retain(|(id, _), t| {
            let keep = live.contains(id);
            if !keep {
                t.abort();
            }
            keep
        });
        self.results
            .lock()
            .expect("probe results lock")
            .retain(|id, _| live.contains(id));
    }

    /// Stop every probe.
    pub fn stop_all(&mut self) {
        self.retain(&HashSet::new());
    }
}

fn set(status: &mut ProbeStatus, kind: ProbeKind, v: Option<bool>) {
    match kind {
        ProbeKind::Startup => status.startup = v,
        ProbeKind::Liveness => status.liveness = v,
        ProbeKind::Readiness => status.readiness = v,
    }
}

fn get(status: &ProbeStatus, kind: ProbeKind) -> Option<bool> {
    match kind {
        ProbeKind::Startup => status.startup,
        ProbeKind::Liveness => status.liveness,
        ProbeKind::Readiness => status.readiness,
    }
}

async fn probe_loop(
    kind: ProbeKind,
    handler: Handler,
    timing: ProbeTiming,
    has_startup: bool,
    t: Target,
    results: Arc<Mutex<ProbeResults>>,
    wake: mpsc::UnboundedSender<()>,
) {
    tokio::time::sleep(timing.initial_delay).await;
    let (mut successes, mut failures) = (0u32, 0u32);
    loop {
        let startup_ok = || {
            results
                .lock()
                .expect("probe results lock")
                .get(&t.container_id)
                .and_then(|s| s.startup)
                == Some(true)
        };
        if kind != ProbeKind::Startup && has_startup && !startup_ok() {
            tokio::time::sleep(timing.period.min(Duration::from_secs(1))).await;
            continue;
        }
        let outcome = run_handler(&handler, &t, timing.timeout).await;
        match &outcome {
            Ok(()) => {
                successes += 1;
                failures = 0;
            }
            Err(why) => {
                failures += 1;
                successes = 0;
                tracing::debug!(container = %t.container_id, ?kind, %why, "probe failed");
            }
        }
        let changed = {
            let mut r = results.lock().expect("probe results lock");
            let status = r.entry(t.container_id.clone()).or_default();
            let before = get(status, kind);
            let after = if successes >= timing.success_threshold {
                Some(true)
            } else if failures >= timing.failure_threshold {
                Some(false)
            } else {
                before
            };
            set(status, kind, after);
            (before != after).then_some(after)
        };
        if let Some(after) = changed {
            if after == Some(false) {
                tracing::info!(container = %t.container_id, ?kind, error = %outcome.clone().err().unwrap_or_default(), "probe failed its threshold");
            }
            let _ = wake.send(());
            // a startup probe is done once it succeeds; a failed startup or liveness probe
            // gets its container restarted (with new probes)
            if matches!(
                (kind, after),
                (ProbeKind::Startup, Some(true))
                    | (ProbeKind::Startup | ProbeKind::Liveness, Some(false))
            ) {
                return;
            }
        }
        tokio::time::sleep(timing.period).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use node_core::cri;
    use node_test_support::FakeRuntime;

    async fn running_container(rt: &FakeRuntime) -> String {
        rt.add_image("img");
        let sb = rt
            .run_pod_sandbox(cri::RunPodSandboxRequest {
                config: Some(cri::PodSandboxConfig::default()),
                runtime_handler: String::new(),
            })
            .await
            .unwrap();
        let config = cri::ContainerConfig {
            image: Some(cri::ImageSpec {
                image: "img".into(),
                ..Default::default()
            }),
            ..Default::default()
        };
        let id = rt
            .create_container(cri::CreateContainerRequest {
                pod_sandbox_id: sb,
                config: Some(config),
                sandbox_config: None,
            })
            .await
            .unwrap();
        rt.start_container(&id).await.unwrap();
        id
    }

    fn target(rt: &FakeRuntime, id: &str, ip: &str, ports: Vec<ContainerPort>) -> Target {
        Target {
            runtime: Arc::new(rt.clone()),
            container_id: id.into(),
            pod_ip: Some(ip.into()),
            ports,
        }
    }

    #[tokio::test]
    async fn exec_tcp_http_and_grpc_handlers() {
        let rt = FakeRuntime::new();
        let id = running_container(&rt).await;
        rt.push_exec_result(0, "ok");
        rt.push_exec_result(1, "bad");
        let t = target(&rt, &id, "127.0.0.1", vec![]);
        let exec = Handler::Exec(vec!["true".into()]);
        assert_eq!(run_handler(&exec, &t, Duration::from_secs(1)).await, Ok(()));
        let e = run_handler(&exec, &t, Duration::from_secs(1))
            .await
            .unwrap_err();
        assert!(e.contains("exited with 1: bad"), "{e}");

        // an HTTP server that answers 200 on /ok (checking a header) and 500 elsewhere
        let app = axum::Router::new()
            .route(
                "/ok",
                axum::routing::get(|h: http::HeaderMap| async move {
                    if h.get("x-probe").is_some() {
                        http::StatusCode::OK
                    } else {
                        http::StatusCode::BAD_REQUEST
                    }
                }),
            )
            .fallback(|| async { http::StatusCode::INTERNAL_SERVER_ERROR });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        let ports = vec![ContainerPort {
            name: Some("http".into()),
            container_port: port as i32,
            ..Default::default()
        }];
        let t = target(&rt, &id, "127.0.0.1", ports);
        let http = |path: &str, headers: Vec<(String, String)>| Handler::Http {
            scheme: "HTTP".into(),
            host: None,
            port: IntOrString::String("http".into()),
            path: path.into(),
            headers,
        };
        assert_eq!(
            run_handler(
                &http("/ok", vec![("X-Probe".into(), "1".into())]),
                &t,
                Duration::from_secs(5)
            )
            .await,
            Ok(())
        );
        let e = run_handler(&http("/ok", vec![]), &t, Duration::from_secs(5))
            .await
            .unwrap_err();
        assert!(e.contains("statuscode: 400"), "{e}");
        let e = run_handler(&http("/nope", vec![]), &t, Duration::from_secs(5))
            .await
            .unwrap_err();
        assert!(e.contains("statuscode: 500"), "{e}");

        let tcp = Handler::Tcp {
            host: None,
            port: IntOrString::Int(port as i32),
        };
        assert_eq!(run_handler(&tcp, &t, Duration::from_secs(5)).await, Ok(()));
        let closed = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let tcp = Handler::Tcp {
            host: None,
            port: IntOrString::Int(closed as i32),
        };
        assert!(run_handler(&tcp, &t, Duration::from_secs(5)).await.is_err());

        // a gRPC health server: one service serving, one not
        let (reporter, service) = tonic_health::server::health_reporter();
        reporter
            .set_service_status("up", tonic_health::ServingStatus::Serving)
            .await;
        reporter
            .set_service_status("down", tonic_health::ServingStatus::NotServing)
            .await;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let gport = listener.local_addr().unwrap().port();
        tokio::spawn(async move {
            tonic::transport::Server::builder()
                .add_service(service)
                .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener))
                .await
                .unwrap()
        });
        let grpc = |s: &str| Handler::Grpc {
            port: gport as i32,
            service: s.into(),
        };
        assert_eq!(
            run_handler(&grpc("up"), &t, Duration::from_secs(5)).await,
            Ok(())
        );
        assert!(
            run_handler(&grpc("down"), &t, Duration::from_secs(5))
                .await
                .unwrap_err()
                .contains("not serving")
        );
    }

    #[tokio::test]
    async fn https_probes_skip_certificate_verification() {
        use rustls::pki_types::pem::PemObject;
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/tls");
        let certs: Vec<_> = rustls::pki_types::CertificateDer::pem_file_iter(dir.join("cert.pem"))
            .unwrap()
            .map(Result::unwrap)
            .collect();
        let key = rustls::pki_types::PrivateKeyDer::from_pem_file(dir.join("key.pem")).unwrap();
        let config = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::aws_lc_rs::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .unwrap();
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        tokio::spawn(async move {
            loop {
                let (tcp, _) = listener.accept().await.unwrap();
                let acceptor = acceptor.clone();
                tokio::spawn(async move {
                    let Ok(tls) = acceptor.accept(tcp).await else {
                        return;
                    };
                    let svc = hyper::service::service_fn(
                        |req: http::Request<hyper::body::Incoming>| async move {
                            let code = if req.uri().path() == "/healthz" {
                                204
                            } else {
                                503
                            };
                            Ok::<_, std::convert::Infallible>(
                                http::Response::builder()
                                    .status(code)
                                    .body(Empty::<Bytes>::new())
                                    .unwrap(),
                            )
                        },
                    );
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(hyper_util::rt::TokioIo::new(tls), svc)
                        .await;
                });
            }
        });
        let rt = FakeRuntime::new();
        let t = target(&rt, "c", "127.0.0.1", vec![]);
        let https = |path: &str| Handler::Http {
            scheme: "HTTPS".into(),
            host: None,
            port: IntOrString::Int(port as i32),
            path: path.into(),
            headers: vec![],
        };
        assert_eq!(
            run_handler(&https("/healthz"), &t, Duration::from_secs(5)).await,
            Ok(())
        );
        let e = run_handler(&https("/other"), &t, Duration::from_secs(5))
            .await
            .unwrap_err();
        assert!(e.contains("statuscode: 503"), "{e}");
        let plain = Handler::Http {
            scheme: "HTTP".into(),
            host: None,
            port: IntOrString::Int(port as i32),
            path: "/healthz".into(),
            headers: vec![],
        };
        assert!(
            run_handler(&plain, &t, Duration::from_secs(5))
                .await
                .is_err(),
            "plain HTTP to a TLS port fails"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn thresholds_and_startup_gate() {
        let rt = FakeRuntime::new();
        let id = running_container(&rt).await;
        let spec: Container = serde_saphyr::from_str(
            "name: c\nimage: img\n\
             startupProbe: {exec: {command: [s]}, periodSeconds: 1, failureThreshold: 5}\n\
             livenessProbe: {exec: {command: [l]}, periodSeconds: 1, failureThreshold: 2}\n\
             readinessProbe: {exec: {command: [r]}, periodSeconds: 1, successThreshold: 2}\n",
        )
        .unwrap();
        let (tx, mut rx) = mpsc::unbounded_channel();
        let mut w = ProbeWorkers::new(tx);
        // startup: fail, then succeed
        rt.push_exec_result(1, "");
        rt.push_exec_result(0, "");
        w.ensure(&spec, target(&rt, &id, "127.0.0.1", vec![]));
        rx.recv().await.unwrap();
        assert_eq!(w.results()[&id].startup, Some(true));
        assert_eq!(
            w.results()[&id].readiness,
            None,
            "readiness waits for startup"
        );
        // readiness needs two successes (exec answers default to exit 0), liveness stays fine
        tokio::time::timeout(Duration::from_secs(30), async {
            while w.results()[&id].readiness != Some(true) {
                rx.recv().await.unwrap();
            }
        })
        .await
        .unwrap();
        assert_ne!(w.results()[&id].liveness, Some(false));
        w.stop_all();
        assert!(w.results().is_empty());
    }
}
