//! The bad-manifest corpus (`tests/manifests/bad/`): every broken document is reported with its
//! file and field, nothing panics, and the valid pods of the other files run — and keep running
//! when their own file breaks later. No root needed.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use node_core::{PodEvent, PodSource, SourceError};
use node_kubelet::{FileSource, FileSourceConfig};
use node_test_support::{FakeRuntime, FakeStatusSink};

mod support;
use support::spawn_fake_kubelet;

fn corpus() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/manifests/bad")
}

/// The first snapshot of a source: errors (origin file name, field) and pod names.
async fn snapshot(source: &FileSource) -> (Vec<(String, String, String)>, Vec<String>) {
    let mut w = source.watch();
    let (mut errors, mut pods) = (vec![], vec![]);
    loop {
        let item = tokio::time::timeout(Duration::from_secs(10), w.next())
            .await
            .expect("snapshot within 10 s")
            .expect("open");
        match item {
            Err(SourceError::InvalidManifest {
                origin,
                field,
                message,
            }) => {
                let file = Path::new(&origin)
                    .file_name()
                    .unwrap()
                    .to_string_lossy()
                    .to_string();
                errors.push((file, field, message));
            }
            Err(other) => panic!("unexpected error {other}"),
            Ok(PodEvent::InitApply(p)) => pods.push(format!(
                "{}/{}",
                p.metadata.namespace.unwrap(),
                p.metadata.name.unwrap()
            )),
            Ok(PodEvent::InitDone) => break,
            Ok(_) => {}
        }
    }
    (errors, pods)
}

#[tokio::test]
async fn every_bad_document_is_reported_with_file_and_field() {
    let source = FileSource::new(corpus());
    let (errors, mut pods) = snapshot(&source).await;
    let got: BTreeMap<String, String> = errors
        .iter()
        .map(|(f, field, _)| (f.clone(), field.clone()))
        .collect();
    let expected: BTreeMap<String, String> = [
        ("binary.yaml#0", "metadata.name"),
        ("duplicate-b.yaml#0", "metadata.name"),
        (
            "invalid-quantity.yaml#0",
            "spec.containers[0].resources.limits.memory",
        ),
        ("invalid-yaml.yaml#0", "-"),
        ("missing-kind.yaml#0", "kind"),
        ("missing-name.yaml#0", "metadata.name"),
        ("no-containers.yaml#0", "spec.containers"),
        ("not-a-mapping.yaml#0", "-"),
        ("wrong-api-version.yaml#0", "apiVersion"),
        (
            "wrong-type.json#0",
            "spec.containers[0].ports[0].containerPort",
        ),
    ]
    .into_iter()
    .map(|(a, b)| (a.to_string(), b.to_string()))
    .collect();
    assert_eq!(got, expected, "all errors: {errors:#?}");
    for (file, _, message) in &errors {
        assert!(!message.is_empty(), "{file} has a message");
    }
    let dup = errors
        .iter()
        .find(|(f, _, _)| f == "duplicate-b.yaml#0")
        .unwrap();
    assert!(
        dup.2.contains("duplicate-a.yaml"),
        "names the first definition: {}",
        dup.2
    );
    pods.sort();
    assert_eq!(
        pods,
        ["default/twin", "default/typo", "default/web", "shop/api"]
    );

    let warnings: Vec<String> = source
        .diagnostics()
        .warnings
        .iter()
        .map(|w| w.to_string())
        .collect();
    assert_eq!(warnings.len(), 2, "{warnings:?}");
    assert!(
        warnings
            .iter()
            .any(|w| w
                .ends_with("unknown-fields.yaml#0: spec.restartPolicyy: unknown field, ignored")),
        "{warnings:?}"
    );
    assert!(
        warnings
            .iter()
            .any(|w| w.contains("spec.containers[0].imagePullPolicyy")),
        "{warnings:?}"
    );
    assert_eq!(source.diagnostics().errors.len(), expected.len());
}

#[tokio::test]
async fn valid_pods_run_and_keep_running_when_their_file_breaks() {
    let dir = tempfile::tempdir().unwrap();
    for entry in std::fs::read_dir(corpus()).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), dir.path().join(entry.file_name())).unwrap();
    }
    let rt = FakeRuntime::new();
    let sink = FakeStatusSink::new();
    let source = Arc::new(FileSource::with_config(
        dir.path(),
        FileSourceConfig {
            rescan_period: Duration::from_millis(500),
            ..Default::default()
        },
    ));
    let k = spawn_fake_kubelet(source.clone(), &rt, &sink, dir);

    let names = |sink: &FakeStatusSink| {
        sink.pods()
            .keys()
            .map(|r| r.to_string())
            .collect::<Vec<_>>()
    };
    sink.wait_for(Duration::from_secs(20), |pods| {
        pods.len() == 4 && pods.values().all(|s| s.phase.as_deref() == Some("Running"))
    })
    .await
    .unwrap_or_else(|e| panic!("{e}: {:?}", names(&sink)));
    assert_eq!(
        names(&sink),
        ["default/twin", "default/typo", "default/web", "shop/api"]
    );
    let twin = rt
        .containers()
        .into_iter()
        .find(|c| c.config.labels["io.kubernetes.pod.name"] == "twin")
        .unwrap();
    assert_eq!(
        twin.config.image.unwrap().image,
        "busybox:1",
        "the first file wins"
    );
    let web_before: Vec<String> = rt
        .containers()
        .iter()
        .filter(|c| c.config.labels["io.kubernetes.pod.name"] == "web")
        .map(|c| c.id.clone())
        .collect();

    // break the good file: reported, and its pod keeps running untouched
    std::fs::write(
        k.dir.path().join("good.yaml"),
        "apiVersion: v1\nkind: Pod\nmetadata: {name: web\n",
    )
    .unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !source
        .diagnostics()
        .errors
        .iter()
        .any(|e| e.origin.ends_with("good.yaml#0"))
    {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the broken file is reported"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let web_after: Vec<String> = rt
        .containers()
        .iter()
        .filter(|c| c.config.labels["io.kubernetes.pod.name"] == "web")
        .map(|c| c.id.clone())
        .collect();
    assert_eq!(web_before, web_after);
    assert!(
        !rt.calls().iter().any(|c| c.starts_with("stop_")),
        "nothing was stopped: {:?}",
        rt.calls()
    );
    assert_eq!(sink.pods().len(), 4);

    // removing a file removes its pod only
    std::fs::remove_file(k.dir.path().join("good-json.json")).unwrap();
    sink.wait_for(Duration::from_secs(10), |pods| pods.len() == 3)
        .await
        .unwrap();
    assert_eq!(
        names(&sink),
        ["default/twin", "default/typo", "default/web"]
    );
    k.stop().await;
}

#[tokio::test]
async fn editing_a_manifest_replaces_its_pod() {
    let dir = tempfile::tempdir().unwrap();
    let manifests = dir.path().join("manifests");
    std::fs::create_dir(&manifests).unwrap();
    let yaml = |image: &str| {
        format!(
            "apiVersion: v1\nkind: Pod\nmetadata: {{name: edit}}\nspec:\n  containers: [{{name: c, image: \"{image}\"}}]\n"
        )
    };
    std::fs::write(manifests.join("edit.yaml"), yaml("img:1")).unwrap();
    let rt = FakeRuntime::new();
    let sink = FakeStatusSink::new();
    let k = spawn_fake_kubelet(Arc::new(FileSource::new(&manifests)), &rt, &sink, dir);
    let running_image = |rt: &FakeRuntime| {
        rt.containers()
            .into_iter()
            .find(|c| c.state == node_core::cri::ContainerState::ContainerRunning)
            .map(|c| {
                (
                    c.config.labels["io.kubernetes.pod.uid"].clone(),
                    c.config.image.unwrap().image,
                )
            })
    };
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while running_image(&rt).is_none() {
        assert!(tokio::time::Instant::now() < deadline, "the pod starts");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (uid1, _) = running_image(&rt).unwrap();
    std::fs::write(manifests.join("edit.yaml"), yaml("img:2")).unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        if let Some((uid, image)) = running_image(&rt)
            && image == "img:2"
        {
            assert_ne!(
                uid, uid1,
                "a static pod's UID follows its content, as the kubelet's"
            );
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the edit reaches the runtime"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    sink.wait_for(Duration::from_secs(20), |pods| {
        pods.len() == 1
            && pods
                .values()
                .all(|s| s.container_statuses.as_ref().unwrap()[0].image == "img:2")
    })
    .await
    .unwrap();
    assert_eq!(rt.sandboxes().len(), 1, "the old pod's sandbox is gone");
    k.stop().await;
}
