//! The registry becomes unreachable in the middle of a pull of a large layer: a TCP relay in
//! front of a real docker-registry on 127.0.0.1 cuts every connection once a few MiB of the layer
//! went through and stops listening (connections refused). The pull must fail with an error that
//! names what failed, leave no partial download, layer or image behind, and succeed once the
//! registry is reachable again. Runs as any user; needs `docker-registry` and busybox-static.

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use node_cri::native::image::{ImageStore, ImageStoreConfig};
use node_test_support::{LocalRegistry, TestImage, require_command, require_path};

/// A relay on a fixed port that forwards to `upstream` until cut.
struct Relay {
    port: u16,
    /// Bytes sent back to clients.
    down: Arc<AtomicU64>,
    /// Set: close every connection and stop accepting.
    cut: Arc<AtomicBool>,
}

impl Relay {
    /// Relay `port` (0: any) to `upstream`; cut by itself once `cut_after` bytes went down to
    /// clients (0: never).
    fn start(port: u16, upstream: SocketAddr, cut_after: u64) -> Self {
        let listener = TcpListener::bind(("127.0.0.1", port)).expect("binding the relay");
        let port = listener.local_addr().unwrap().port();
        let relay = Self {
            port,
            down: Arc::default(),
            cut: Arc::default(),
        };
        let (down, cut, limit) = (relay.down.clone(), relay.cut.clone(), cut_after);
        listener.set_nonblocking(true).unwrap();
        std::thread::spawn(move || {
            while !cut.load(Ordering::SeqCst) {
                match listener.accept() {
                    Ok((client, _)) => {
                        client.set_nonblocking(false).unwrap();
                        let Ok(server) = TcpStream::connect(upstream) else {
                            continue;
                        };
                        pump(client, server, down.clone(), cut.clone(), limit);
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(5)),
                }
            }
            // dropping the listener: connections are refused from now on
        });
        relay
    }
}

fn pump(
    client: TcpStream,
    server: TcpStream,
    down: Arc<AtomicU64>,
    cut: Arc<AtomicBool>,
    limit: u64,
) {
    let (c2, s2) = (client.try_clone().unwrap(), server.try_clone().unwrap());
    // upstream: client -> server
    std::thread::spawn(move || {
        let (mut from, mut to) = (c2, s2);
        let mut buf = [0u8; 16 * 1024];
        while let Ok(n) = from.read(&mut buf) {
            if n == 0 || to.write_all(&buf[..n]).is_err() {
                break;
            }
        }
        let _ = to.shutdown(Shutdown::Write);
    });
    // downstream: server -> client, counted, cut when told
    std::thread::spawn(move || {
        let (mut from, mut to) = (server, client);
        from.set_read_timeout(Some(Duration::from_millis(50)))
            .unwrap();
        let mut buf = [0u8; 16 * 1024];
        loop {
            if cut.load(Ordering::SeqCst) {
                break;
            }
            match from.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => {
                    if to.write_all(&buf[..n]).is_err() {
                        break;
                    }
                    let total = down.fetch_add(n as u64, Ordering::SeqCst) + n as u64;
                    if limit > 0 && total >= limit {
                        cut.store(true, Ordering::SeqCst);
                    }
                }
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) => {}
                Err(_) => break,
            }
        }
        let _ = to.shutdown(Shutdown::Both);
        let _ = from.shutdown(Shutdown::Both);
    });
}

/// Every file under `dir` with its size.
fn files(dir: &Path) -> Vec<(String, u64)> {
    let mut out = vec![];
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(files(&p));
        } else {
            out.push((
                p.display().to_string(),
                e.metadata().map(|m| m.len()).unwrap_or(0),
            ));
        }
    }
    out
}

/// Incompressible bytes (splitmix64), so that the layer stays large after gzip.
fn noise(len: usize) -> Vec<u8> {
    let mut x: u64 = 0x6e6b;
    let mut v = Vec::with_capacity(len + 8);
    while v.len() < len {
        x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = x;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        v.extend_from_slice(&(z ^ (z >> 31)).to_le_bytes());
    }
    v.truncate(len);
    v
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registry_unreachable_mid_pull_fails_cleanly_and_a_retry_succeeds() {
    let test = "registry_unreachable_mid_pull_fails_cleanly_and_a_retry_succeeds";
    if !require_command(test, "docker-registry")
        || !require_path(test, node_test_support::image::BUSYBOX)
    {
        return;
    }
    const BIG: usize = 24 << 20;
    let reg = LocalRegistry::start().unwrap();
    let img = TestImage::busybox()
        .file("/data/big.bin", noise(BIG), 0o644)
        .build()
        .unwrap();
    let layer_len = img.layers[0].bytes.len() as u64;
    assert!(
        layer_len > (16 << 20),
        "the layer compressed to {layer_len} bytes"
    );
    reg.push(&img, "nodekit/big", "1").unwrap();

    // cut once 4 MiB of the layer went through
    let relay = Relay::start(0, reg.addr(), 4 << 20);
    let reference = format!("127.0.0.1:{}/nodekit/big:1", relay.port);
    let root = tempfile::tempdir().unwrap();
    let store = ImageStore::new(ImageStoreConfig {
        root: root.path().to_path_buf(),
        architecture: "amd64".into(),
        ..Default::default()
    })
    .unwrap();
    let err = tokio::time::timeout(Duration::from_secs(120), store.pull(&reference, None))
        .await
        .expect("the pull hangs after the registry went away")
        .expect_err("a pull through a cut connection must fail");
    let msg = err.to_string();
    let through = relay.down.load(Ordering::SeqCst);
    eprintln!("pull failed after {through} bytes: {msg}");
    assert!(relay.cut.load(Ordering::SeqCst), "the relay was never cut");
    assert!(
        through < layer_len,
        "the whole layer went through before the cut"
    );
    assert!(
        msg.contains("127.0.0.1") || msg.contains("sha256:") || msg.contains("nodekit/big"),
        "the error does not say what failed: {msg}"
    );
    // nothing partial is left: no ingest file, no blob, no layer of the big size
    let left: Vec<(String, u64)> = files(root.path())
        .into_iter()
        .filter(|(_, len)| *len >= (1 << 20))
        .collect();
    assert!(left.is_empty(), "partial content left: {left:?}");
    assert!(
        store.get(&reference).is_none(),
        "an image record after a failed pull"
    );

    // the registry is reachable again (same address): the retry succeeds
    std::thread::sleep(Duration::from_millis(200)); // the cut relay's listener is closed by now
    let relay = Relay::start(relay.port, reg.addr(), 0);
    let rec = tokio::time::timeout(Duration::from_secs(120), store.pull(&reference, None))
        .await
        .expect("the retry hangs")
        .expect("the retry after the registry came back");
    let dirs = store.layer_dirs(&rec.id).unwrap();
    let got = std::fs::read(dirs[0].join("data/big.bin")).unwrap();
    assert_eq!(got.len(), BIG);
    assert!(
        got == noise(BIG),
        "the layer content differs after the retry"
    );
    eprintln!(
        "retry pulled {} bytes through the relay",
        relay.down.load(Ordering::SeqCst)
    );
}
