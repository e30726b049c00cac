//! [`FileSource`]: the kubelet's static pods from a manifest directory (YAML, multi-document YAML
//! and JSON files), watched with inotify (debounced) and rescanned periodically as a fallback.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::Pod;
use node_core::{PodEvent, PodSource, PodStream, SourceError};
use notify::{RecursiveMode, Watcher};
use sha2::{Digest, Sha256};
use tokio::sync::mpsc;

use crate::manifest::{self, ManifestIssue};

/// Settings of a [`FileSource`].
#[derive(Debug, Clone)]
pub struct FileSourceConfig {
    /// The node name, part of the static pods' UIDs (as the kubelet hashes `host:<node>`) and of
    /// their names (`<name>-<node>`, as the kubelet names static pods); empty: no suffix.
    pub node_name: String,
    /// How long to wait after a change notification before rescanning, so an editor's burst of
    /// writes is read once.
    pub debounce: Duration,
    /// Rescan this often even without notification (the kubelet's `fileCheckFrequency`).
    pub rescan_period: Duration,
}

impl Default for FileSourceConfig {
    fn default() -> Self {
        Self {
            node_name: String::new(),
            debounce: Duration::from_millis(100),
            rescan_period: Duration::from_secs(20),
        }
    }
}

/// The errors and warnings of the manifests as last read.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Diagnostics {
    /// Documents rejected (their file keeps the pods it had before).
    pub errors: Vec<ManifestIssue>,
    /// Unknown fields of accepted pods.
    pub warnings: Vec<ManifestIssue>,
}

/// Static pods from a directory of manifests.
///
/// Files ending in `.yaml`, `.yml` or `.json` are read (dot files and subdirectories are not);
/// each may hold any number of YAML documents. Only `kind: Pod` with `apiVersion: v1` is taken;
/// other kinds (Services beside the pods) are skipped with a debug log. A pod without UID gets
/// one derived from its content, the node name and its file path (stable across restarts), and
/// namespace `default` when it names none; with a node name, pods are named `<name>-<node>` and
/// carry the `kubernetes.io/config.source` and `kubernetes.io/config.hash` annotations, as the
/// kubelet's static pods do.
///
/// A broken file is reported (one [`SourceError::InvalidManifest`] per bad document, naming the
/// file, document index and field) and keeps the pods it had before; other files are unaffected.
/// When two files define the same namespace/name, the first file in lexical order wins and the
/// other document is reported.
pub struct FileSource {
    dir: PathBuf,
    config: FileSourceConfig,
    diagnostics: Arc<Mutex<Diagnostics>>,
}

impl FileSource {
    /// Watch `dir` with the default settings.
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self::with_config(dir, FileSourceConfig::default())
    }

    /// Watch `dir` with these settings.
    pub fn with_config(dir: impl Into<PathBuf>, config: FileSourceConfig) -> Self {
        Self {
            dir: dir.into(),
            config,
            diagnostics: Arc::default(),
        }
    }

    /// The directory watched.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The errors and warnings of the manifests as last read by any watch.
    pub fn diagnostics(&self) -> Diagnostics {
        self.diagnostics.lock().expect("diagnostics lock").clone()
    }
}

struct FileEntry {
    hash: [u8; 32],
    /// Valid pods with their document index.
    pods: Vec<(usize, Pod)>,
    errors: Vec<ManifestIssue>,
    warnings: Vec<ManifestIssue>,
}

/// What the directory held at the last scan.
pub(crate) struct DirState {
    dir: PathBuf,
    node_name: String,
    files: BTreeMap<PathBuf, FileEntry>,
    /// The pods announced, by namespace/name.
    current: BTreeMap<(String, String), Pod>,
    reported_duplicates: BTreeSet<String>,
}

fn issue_of(e: &SourceError) -> ManifestIssue {
    match e {
        SourceError::InvalidManifest {
            origin,
            field,
            message,
        } => ManifestIssue {
            origin: origin.clone(),
            field: field.clone(),
            message: message.clone(),
        },
        other => ManifestIssue {
            origin: String::new(),
            field: "-".into(),
            message: other.to_string(),
        },
    }
}

fn key(pod: &Pod) -> (String, String) {
    (
        pod.metadata.namespace.clone().unwrap_or_default(),
        pod.metadata.name.clone().unwrap_or_default(),
    )
}

impl DirState {
    pub(crate) fn new(dir: PathBuf, node_name: String) -> Self {
        Self {
            dir,
            node_name,
            files: BTreeMap::new(),
            current: BTreeMap::new(),
            reported_duplicates: BTreeSet::new(),
        }
    }

    /// Re-read the directory; returns the new errors (of changed files) and the pods now wanted.
    fn scan(&mut self) -> (Vec<SourceError>, BTreeMap<(String, String), Pod>) {
        let mut errors = Vec::new();
        let mut paths = Vec::new();
        match std::fs::read_dir(&self.dir) {
            Ok(entries) => {
                for entry in entries.flatten() {
                    let path = entry.path();
                    let name = entry.file_name().to_string_lossy().to_string();
                    let wanted = !name.starts_with('.')
                        && [".yaml", ".yml", ".json"].iter().any(|s| name.ends_with(s))
                        && path.is_file();
                    if wanted {
                        paths.push(path);
                    }
                }
            }
            Err(source) => {
                // a missing directory holds no pods: keep what we had, say why
                errors.push(SourceError::Io {
                    path: self.dir.clone(),
                    source,
                });
                return (errors, self.current.clone());
            }
        }
        paths.sort();
        let seen: BTreeSet<PathBuf> = paths.iter().cloned().collect();
        self.files.retain(|p, _| seen.contains(p));
        for path in &paths {
            let bytes = match std::fs::read(path) {
                Ok(b) => b,
                Err(source) => {
                    errors.push(SourceError::Io {
                        path: path.clone(),
                        source,
                    });
                    continue;
                }
            };
            let hash: [u8; 32] = Sha256::digest(&bytes).into();
            if self.files.get(path).is_some_and(|f| f.hash == hash) {
                continue;
            }
            let origin = path.display().to_string();
            let text = String::from_utf8_lossy(&bytes);
            let json = path.extension().is_some_and(|e| e == "json");
            let decoded = manifest::decode(&origin, &text, json);
            for (o, kind) in &decoded.ignored {
                tracing::debug!(origin = %o, %kind, "manifest of another kind ignored");
            }
            for w in &decoded.warnings {
                tracing::warn!(origin = %w.origin, field = %w.field, "{}", w.message);
            }
            let source = format!("file:{origin}");
            let mut pods = decoded.pods;
            for (_, pod) in &mut pods {
                manifest::apply_static_defaults(pod, &self.node_name, &source);
            }
            let issues: Vec<ManifestIssue> = decoded.errors.iter().map(issue_of).collect();
            let entry = match self.files.remove(path) {
                // a broken file keeps the pods it had
                Some(old) if !decoded.errors.is_empty() => FileEntry {
                    hash,
                    pods: old.pods,
                    errors: issues,
                    warnings: decoded.warnings,
                },
                _ => FileEntry {
                    hash,
                    pods,
                    errors: issues,
                    warnings: decoded.warnings,
                },
            };
            errors.extend(decoded.errors);
            self.files.insert(path.clone(), entry);
        }
        let mut wanted: BTreeMap<(String, String), Pod> = BTreeMap::new();
        let mut owner: BTreeMap<(String, String), PathBuf> = BTreeMap::new();
        let mut duplicates = BTreeSet::new();
        for (path, entry) in &self.files {
            for (index, pod) in &entry.pods {
                let k = key(pod);
                if let Some(first) = owner.get(&k) {
                    let origin = format!("{}#{index}", path.display());
                    duplicates.insert(origin.clone());
                    if !self.reported_duplicates.contains(&origin) {
                        errors.push(SourceError::InvalidManifest {
                            origin,
                            field: "metadata.name".into(),
                            message: format!(
                                "duplicate pod {}/{}, already defined in {}",
                                k.0,
                                k.1,
                                first.display()
                            ),
                        });
                    }
                    continue;
                }
                owner.insert(k.clone(), path.clone());
                wanted.insert(k, pod.clone());
            }
        }
        self.reported_duplicates = duplicates;
        (errors, wanted)
    }

    fn diagnostics(&self) -> Diagnostics {
        let mut d = Diagnostics::default();
        for entry in self.files.values() {
            d.errors.extend(entry.errors.iter().cloned());
            d.warnings.extend(entry.warnings.iter().cloned());
        }
        for origin in &self.reported_duplicates {
            d.errors.push(ManifestIssue {
                origin: origin.clone(),
                field: "metadata.name".into(),
                message: "duplicate pod name".into(),
            });
        }
        d
    }

    /// The first scan, as a snapshot.
    pub(crate) fn snapshot(&mut self) -> Vec<Result<PodEvent, SourceError>> {
        let (errors, wanted) = self.scan();
        let mut out: Vec<_> = errors.into_iter().map(Err).collect();
        out.push(Ok(PodEvent::Init));
        out.extend(wanted.values().cloned().map(|p| Ok(PodEvent::InitApply(p))));
        out.push(Ok(PodEvent::InitDone));
        self.current = wanted;
        out
    }

    /// A rescan, as the differences from the last one.
    pub(crate) fn rescan(&mut self) -> Vec<Result<PodEvent, SourceError>> {
        let (errors, wanted) = self.scan();
        let mut out: Vec<_> = errors.into_iter().map(Err).collect();
        for (k, old) in &self.current {
            match wanted.get(k) {
                None => out.push(Ok(PodEvent::Delete(old.clone()))),
                Some(new) if new.metadata.uid != old.metadata.uid => {
                    out.push(Ok(PodEvent::Delete(old.clone())))
                }
                _ => {}
            }
        }
        for (k, new) in &wanted {
            if self.current.get(k) != Some(new) {
                out.push(Ok(PodEvent::Apply(new.clone())));
            }
        }
        self.current = wanted;
        out
    }
}

impl PodSource for FileSource {
    fn name(&self) -> &str {
        "file"
    }

    fn watch(&self) -> PodStream {
        let (tx, rx) = mpsc::unbounded_channel();
        let dir = self.dir.clone();
        let config = self.config.clone();
        let diagnostics = self.diagnostics.clone();
        tokio::spawn(async move {
            let mut state = DirState::new(dir.clone(), config.node_name.clone());
            let (notify_tx, mut notify_rx) = mpsc::unbounded_channel::<()>();
            let mut watcher = start_watcher(&dir, notify_tx.clone());
            for e in state.snapshot() {
                if tx.send(e).is_err() {
                    return;
                }
            }
            *diagnostics.lock().expect("diagnostics lock") = state.diagnostics();
            let mut rescan = tokio::time::interval(config.rescan_period);
            rescan.tick().await;
            loop {
                tokio::select! {
                    _ = tx.closed() => return,
                    Some(()) = notify_rx.recv() => {
                        tokio::time::sleep(config.debounce).await;
                        while notify_rx.try_recv().is_ok() {}
                    }
                    _ = rescan.tick() => {
                        if watcher.is_none() {
                            watcher = start_watcher(&dir, notify_tx.clone());
                        }
                    }
                }
                for e in state.rescan() {
                    if tx.send(e).is_err() {
                        return;
                    }
                }
                *diagnostics.lock().expect("diagnostics lock") = state.diagnostics();
            }
        });
        tokio_stream::wrappers::UnboundedReceiverStream::new(rx).boxed()
    }
}

fn start_watcher(dir: &Path, tx: mpsc::UnboundedSender<()>) -> Option<notify::RecommendedWatcher> {
    let mut watcher = notify::recommended_watcher(move |res: notify::Result<notify::Event>| {
        if res.is_ok() {
            let _ = tx.send(());
        }
    })
    .map_err(|e| tracing::warn!(dir = %dir.display(), error = %e, "cannot create a file watcher; relying on rescans"))
    .ok()?;
    match watcher.watch(dir, RecursiveMode::NonRecursive) {
        Ok(()) => Some(watcher),
        Err(e) => {
            tracing::debug!(dir = %dir.display(), error = %e, "cannot watch the manifest directory yet; relying on rescans");
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod_yaml(name: &str, image: &str) -> String {
        format!(
            "apiVersion: v1\nkind: Pod\nmetadata: {{name: {name}}}\nspec:\n  containers: [{{name: c, image: {image}}}]\n"
        )
    }

    fn names(events: &[Result<PodEvent, SourceError>]) -> Vec<String> {
        events
            .iter()
            .map(|e| match e {
                Ok(PodEvent::Init) => "init".into(),
                Ok(PodEvent::InitApply(p)) => {
                    format!("init-apply {}", p.metadata.name.as_deref().unwrap_or(""))
                }
                Ok(PodEvent::InitDone) => "init-done".into(),
                Ok(PodEvent::Apply(p)) => {
                    format!("apply {}", p.metadata.name.as_deref().unwrap_or(""))
                }
                Ok(PodEvent::Delete(p)) => {
                    format!("delete {}", p.metadata.name.as_deref().unwrap_or(""))
                }
                Err(e) => format!("error {e}"),
            })
            .collect()
    }

    #[test]
    fn scan_diff_and_broken_file_keeps_its_pods() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("a.yaml"), pod_yaml("a", "img:1")).unwrap();
        std::fs::write(dir.path().join("b.yml"), pod_yaml("b", "img:1")).unwrap();
        std::fs::write(dir.path().join(".hidden.yaml"), pod_yaml("h", "img:1")).unwrap();
        std::fs::write(dir.path().join("notes.txt"), "hello").unwrap();
        // static pods are named <name>-<node>, as kubelet names them
        let mut s = DirState::new(dir.path().to_path_buf(), "n".into());
        assert_eq!(
            names(&s.snapshot()),
            ["init", "init-apply a-n", "init-apply b-n", "init-done"]
        );
        assert!(s.rescan().is_empty(), "nothing changed");

        std::fs::write(
            dir.path().join("a.yaml"),
            "apiVersion: v1\nkind: Pod\nmetadata: {name: [",
        )
        .unwrap();
        let ev = s.rescan();
        assert_eq!(ev.len(), 1, "{:?}", names(&ev));
        assert!(names(&ev)[0].contains("a.yaml#0"), "{:?}", names(&ev));
        assert!(s.rescan().is_empty(), "a broken file is reported once");
        assert_eq!(s.current.len(), 2, "the broken file keeps its pod");

        let uid_before = s.current[&("default".to_string(), "a-n".to_string())]
            .metadata
            .uid
            .clone();
        std::fs::write(dir.path().join("a.yaml"), pod_yaml("a", "img:2")).unwrap();
        assert_eq!(names(&s.rescan()), ["delete a-n", "apply a-n"]);
        assert_ne!(
            s.current[&("default".to_string(), "a-n".to_string())]
                .metadata
                .uid,
            uid_before
        );

        std::fs::remove_file(dir.path().join("b.yml")).unwrap();
        assert_eq!(names(&s.rescan()), ["delete b-n"]);
    }

    #[test]
    fn duplicate_names_first_file_wins() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("1.yaml"), pod_yaml("web", "img:1")).unwrap();
        std::fs::write(dir.path().join("2.yaml"), pod_yaml("web", "img:2")).unwrap();
        let mut s = DirState::new(dir.path().to_path_buf(), "n".into());
        let ev = names(&s.snapshot());
        assert!(
            ev[0].starts_with("error ")
                && ev[0].contains("2.yaml#0: metadata.name: duplicate pod default/web-n"),
            "{ev:?}"
        );
        let web = &s.current[&("default".to_string(), "web-n".to_string())];
        assert_eq!(
            web.spec.as_ref().unwrap().containers[0].image.as_deref(),
            Some("img:1")
        );
        assert_eq!(s.diagnostics().errors.len(), 1);
    }

    #[test]
    fn uid_is_stable_across_restarts() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("a.yaml"), pod_yaml("a", "img:1")).unwrap();
        let uid = |_: ()| {
            let mut s = DirState::new(dir.path().to_path_buf(), "n".into());
            s.snapshot();
            s.current
                .values()
                .next()
                .unwrap()
                .metadata
                .uid
                .clone()
                .unwrap()
        };
        assert_eq!(uid(()), uid(()));
    }
}
