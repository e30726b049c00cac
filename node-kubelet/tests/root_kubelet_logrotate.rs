//! Root test (the native runtime's namespaces and cgroups; no network traffic): container log
//! rotation by the [`NodeManager`] on the real native runtime. A busybox container writes
//! numbered lines fast; with a 64Ki max size and a 1 s interval its log is rotated again and
//! again by rename and `ReopenContainerLog` (the monitor reopens on SIGUSR1). Never more than
//! `max_files` log files are kept, the older rotated ones are gzip of CRI lines, and the lines
//! kept (the rotated files, oldest first, then the current log) follow each other with no gap:
//! nothing is lost at a rotation. The kubelet's log reader still serves the current file.
//! The same against a private containerd through the CRI client (its `ReopenContainerLog`).
//!
//! The kubelet runs on a thread inside a NetnsFixture (the native runtime: under its own
//! temporary root and cgroup root; the guard kills what is left in that cgroup tree and
//! unmounts everything on drop, panics included) or inside the `ContainerdFixture`'s namespace
//! (everything goes with the fixture on drop). Figures (rotations of a log of about a second of
//! lines and of a 10Mi one) are printed with `--nocapture`.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use node_core::{ImageBackend, Pod, RuntimeBackend};
use node_kubelet::CancellationToken;
use node_kubelet::node::logrotate::{
    COMPRESS_SUFFIX, ContainerLogConfig, ContainerLogManager, RotateOutcome, all_logs,
};
use node_kubelet::node::logs::{LogOptions, parse_cri_line, read_logs};
use node_kubelet::node::volumes::MemoryObjectStore;
use node_kubelet::node::{NodeConfig, NodeManager};
use node_test_support::{
    ContainerdFixture, ScriptedPodSource, TestImage, require_path, require_root,
    until_async as until,
};

mod support;
use support::in_netns;
use support::native::Guard;

const IMAGE: &str = "busybox:logrotate-test";
const MAX_SIZE: i64 = 64 << 10;
const MAX_FILES: usize = 3;

/// Numbered lines, about 10 000 a second (a pause every 200 lines keeps a core free).
const WRITER: &str = r#"
apiVersion: v1
kind: Pod
metadata: {name: chatty, namespace: default, uid: uid-chatty}
spec:
  terminationGracePeriodSeconds: 1
  containers:
  - name: app
    image: IMG
    imagePullPolicy: PULL
    command: [sh, -c, 'i=0; while true; do echo "line $i"; i=$((i+1)); if [ $((i % 200)) -eq 0 ]; then usleep 20000; fi; done']
"#;

/// The content of a log file, gunzipped when it is compressed.
fn read_log_file(path: &Path) -> Vec<u8> {
    let raw = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    if !path.display().to_string().ends_with(COMPRESS_SUFFIX) {
        return raw;
    }
    let mut out = Vec::new();
    flate2::read::GzDecoder::new(&raw[..])
        .read_to_end(&mut out)
        .unwrap_or_else(|e| panic!("{}: not gzip: {e}", path.display()));
    out
}

/// The numbers of the `line N` entries of CRI log text (complete lines only); panics on a line
/// that is not a CRI entry of this writer.
fn numbers(text: &[u8], what: &str) -> Vec<u64> {
    let complete = match text.iter().rposition(|b| *b == b'\n') {
        Some(end) => &text[..end],
        None => return Vec::new(),
    };
    complete
        .split(|b| *b == b'\n')
        .map(|line| {
            let e = parse_cri_line(line).unwrap_or_else(|| {
                panic!(
                    "{what}: not a CRI line: {:?}",
                    String::from_utf8_lossy(line)
                )
            });
            assert!(!e.partial && e.stream == "stdout", "{what}: {e:?}");
            std::str::from_utf8(e.content)
                .ok()
                .and_then(|c| c.strip_prefix("line "))
                .and_then(|n| n.parse().ok())
                .unwrap_or_else(|| panic!("{what}: {:?}", String::from_utf8_lossy(e.content)))
        })
        .collect()
}

/// CRI entries `line <n>..` of about `bytes`, as the runtime writes them.
fn cri_text(bytes: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(bytes + 64);
    let mut n = 0u64;
    while out.len() < bytes {
        out.extend_from_slice(
            format!("2026-11-24T00:00:00.000000000Z stdout F filler {n:012}\n").as_bytes(),
        );
        n += 1;
    }
    out
}

/// Runs the writer pod on a kubelet whose node manager rotates logs (64Ki, 1 s, 3 files) on
/// `runtime`, checks the rotations, the files kept and their lines, and the log reader; returns
/// the container and its log with the kubelet stopped (the pod still running).
async fn rotate_a_fast_writer(
    runtime: Arc<dyn RuntimeBackend>,
    images: Arc<dyn ImageBackend>,
    root: &Path,
    log_root: &Path,
    pod_yaml: &str,
) -> (String, PathBuf) {
    let mut c = NodeConfig::new("node-1");
    c.cgroups = None;
    c.gc.enabled = false;
    c.volumes.root_dir = root.join("kubelet");
    c.allocatable.root_dir = root.to_path_buf();
    c.pod_log_root = log_root.to_path_buf();
    c.container_logs = Some(ContainerLogConfig {
        max_size: MAX_SIZE,
        max_files: MAX_FILES,
        max_workers: 1,
        monitor_interval: Duration::from_secs(1),
    });
    let alloc = node_kubelet::node::allocatable::NodeResources {
        cpu_milli: 2000,
        memory_bytes: 2 << 30,
        ephemeral_storage_bytes: 10 << 30,
        pods: 10,
    };
    let manager = NodeManager::with_allocatable(c, Arc::new(MemoryObjectStore::default()), alloc)
        .expect("node manager");
    let source = ScriptedPodSource::new("api");
    let kubelet = support::scripted_kubelet(&source, runtime.clone(), images, root, log_root)
        .node(Arc::new(manager))
        .build()
        .unwrap();
    let token = CancellationToken::new();
    let t = token.clone();
    let task = tokio::spawn(async move { kubelet.run(t).await.unwrap() });
    let pod: Pod = serde_saphyr::from_str(pod_yaml).unwrap();
    source.apply(pod);

    let id =
        support::running_container(&*runtime, "the writer running", Duration::from_secs(120)).await;
    let log = PathBuf::from(
        runtime
            .container_status(&id, false)
            .await
            .unwrap()
            .status
            .unwrap()
            .log_path,
    );
    assert!(log.starts_with(log_root), "{}", log.display());

    // watch the directory while the node manager rotates: never more than max_files logs
    // in use (plus, for a moment, the `.tmp` of a compression), and several rotations
    let dir = log.parent().unwrap().to_path_buf();
    let mut rotated_seen = std::collections::BTreeSet::new();
    let (mut most_in_use, mut most_entries) = (0, 0);
    let deadline = Instant::now() + Duration::from_secs(90);
    while rotated_seen.len() < 5 {
        assert!(
            Instant::now() < deadline,
            "only {} rotations seen: {rotated_seen:?}",
            rotated_seen.len()
        );
        let in_use = all_logs(&log).unwrap();
        let entries = std::fs::read_dir(&dir).unwrap().count();
        most_in_use = most_in_use.max(in_use.len());
        most_entries = most_entries.max(entries);
        assert!(in_use.len() <= MAX_FILES, "{in_use:?}");
        assert!(
            entries <= MAX_FILES + 1,
            "{entries} files in {}",
            dir.display()
        );
        for f in &in_use[..in_use.len() - 1] {
            let n = f.display().to_string();
            rotated_seen.insert(n.trim_end_matches(COMPRESS_SUFFIX).to_string());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    eprintln!(
        "figure: {} rotations seen; at most {most_in_use} log files in use, {most_entries} directory entries (max_files {MAX_FILES})",
        rotated_seen.len()
    );

    // stop the kubelet (and its rotation); the pod keeps running and writing
    token.cancel();
    let _ = tokio::time::timeout(Duration::from_secs(30), task).await;
    // the rotation's last round is over when the files stay the same for a while (and the
    // runtime has reopened by then: the newest rotated file gets no more lines)
    let files = until("the rotation stopped", Duration::from_secs(60), || async {
        let before = std::fs::read_dir(&dir).unwrap().count();
        let files = all_logs(&log).unwrap();
        tokio::time::sleep(Duration::from_millis(500)).await;
        let after = std::fs::read_dir(&dir).unwrap().count();
        (before == after && after == files.len() && all_logs(&log).unwrap() == files)
            .then_some(files)
    })
    .await;
    assert_eq!(files.len(), MAX_FILES, "{files:?}");
    let (older, newest) = (&files[..MAX_FILES - 2], &files[MAX_FILES - 2]);
    for f in older {
        assert!(f.display().to_string().ends_with(COMPRESS_SUFFIX), "{f:?}");
    }
    assert!(!newest.display().to_string().ends_with(COMPRESS_SUFFIX));
    let mut kept: Vec<u64> = Vec::new();
    for f in &files {
        let text = read_log_file(f);
        let n = numbers(&text, &f.display().to_string());
        if f != &log {
            // a rotated file is at least the max size, and ends with a whole line
            assert!(text.len() as i64 >= MAX_SIZE, "{f:?}: {} bytes", text.len());
            assert_eq!(text.last(), Some(&b'\n'), "{f:?}");
        }
        kept.extend(n);
    }
    assert!(kept.len() > 3 * 1000, "{} lines kept", kept.len());
    for w in kept.windows(2) {
        assert_eq!(
            w[1],
            w[0] + 1,
            "a gap in the kept lines at {} -> {}",
            w[0],
            w[1]
        );
    }
    // the oldest lines went with the files removed beyond max_files
    assert!(kept[0] > 0, "nothing was removed");
    eprintln!(
        "figure: lines {}..={} kept in {} files, no gap",
        kept[0],
        kept[kept.len() - 1],
        files.len()
    );

    // the kubelet's log reader serves the current file
    let mut out = Vec::new();
    let opts = LogOptions {
        tail_lines: Some(5),
        ..Default::default()
    };
    read_logs(&log, &opts, &mut out, || async { false })
        .await
        .unwrap();
    let served = String::from_utf8(out).unwrap();
    let lines: Vec<u64> = served
        .lines()
        .map(|l| l.strip_prefix("line ").unwrap().parse().unwrap())
        .collect();
    assert_eq!(lines.len(), 5, "{served}");
    assert!(lines[0] > *kept.last().unwrap() - 5, "{served}");

    (id, log)
}

#[test]
fn a_fast_writer_s_log_is_rotated_kept_within_max_files_and_loses_no_line() {
    let name = "a_fast_writer_s_log_is_rotated_kept_within_max_files_and_loses_no_line";
    if !(require_root(name) && require_path(name, node_test_support::image::BUSYBOX)) {
        return;
    }
    let g = Arc::new(Guard::new("logrot"));
    let g2 = g.clone();
    in_netns("nk-logrot", move || async move {
        let root = g2.dir.path().to_path_buf();
        let (runtime, images) = support::native::busybox_runtime(&g2, IMAGE);
        let yaml = WRITER.replace("IMG", IMAGE).replace("PULL", "Never");
        let (id, log) =
            rotate_a_fast_writer(runtime.clone(), images, &root, &root.join("logs"), &yaml).await;

        // figures: rotations of the log as the writer left it (its lines of about a second),
        // with 10Mi appended, and again: each compresses the file the one before rotated
        let m = ContainerLogManager::new(
            ContainerLogConfig {
                max_size: MAX_SIZE,
                max_files: MAX_FILES,
                ..Default::default()
            },
            runtime.clone(),
        )
        .unwrap();
        let mut previous = None;
        for appended in [0usize, 10 << 20, 0] {
            // a new second: the rotated name of this one may be taken
            tokio::time::sleep(Duration::from_millis(1100)).await;
            if appended > 0 {
                use std::io::Write;
                let mut f = std::fs::OpenOptions::new().append(true).open(&log).unwrap();
                f.write_all(&cri_text(appended)).unwrap();
            }
            match m.rotate_container(&id).await.unwrap() {
                RotateOutcome::Rotated(r) => {
                    eprintln!(
                        "figure: rotation of a {} KiB log, gzipping the {} rotated before it: {:.1} ms (debug build, shared machine)",
                        r.size >> 10,
                        previous.map_or("file the node last".to_string(), |p: u64| format!(
                            "{} KiB",
                            p >> 10
                        )),
                        r.elapsed.as_secs_f64() * 1000.0
                    );
                    previous = Some(r.size);
                }
                other => panic!("not rotated: {other:?}"),
            }
        }
        let files = all_logs(&log).unwrap();
        assert_eq!(files.len(), MAX_FILES, "{files:?}");
        // the 10Mi file, compressed now, is whole
        let ten = read_log_file(&files[0]);
        assert!(ten.len() >= 10 << 20, "{} bytes", ten.len());
        assert!(ten.ends_with(b"\n"));

        support::remove_all_sandboxes(&*runtime).await;
    });
    drop(g);
}

#[test]
fn containerd_reopens_the_log_the_node_manager_rotates() {
    if !ContainerdFixture::require("containerd_reopens_the_log_the_node_manager_rotates") {
        return;
    }
    let f = ContainerdFixture::start().expect("containerd fixture");
    let image = f
        .push(
            &TestImage::busybox().build().unwrap(),
            "nodekit/logrotate",
            "1",
        )
        .unwrap();
    let work = tempfile::tempdir().unwrap();
    std::fs::write(work.path().join("resolv.conf"), "nameserver 10.96.0.10\n").unwrap();
    let log_root = f.pod_log_dir("kubelet").unwrap();
    let yaml = WRITER
        .replace("IMG", &image)
        .replace("PULL", "IfNotPresent");
    let (fr, root) = (&f, work.path());
    support::containerd::in_netns(&f, || async move {
        let client = support::containerd::connect(fr).await;
        let rt = support::containerd::runtime(fr, client.clone());
        rotate_a_fast_writer(rt.clone(), client, root, &log_root, &yaml).await;
        support::remove_all_sandboxes(&*rt).await;
    });
}
