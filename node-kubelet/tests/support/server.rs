//! Helpers of the kubelet server's tests: certificates made with the `openssl` command (CAs,
//! certificates they sign, TLS clients presenting them) and the server as the agent starts it.

use std::path::Path;
use std::sync::Arc;

use node_core::{Pod, RuntimeBackend};
use node_kubelet::node::authn::Authenticator;
use node_kubelet::node::authz::Authorizer;
use node_kubelet::node::http::{HttpState, NodeMetrics, PodsProvider};
use node_kubelet::node::server::{KubeletServer, ServerConfig, ServerState, router};
use node_kubelet::{CancellationToken, PodStates};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

/// The kubelet's pods as the read-only endpoints' pods.
pub struct StatesPods(pub PodStates);

impl PodsProvider for StatesPods {
    fn pods(&self) -> Vec<Pod> {
        self.0.pods().into_iter().map(|s| s.pod).collect()
    }
}

/// The kubelet server on 127.0.0.1 with the certificates in `certs` (`server`, the client CA
/// `ca`): its endpoints beside the read-only ones, as the agent serves them.
pub async fn start_server(
    certs: &Path,
    states: PodStates,
    runtime: Arc<dyn RuntimeBackend>,
    authenticator: Authenticator,
    authorizer: Authorizer,
    token: CancellationToken,
) -> KubeletServer {
    let app =
        router(ServerState::new(states.clone(), runtime)).merge(node_kubelet::node::http::router(
            HttpState::new(Arc::new(StatesPods(states)), &NodeMetrics::default()),
        ));
    KubeletServer::start(
        &ServerConfig {
            addr: "127.0.0.1:0".parse().unwrap(),
            tls_cert_file: certs.join("server.pem"),
            tls_private_key_file: certs.join("server.key"),
            client_ca_file: certs.join("ca.pem"),
            ..Default::default()
        },
        app,
        authenticator,
        authorizer,
        token,
    )
    .await
    .expect("kubelet server")
}

pub fn openssl(dir: &Path, args: &[&str]) {
    let out = std::process::Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("running openssl");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A CA `name` (`name.pem`, `name.key`).
pub fn make_ca(dir: &Path, name: &str) {
    openssl(
        dir,
        &[
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-keyout",
            &format!("{name}.key"),
            "-out",
            &format!("{name}.pem"),
            "-days",
            "2",
            "-subj",
            &format!("/CN={name}"),
            "-addext",
            "basicConstraints=critical,CA:TRUE",
            "-addext",
            "keyUsage=critical,keyCertSign,cRLSign",
        ],
    );
}

/// A certificate `name` signed by `ca`, with `ext` (`extendedKeyUsage=...`, SANs).
pub fn make_cert(dir: &Path, ca: &str, name: &str, subject: &str, ext: &str) {
    openssl(
        dir,
        &[
            "req",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-keyout",
            &format!("{name}.key"),
            "-out",
            &format!("{name}.csr"),
            "-subj",
            subject,
        ],
    );
    std::fs::write(dir.join(format!("{name}.ext")), ext).unwrap();
    openssl(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            &format!("{name}.csr"),
            "-CA",
            &format!("{ca}.pem"),
            "-CAkey",
            &format!("{ca}.key"),
            "-CAcreateserial",
            "-out",
            &format!("{name}.pem"),
            "-days",
            "2",
            "-extfile",
            &format!("{name}.ext"),
        ],
    );
}

/// A TLS client trusting `ca.pem`, with the client certificate `name` (none: anonymous).
pub fn tls_client(dir: &Path, name: Option<&str>) -> tokio_rustls::TlsConnector {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_file_iter(dir.join("ca.pem")).unwrap() {
        roots.add(c.unwrap()).unwrap();
    }
    let b = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots);
    let config = match name {
        Some(n) => {
            let chain = CertificateDer::pem_file_iter(dir.join(format!("{n}.pem")))
                .unwrap()
                .collect::<Result<Vec<_>, _>>()
                .unwrap();
            let key = PrivateKeyDer::from_pem_file(dir.join(format!("{n}.key"))).unwrap();
            b.with_client_auth_cert(chain, key).unwrap()
        }
        None => b.with_no_client_auth(),
    };
    tokio_rustls::TlsConnector::from(Arc::new(config))
}

/// A response's status and its whole body as text (the body must end within `limit`).
pub async fn status_and_text(
    r: hyper::Response<hyper::body::Incoming>,
    limit: std::time::Duration,
) -> (u16, String) {
    use http_body_util::BodyExt;
    let status = r.status().as_u16();
    let body = tokio::time::timeout(limit, r.into_body().collect())
        .await
        .expect("the body ends")
        .unwrap()
        .to_bytes();
    (status, String::from_utf8_lossy(&body).into_owned())
}
