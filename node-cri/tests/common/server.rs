//! A [`CriServer`] on a temporary socket, with raw tonic clients (which send requests as they
//! are, unlike `CriClient`, which checks them first) and a `CriClient`.

use std::path::PathBuf;
use std::time::Duration;

use hyper_util::rt::TokioIo;
use k8s_cri::v1::image_service_client::ImageServiceClient;
use k8s_cri::v1::runtime_service_client::RuntimeServiceClient;
use node_cri::server::{CriServer, ServeError};
use node_cri::{CriClient, CriClientConfig};
use tokio::net::UnixStream;
use tonic::transport::{Channel, Endpoint, Uri};

/// A server running on its own task until [`Served::stop`].
pub struct Served {
    /// Holds the socket's directory.
    pub dir: tempfile::TempDir,
    /// The socket.
    pub socket: PathBuf,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<Result<(), ServeError>>>,
}

/// A channel to a unix socket.
pub async fn channel(socket: &std::path::Path) -> Channel {
    let path = socket.to_path_buf();
    Endpoint::from_static("http://cri.invalid")
        .connect_timeout(Duration::from_secs(5))
        .connect_with_connector(tower::service_fn(move |_: Uri| {
            let path = path.clone();
            async move { UnixStream::connect(&path).await.map(TokioIo::new) }
        }))
        .await
        .expect("connect to the CRI server")
}

impl Served {
    /// Serve `server` on `<tempdir>/run/cri.sock` (the directory is created by the server) and
    /// wait until it answers.
    pub async fn start(server: CriServer) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("run/cri.sock");
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let path = socket.clone();
        let task = tokio::spawn(async move {
            server
                .serve(&path, async move {
                    let _ = rx.await;
                })
                .await
        });
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while UnixStream::connect(&socket).await.is_err() {
            assert!(
                std::time::Instant::now() < deadline,
                "the CRI server did not listen on {} within 10 s",
                socket.display()
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        Self {
            dir,
            socket,
            stop: Some(tx),
            task: Some(task),
        }
    }

    /// A raw `RuntimeService` client.
    pub async fn runtime(&self) -> RuntimeServiceClient<Channel> {
        RuntimeServiceClient::new(channel(&self.socket).await)
    }

    /// A raw `ImageService` client.
    pub async fn images(&self) -> ImageServiceClient<Channel> {
        ImageServiceClient::new(channel(&self.socket).await)
    }

    /// A `CriClient` on the socket.
    pub async fn cri_client(&self) -> CriClient {
        CriClient::connect(CriClientConfig {
            endpoint: format!("unix://{}", self.socket.display()),
            call_timeout: Duration::from_secs(60),
            ..Default::default()
        })
        .await
        .expect("CriClient connects to the CriServer")
    }

    /// Signal shutdown and wait (at most 30 s) for the server to drain and return.
    pub async fn stop(mut self) -> Result<(), ServeError> {
        self.stop.take().map(|tx| tx.send(()));
        let task = self.task.take().unwrap();
        tokio::time::timeout(Duration::from_secs(30), task)
            .await
            .expect("the server stopped within 30 s")
            .expect("the server task did not panic")
    }

    /// Signal shutdown without waiting; the returned task ends when the server has drained.
    pub fn begin_stop(&mut self) -> tokio::task::JoinHandle<Result<(), ServeError>> {
        self.stop.take().map(|tx| tx.send(()));
        self.task.take().unwrap()
    }
}

impl Drop for Served {
    fn drop(&mut self) {
        self.stop.take().map(|tx| tx.send(()));
        if let Some(t) = self.task.take() {
            t.abort();
        }
    }
}
