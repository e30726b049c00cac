//! A stand-in for the API server's part in `kubectl logs/exec/attach/port-forward`, so tests can
//! drive the real `kubectl` against our streaming and kubelet servers: API discovery, the pod
//! objects, and the pod subresources proxied to where the test says, as the API server proxies
//! them to a kubelet (the request head with its protocol headers, then the bytes both ways).

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// A connection the stand-in proxies a subresource request to.
pub trait Connection: AsyncRead + AsyncWrite + Send + Unpin {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin> Connection for T {}

/// A pod subresource request kubectl made (`/api/v1/namespaces/{ns}/pods/{pod}/{subresource}`).
#[derive(Debug, Clone)]
pub struct SubresourceRequest {
    /// The HTTP method.
    pub method: String,
    /// The pod's namespace.
    pub namespace: String,
    /// The pod's name.
    pub pod: String,
    /// `exec`, `attach`, `portforward`, `log`.
    pub subresource: String,
    /// The query, form-decoded, in order.
    pub query: Vec<(String, String)>,
    /// The query as sent.
    pub raw_query: String,
}

impl SubresourceRequest {
    /// Whether a boolean query flag is set (`true` or `1`).
    pub fn flag(&self, name: &str) -> bool {
        self.query
            .iter()
            .any(|(k, v)| k == name && (v == "true" || v == "1"))
    }

    /// Every value of a query parameter, in order.
    pub fn values(&self, name: &str) -> Vec<String> {
        self.query
            .iter()
            .filter(|(k, _)| k == name)
            .map(|(_, v)| v.clone())
            .collect()
    }
}

/// Where a subresource request goes: a connection, the `Host` and the request target on it.
pub struct Upstream {
    /// The connection.
    pub io: Box<dyn Connection>,
    /// The `Host` header.
    pub host: String,
    /// The request target (path and query).
    pub target: String,
}

/// What the stand-in asks the test.
#[async_trait]
pub trait PodBackend: Send + Sync + 'static {
    /// The pod `namespace/name` as a JSON object, if it exists.
    fn pod(&self, namespace: &str, name: &str) -> Option<serde_json::Value>;
    /// Where a pod subresource request goes; `None` answers 404.
    async fn upstream(&self, req: &SubresourceRequest) -> Option<Upstream>;
}

/// The stand-in API server, on a loopback port until dropped.
pub struct StandInApiServer {
    addr: std::net::SocketAddr,
    upgrades: Arc<Mutex<Vec<String>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for StandInApiServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl StandInApiServer {
    /// Serve on 127.0.0.1 (any port) with `backend`.
    pub async fn start(backend: Arc<dyn PodBackend>) -> std::io::Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let upgrades: Arc<Mutex<Vec<String>>> = Arc::default();
        let seen = upgrades.clone();
        let task = tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                tokio::spawn(serve(backend.clone(), seen.clone(), tcp));
            }
        });
        Ok(Self {
            addr,
            upgrades,
            task,
        })
    }

    /// Its address.
    pub fn addr(&self) -> std::net::SocketAddr {
        self.addr
    }

    /// The `Upgrade` header of the last proxied request ("" for none).
    pub fn last_upgrade(&self) -> String {
        self.upgrades
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .last()
            .cloned()
            .unwrap_or_default()
    }

    /// Write a kubeconfig for this server (namespace `default`, a token user) into `home`;
    /// its path.
    pub fn kubeconfig(&self, home: &Path) -> std::io::Result<PathBuf> {
        std::fs::create_dir_all(home)?;
        let path = home.join("config");
        std::fs::write(
            &path,
            format!(
                "apiVersion: v1\nkind: Config\nclusters:\n- name: fake\n  cluster:\n    server: http://{}\n\
contexts:\n- name: fake\n  context:\n    cluster: fake\n    user: fake\n    namespace: default\n\
current-context: fake\nusers:\n- name: fake\n  user:\n    token: fake\n",
                self.addr
            ),
        )?;
        Ok(path)
    }

    /// A `kubectl` command against this server with `home` as its home (kubeconfig written
    /// there), over WebSocket or forced onto SPDY (exec/attach and port-forward alike); killed
    /// on drop.
    pub fn kubectl(
        &self,
        home: &Path,
        websockets: bool,
    ) -> std::io::Result<tokio::process::Command> {
        let kubeconfig = self.kubeconfig(home)?;
        let ws = if websockets { "true" } else { "false" };
        let mut c = tokio::process::Command::new("kubectl");
        c.env("KUBECONFIG", kubeconfig)
            .env("HOME", home)
            .env("KUBECTL_REMOTE_COMMAND_WEBSOCKETS", ws)
            .env("KUBECTL_PORT_FORWARD_WEBSOCKETS", ws)
            .kill_on_drop(true);
        Ok(c)
    }
}

impl StandInApiServer {
    /// Checks that the last proxied request upgraded to the transport kubectl was asked for
    /// (`websocket` or `SPDY/3.1`).
    pub fn assert_upgraded(&self, websockets: bool, what: &str) {
        let want = if websockets { "websocket" } else { "SPDY/3.1" };
        let seen = self.last_upgrade();
        assert!(
            seen.eq_ignore_ascii_case(want),
            "{what}: kubectl upgraded to {seen:?}"
        );
    }

    /// Runs `kubectl exec -i POD -c CONTAINER -- sh -c 'cat; echo to-stderr >&2; exit 5'`
    /// with one line on stdin and checks what the node must give back: the line on stdout,
    /// `to-stderr` on stderr, exit code 5, and the transport's upgrade.
    pub async fn assert_exec_round_trip(
        &self,
        home: &Path,
        websockets: bool,
        pod: &str,
        container: &str,
        limit: std::time::Duration,
    ) {
        let what = if websockets { "websocket" } else { "spdy" };
        let mut cmd = self.kubectl(home, websockets).expect("kubectl command");
        cmd.args(["exec", "-i", pod, "-c", container, "--", "sh", "-c"])
            .arg("cat; echo to-stderr >&2; exit 5")
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped());
        let mut child = cmd.spawn().expect("starting kubectl exec");
        let mut stdin = child.stdin.take().expect("kubectl's stdin");
        stdin
            .write_all(b"piped through kubectl\n")
            .await
            .expect("writing kubectl's stdin");
        drop(stdin);
        let out = tokio::time::timeout(limit, child.wait_with_output())
            .await
            .expect("kubectl exec finished")
            .expect("kubectl exec");
        let stdout = String::from_utf8_lossy(&out.stdout);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(stdout, "piped through kubectl\n", "{what}: stderr {stderr}");
        assert!(stderr.contains("to-stderr"), "{what}: {stderr}");
        assert_eq!(out.status.code(), Some(5), "{what}: {stderr}");
        self.assert_upgraded(websockets, what);
    }

    /// Starts `kubectl port-forward pod/POD :PORT` and waits (up to `limit`) until it says where
    /// it listens: the child (killed on drop) and the local port.
    pub async fn port_forward(
        &self,
        home: &Path,
        websockets: bool,
        pod: &str,
        port: u16,
        limit: std::time::Duration,
    ) -> (tokio::process::Child, u16) {
        let what = if websockets { "websocket" } else { "spdy" };
        let mut child = self
            .kubectl(home, websockets)
            .expect("kubectl command")
            .args(["port-forward", &format!("pod/{pod}"), &format!(":{port}")])
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("starting kubectl port-forward");
        let mut stdout = child.stdout.take().expect("kubectl's stdout");
        let needle = format!(" -> {port}");
        let mut got = Vec::new();
        let found = tokio::time::timeout(limit, async {
            let mut b = [0u8; 1024];
            while !String::from_utf8_lossy(&got).contains(&needle) {
                match stdout.read(&mut b).await {
                    Ok(0) | Err(_) => return false,
                    Ok(n) => got.extend_from_slice(&b[..n]),
                }
            }
            true
        })
        .await;
        // kubectl keeps writing there: the pipe stays open with the child
        child.stdout = Some(stdout);
        let line = String::from_utf8_lossy(&got).into_owned();
        assert!(
            matches!(found, Ok(true)),
            "{what} port-forward: no {needle:?} in {line:?}"
        );
        let local = line
            .split("127.0.0.1:")
            .nth(1)
            .and_then(|r| r.split(' ').next())
            .and_then(|p| p.parse().ok())
            .unwrap_or_else(|| panic!("{what}: no local port in {line:?}"));
        (child, local)
    }
}

/// `a+b%20c` -> `a b c` (form decoding as Go's `url.Values` encodes).
pub fn form_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < b.len() => {
                let hex = std::str::from_utf8(&b[i + 1..i + 3]).unwrap_or("");
                match u8::from_str_radix(hex, 16) {
                    Ok(v) => {
                        out.push(v);
                        i += 2;
                    }
                    Err(_) => out.push(b'%'),
                }
            }
            c => out.push(c),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn discovery(path: &str) -> Option<&'static str> {
    Some(match path {
        "/api" => {
            r#"{"kind":"APIVersions","versions":["v1"],"serverAddressByClientCIDRs":[{"clientCIDR":"0.0.0.0/0","serverAddress":"127.0.0.1:443"}]}"#
        }
        "/apis" => r#"{"kind":"APIGroupList","apiVersion":"v1","groups":[]}"#,
        "/version" => r#"{"major":"1","minor":"32","gitVersion":"v1.32.0"}"#,
        "/api/v1" => {
            r#"{"kind":"APIResourceList","groupVersion":"v1","resources":[
            {"name":"pods","singularName":"pod","namespaced":true,"kind":"Pod","verbs":["get","list"],"shortNames":["po"]},
            {"name":"pods/exec","singularName":"","namespaced":true,"kind":"PodExecOptions","verbs":["create","get"]},
            {"name":"pods/attach","singularName":"","namespaced":true,"kind":"PodAttachOptions","verbs":["create","get"]},
            {"name":"pods/log","singularName":"","namespaced":true,"kind":"Pod","verbs":["get"]},
            {"name":"pods/portforward","singularName":"","namespaced":true,"kind":"PodPortForwardOptions","verbs":["create","get"]}]}"#
        }
        _ => return None,
    })
}

/// One client connection: JSON for the GETs; a pod subresource request is proxied upstream.
async fn serve(
    backend: Arc<dyn PodBackend>,
    upgrades: Arc<Mutex<Vec<String>>>,
    mut tcp: TcpStream,
) {
    let mut buf: Vec<u8> = Vec::new();
    loop {
        let end = loop {
            if let Some(p) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break p + 4;
            }
            let mut chunk = [0u8; 4096];
            match tcp.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        };
        let head = String::from_utf8_lossy(&buf[..end]).into_owned();
        buf.drain(..end);
        let mut lines = head.split("\r\n");
        let request_line = lines.next().unwrap_or("").to_string();
        let headers: Vec<(String, String)> = lines
            .filter_map(|l| l.split_once(':'))
            .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
            .collect();
        let mut parts = request_line.split(' ');
        let (method, target) = (parts.next().unwrap_or(""), parts.next().unwrap_or("/"));
        let (path, query) = target.split_once('?').unwrap_or((target, ""));
        let pod_path: Vec<&str> = path
            .strip_prefix("/api/v1/namespaces/")
            .map(|r| r.split('/').collect())
            .unwrap_or_default();
        let (status, body) = match pod_path.as_slice() {
            [ns, "pods", pod, sub] => {
                let req = SubresourceRequest {
                    method: method.to_string(),
                    namespace: ns.to_string(),
                    pod: pod.to_string(),
                    subresource: sub.to_string(),
                    query: query
                        .split('&')
                        .filter(|kv| !kv.is_empty())
                        .map(|kv| kv.split_once('=').unwrap_or((kv, "")))
                        .map(|(k, v)| (k.to_string(), form_decode(v)))
                        .collect(),
                    raw_query: query.to_string(),
                };
                let upgrade = headers
                    .iter()
                    .find(|(k, _)| k.eq_ignore_ascii_case("upgrade"))
                    .map(|(_, v)| v.clone())
                    .unwrap_or_default();
                upgrades
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .push(upgrade);
                let Some(mut up) = backend.upstream(&req).await else {
                    let _ = tcp.write_all(not_found().as_bytes()).await;
                    return;
                };
                let mut head = format!("{method} {} HTTP/1.1\r\nHost: {}\r\n", up.target, up.host);
                for (k, v) in &headers {
                    if !k.eq_ignore_ascii_case("host") && !k.eq_ignore_ascii_case("authorization") {
                        head.push_str(&format!("{k}: {v}\r\n"));
                    }
                }
                head.push_str("\r\n");
                if up.io.write_all(head.as_bytes()).await.is_err()
                    || up.io.write_all(&buf).await.is_err()
                {
                    return;
                }
                let _ = tokio::io::copy_bidirectional(&mut tcp, &mut up.io).await;
                return;
            }
            [ns, "pods", pod] => match backend.pod(ns, pod) {
                Some(mut v) => {
                    v["kind"] = "Pod".into();
                    v["apiVersion"] = "v1".into();
                    ("200 OK", v.to_string())
                }
                None => ("404 Not Found", NOT_FOUND.to_string()),
            },
            _ => match discovery(path) {
                Some(b) => ("200 OK", b.to_string()),
                None => ("404 Not Found", NOT_FOUND.to_string()),
            },
        };
        let resp = format!(
            "HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
        if tcp.write_all(resp.as_bytes()).await.is_err() {
            return;
        }
    }
}

const NOT_FOUND: &str =
    r#"{"kind":"Status","apiVersion":"v1","status":"Failure","reason":"NotFound","code":404}"#;

fn not_found() -> String {
    format!(
        "HTTP/1.1 404 Not Found\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{NOT_FOUND}",
        NOT_FOUND.len()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn form_decoding_as_go_encodes() {
        assert_eq!(form_decode("a+b%20c%2Fd"), "a b c/d");
        assert_eq!(form_decode("100%"), "100%");
        assert_eq!(form_decode("%zz"), "%zz");
    }
}
