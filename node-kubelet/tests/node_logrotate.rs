//! Container log rotation (kubelet's `ContainerLogManager`) against the fake runtime, whose
//! `ReopenContainerLog` creates the log file anew as a runtime does, records the call and can
//! be made to fail: rotation only at the max size, the files kept, the compression of all but
//! the newest rotated file, the rename back when the reopen fails, the clean-up of leftovers,
//! a missing log reopened, and the configurations kubelet refuses.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use node_core::{RuntimeBackend, RuntimeError, cri};
use node_kubelet::node::logrotate::{
    ContainerLogConfig, ContainerLogManager, LogRotateError, RotateOutcome, all_logs,
    remove_container_and_logs, rotation_timestamp,
};
use node_kubelet::node::volumes::MemoryObjectStore;
use node_kubelet::node::{NodeConfig, NodeManager, manager::NodeManagerError};
use node_test_support::FakeRuntime;

const IMAGE: &str = "busybox:logs";

/// A running container of its own pod whose log is `<dir>/<name>/0.log` (not created).
async fn running_container(rt: &FakeRuntime, dir: &Path, name: &str) -> (String, PathBuf) {
    rt.add_image(IMAGE);
    let sandbox = rt
        .run_pod_sandbox(cri::RunPodSandboxRequest {
            config: Some(cri::PodSandboxConfig {
                metadata: Some(cri::PodSandboxMetadata {
                    name: name.into(),
                    uid: format!("uid-{name}"),
                    namespace: "default".into(),
                    attempt: 0,
                }),
                ..Default::default()
            }),
            runtime_handler: String::new(),
        })
        .await
        .unwrap();
    let log = dir.join(name).join("0.log");
    std::fs::create_dir_all(log.parent().unwrap()).unwrap();
    let id = rt
        .create_container(cri::CreateContainerRequest {
            pod_sandbox_id: sandbox,
            config: Some(cri::ContainerConfig {
                metadata: Some(cri::ContainerMetadata {
                    name: name.into(),
                    attempt: 0,
                }),
                image: Some(cri::ImageSpec {
                    image: IMAGE.into(),
                    ..Default::default()
                }),
                log_path: log.display().to_string(),
                ..Default::default()
            }),
            sandbox_config: None,
        })
        .await
        .unwrap();
    rt.start_container(&id).await.unwrap();
    (id, log)
}

fn manager(rt: &FakeRuntime, max_size: i64, max_files: usize) -> ContainerLogManager {
    ContainerLogManager::new(
        ContainerLogConfig {
            max_size,
            max_files,
            max_workers: 2,
            monitor_interval: Duration::from_millis(100),
        },
        Arc::new(rt.clone()),
    )
    .unwrap()
}

/// `n` CRI log lines `line <first>..`.
fn cri_lines(first: usize, n: usize) -> String {
    (first..first + n)
        .map(|i| format!("2026-11-24T00:00:00.000000000Z stdout F line {i}\n"))
        .collect()
}

fn gzip(text: &str) -> Vec<u8> {
    use std::io::Write;
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    e.write_all(text.as_bytes()).unwrap();
    e.finish().unwrap()
}

fn gunzip(path: &Path) -> String {
    let mut out = String::new();
    flate2::read::GzDecoder::new(std::fs::File::open(path).unwrap())
        .read_to_string(&mut out)
        .unwrap_or_else(|e| panic!("{}: not gzip: {e}", path.display()));
    out
}

fn with_suffix(p: &Path, suffix: &str) -> PathBuf {
    PathBuf::from(format!("{}{suffix}", p.display()))
}

/// The file names in the log's directory, sorted.
fn names(log: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(log.parent().unwrap())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

fn reopens(rt: &FakeRuntime) -> usize {
    rt.calls()
        .iter()
        .filter(|c| c.starts_with("reopen_container_log"))
        .count()
}

fn rotation(outcome: RotateOutcome) -> node_kubelet::node::logrotate::Rotation {
    match outcome {
        RotateOutcome::Rotated(r) => r,
        other => panic!("not rotated: {other:?}"),
    }
}

#[tokio::test]
async fn only_a_log_at_the_max_size_is_rotated_and_the_runtime_reopens_it() {
    let dir = tempfile::tempdir().unwrap();
    let rt = FakeRuntime::new();
    let (id, log) = running_container(&rt, dir.path(), "app").await;
    let m = manager(&rt, 4096, 5);
    std::fs::write(&log, cri_lines(0, 10)).unwrap();
    let small = std::fs::metadata(&log).unwrap().len();
    assert!(small < 4096);
    let round = m.rotate_logs().await.unwrap();
    assert_eq!(round.len(), 1);
    assert_eq!(
        round[0].1.as_ref().unwrap(),
        &RotateOutcome::BelowMaxSize { size: small }
    );
    assert_eq!(reopens(&rt), 0);
    assert_eq!(names(&log), ["0.log"]);

    let text = cri_lines(0, 200);
    std::fs::write(&log, &text).unwrap();
    let r = rotation(m.rotate_container(&id).await.unwrap());
    assert_eq!(r.size, text.len() as u64);
    assert!(r.compressed.is_empty() && r.removed.is_empty(), "{r:?}");
    // the old content under its rotated name, a fresh current log from the runtime's reopen
    assert_eq!(std::fs::read_to_string(&r.rotated).unwrap(), text);
    let suffix = r.rotated.display().to_string();
    let suffix = suffix.rsplit_once("0.log.").unwrap().1;
    assert_eq!((suffix.len(), &suffix[8..9]), (15, "-"), "{suffix}");
    assert_eq!(std::fs::metadata(&log).unwrap().len(), 0);
    assert_eq!(
        rt.calls().last().unwrap(),
        &format!("reopen_container_log {id}")
    );
    assert_eq!(
        all_logs(&log).unwrap(),
        vec![r.rotated.clone(), log.clone()]
    );
}

#[tokio::test]
async fn the_oldest_files_go_beyond_max_files_and_all_but_the_newest_rotated_are_gzipped() {
    let dir = tempfile::tempdir().unwrap();
    let rt = FakeRuntime::new();
    let (id, log) = running_container(&rt, dir.path(), "app").await;
    // four rotated files of earlier rounds, the two oldest compressed already
    let old = |n: u32| with_suffix(&log, &format!(".20200101-00000{n}"));
    std::fs::write(with_suffix(&old(1), ".gz"), gzip(&cri_lines(0, 10))).unwrap();
    std::fs::write(with_suffix(&old(2), ".gz"), gzip(&cri_lines(10, 10))).unwrap();
    std::fs::write(old(3), cri_lines(20, 10)).unwrap();
    std::fs::write(old(4), cri_lines(30, 10)).unwrap();
    std::fs::write(&log, cri_lines(40, 100)).unwrap();

    // max 4 files: 2 earlier rotated ones, the one rotated now and the new current log
    let r = rotation(manager(&rt, 1024, 4).rotate_container(&id).await.unwrap());
    assert_eq!(
        r.removed,
        vec![with_suffix(&old(1), ".gz"), with_suffix(&old(2), ".gz")]
    );
    assert_eq!(
        r.compressed,
        vec![with_suffix(&old(3), ".gz"), with_suffix(&old(4), ".gz")]
    );
    let files = all_logs(&log).unwrap();
    assert_eq!(
        files,
        vec![
            with_suffix(&old(3), ".gz"),
            with_suffix(&old(4), ".gz"),
            r.rotated.clone(),
            log.clone()
        ]
    );
    assert_eq!(names(&log).len(), 4, "{:?}", names(&log));
    // every rotated file but the newest is gzip of the very lines it had; none is lost
    assert_eq!(gunzip(&files[0]), cri_lines(20, 10));
    assert_eq!(gunzip(&files[1]), cri_lines(30, 10));
    assert_eq!(
        std::fs::read_to_string(&files[2]).unwrap(),
        cri_lines(40, 100)
    );
    assert!(!old(3).exists() && !old(4).exists());
}

#[tokio::test]
async fn max_files_two_keeps_the_rotated_log_and_the_current_one() {
    let dir = tempfile::tempdir().unwrap();
    let rt = FakeRuntime::new();
    let (id, log) = running_container(&rt, dir.path(), "app").await;
    std::fs::write(with_suffix(&log, ".20200101-000001"), cri_lines(0, 5)).unwrap();
    std::fs::write(&log, cri_lines(5, 100)).unwrap();
    let r = rotation(manager(&rt, 1024, 2).rotate_container(&id).await.unwrap());
    assert_eq!(r.removed, vec![with_suffix(&log, ".20200101-000001")]);
    assert_eq!(all_logs(&log).unwrap(), vec![r.rotated, log.clone()]);
    assert_eq!(names(&log).len(), 2);
}

#[tokio::test]
async fn a_failed_reopen_renames_the_log_back_and_a_later_round_rotates_it() {
    let dir = tempfile::tempdir().unwrap();
    let rt = FakeRuntime::new();
    let (id, log) = running_container(&rt, dir.path(), "app").await;
    let m = manager(&rt, 1024, 5);
    let text = cri_lines(0, 100);
    std::fs::write(&log, &text).unwrap();
    rt.fail_next(
        "reopen_container_log",
        RuntimeError::Unavailable("runtime restarting".into()),
    );
    let err = m.rotate_container(&id).await.unwrap_err();
    assert!(
        matches!(&err, LogRotateError::Reopen { id: i, path, .. } if *i == id && *path == log),
        "{err}"
    );
    assert!(err.to_string().contains("renamed back"), "{err}");
    // nothing lost, nothing left beside it
    assert_eq!(std::fs::read_to_string(&log).unwrap(), text);
    assert_eq!(names(&log), ["0.log"]);

    let r = rotation(m.rotate_container(&id).await.unwrap());
    assert_eq!(std::fs::read_to_string(&r.rotated).unwrap(), text);
}

#[tokio::test]
async fn leftovers_of_an_interrupted_rotation_are_removed() {
    let dir = tempfile::tempdir().unwrap();
    let rt = FakeRuntime::new();
    let (id, log) = running_container(&rt, dir.path(), "app").await;
    // a compression cut short, and one cut after its rename (the original still there)
    let tmp = with_suffix(&log, ".20200101-000001.tmp");
    let done = with_suffix(&log, ".20200101-000002");
    std::fs::write(&tmp, b"half a gzip").unwrap();
    std::fs::write(&done, cri_lines(0, 10)).unwrap();
    std::fs::write(with_suffix(&done, ".gz"), gzip(&cri_lines(0, 10))).unwrap();
    std::fs::write(&log, cri_lines(10, 100)).unwrap();
    let r = rotation(manager(&rt, 1024, 5).rotate_container(&id).await.unwrap());
    let mut removed = r.removed.clone();
    removed.sort();
    assert_eq!(removed, vec![tmp.clone(), done.clone()]);
    assert!(r.compressed.is_empty(), "{r:?}");
    assert!(!tmp.exists() && !done.exists());
    assert_eq!(gunzip(&with_suffix(&done, ".gz")), cri_lines(0, 10));
    assert_eq!(
        all_logs(&log).unwrap(),
        vec![with_suffix(&done, ".gz"), r.rotated, log]
    );
}

#[tokio::test]
async fn a_second_rotation_within_the_same_second_waits_for_the_next_round() {
    let dir = tempfile::tempdir().unwrap();
    let rt = FakeRuntime::new();
    let (id, log) = running_container(&rt, dir.path(), "app").await;
    // the rotated names of this second and the next two are taken (one compressed already)
    let now = std::time::SystemTime::now();
    for s in 0..3 {
        let name = rotation_timestamp(now + Duration::from_secs(s));
        std::fs::write(
            with_suffix(&log, &format!(".{name}.gz")),
            gzip(&cri_lines(0, 1)),
        )
        .unwrap();
    }
    let text = cri_lines(0, 100);
    std::fs::write(&log, &text).unwrap();
    let before = names(&log);
    assert_eq!(
        manager(&rt, 1024, 5).rotate_container(&id).await.unwrap(),
        RotateOutcome::Postponed
    );
    // nothing overwritten, nothing renamed, no reopen
    assert_eq!(names(&log), before);
    assert_eq!(std::fs::read_to_string(&log).unwrap(), text);
    assert_eq!(reopens(&rt), 0);
}

#[tokio::test]
async fn a_missing_log_is_reopened_and_stopped_containers_are_left_alone() {
    let dir = tempfile::tempdir().unwrap();
    let rt = FakeRuntime::new();
    let (gone, gone_log) = running_container(&rt, dir.path(), "gone").await;
    let (stopped, stopped_log) = running_container(&rt, dir.path(), "stopped").await;
    std::fs::write(&stopped_log, cri_lines(0, 100)).unwrap();
    rt.stop_container(&stopped, Duration::ZERO).await.unwrap();
    let round = manager(&rt, 1024, 5).rotate_logs().await.unwrap();
    // the stopped container is not even looked at
    assert_eq!(round.len(), 1, "{round:?}");
    assert_eq!(round[0].0, gone);
    assert_eq!(round[0].1.as_ref().unwrap(), &RotateOutcome::Reopened);
    assert!(gone_log.exists(), "the runtime created the log anew");
    assert_eq!(reopens(&rt), 1);
    assert_eq!(names(&stopped_log), ["0.log"]);
}

#[tokio::test]
async fn one_container_failing_does_not_stop_the_others() {
    let dir = tempfile::tempdir().unwrap();
    let rt = FakeRuntime::new();
    let mut logs = Vec::new();
    for name in ["a", "b", "c"] {
        let (id, log) = running_container(&rt, dir.path(), name).await;
        std::fs::write(&log, cri_lines(0, 100)).unwrap();
        logs.push((id, log));
    }
    rt.fail_next(
        "reopen_container_log",
        RuntimeError::Internal("no monitor".into()),
    );
    let round = manager(&rt, 1024, 5).rotate_logs().await.unwrap();
    assert_eq!(round.len(), 3);
    let failed = round.iter().filter(|(_, r)| r.is_err()).count();
    let rotated = round
        .iter()
        .filter(|(_, r)| matches!(r, Ok(RotateOutcome::Rotated(_))))
        .count();
    assert_eq!((failed, rotated), (1, 2), "{round:?}");
    for (_, log) in &logs {
        // rotated (two files) or renamed back (one, with its lines)
        let files = all_logs(log).unwrap();
        let text: String = files
            .iter()
            .map(|f| std::fs::read_to_string(f).unwrap())
            .collect();
        assert_eq!(text, cri_lines(0, 100), "{files:?}");
    }
    // a listing that fails is the round's error
    rt.fail_next("list_containers", RuntimeError::Unavailable("down".into()));
    assert!(matches!(
        manager(&rt, 1024, 5).rotate_logs().await,
        Err(LogRotateError::Runtime {
            call: "ListContainers",
            ..
        })
    ));
}

#[tokio::test]
async fn the_loop_rotates_until_cancelled() {
    let dir = tempfile::tempdir().unwrap();
    let rt = FakeRuntime::new();
    let (_, log) = running_container(&rt, dir.path(), "app").await;
    std::fs::write(&log, cri_lines(0, 100)).unwrap();
    let token = node_kubelet::CancellationToken::new();
    let task = tokio::spawn(Arc::new(manager(&rt, 1024, 5)).run(token.clone()));
    node_test_support::until_async("a rotation", Duration::from_secs(10), || async {
        (all_logs(&log).unwrap().len() == 2).then_some(())
    })
    .await;
    token.cancel();
    tokio::time::timeout(Duration::from_secs(5), task)
        .await
        .expect("the loop ends when cancelled")
        .unwrap();
}

#[test]
fn configurations_kubelet_refuses_are_errors() {
    let rt: Arc<dyn RuntimeBackend> = Arc::new(FakeRuntime::new());
    for max_files in [0, 1] {
        let c = ContainerLogConfig {
            max_files,
            ..Default::default()
        };
        let err = ContainerLogManager::new(c, rt.clone()).unwrap_err();
        assert!(
            matches!(err, LogRotateError::InvalidMaxFiles(n) if n == max_files),
            "{err}"
        );
        assert_eq!(
            err.to_string(),
            format!("invalid container log max files {max_files}: must be at least 2")
        );
    }
    let c = ContainerLogConfig {
        max_workers: 0,
        ..Default::default()
    };
    assert!(matches!(
        ContainerLogManager::new(c, rt.clone()),
        Err(LogRotateError::InvalidMaxWorkers)
    ));
    // kubelet's defaults
    let d = ContainerLogConfig::default();
    assert_eq!(
        (d.max_size, d.max_files, d.max_workers, d.monitor_interval),
        (10 << 20, 5, 1, Duration::from_secs(10))
    );
    // the node manager refuses it up front
    let mut config = NodeConfig::new("node-1");
    config.cgroups = None;
    config.container_logs = Some(ContainerLogConfig {
        max_files: 1,
        ..Default::default()
    });
    let alloc = node_kubelet::node::allocatable::NodeResources {
        cpu_milli: 1000,
        memory_bytes: 1 << 30,
        ephemeral_storage_bytes: 1 << 30,
        pods: 10,
    };
    let err = NodeManager::with_allocatable(config, Arc::new(MemoryObjectStore::default()), alloc)
        .unwrap_err();
    assert!(
        matches!(
            err,
            NodeManagerError::ContainerLogs(LogRotateError::InvalidMaxFiles(1))
        ),
        "{err}"
    );
}

#[tokio::test]
async fn removing_a_container_removes_its_log_and_rotated_files_only() {
    let dir = tempfile::tempdir().unwrap();
    let rt = FakeRuntime::new();
    let (id, log) = running_container(&rt, dir.path(), "gone").await;
    let ours = [
        "0.log",
        "0.log.20260101-000000.gz",
        "0.log.20260101-000001",
        "0.log.20260101-000002.tmp",
    ];
    // another attempt's log in the same directory stays
    for f in ours.iter().chain(&["1.log", "10.log"]) {
        std::fs::write(log.parent().unwrap().join(f), "x\n").unwrap();
    }
    rt.stop_container(&id, Duration::ZERO).await.unwrap();
    remove_container_and_logs(&rt, &id).await.unwrap();
    assert!(
        matches!(
            rt.container_status(&id, false).await,
            Err(RuntimeError::NotFound { .. })
        ),
        "the container is removed"
    );
    assert_eq!(names(&log), ["1.log", "10.log"]);
    // removal is idempotent, as CRI's RemoveContainer; nothing else is touched
    remove_container_and_logs(&rt, &id).await.unwrap();
    assert_eq!(names(&log), ["1.log", "10.log"]);
}
