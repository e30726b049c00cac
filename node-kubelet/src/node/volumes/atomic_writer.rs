//! kubelet's AtomicWriter: the files of a configMap, secret, downwardAPI or projected volume are
//! written into a fresh `..<timestamp>` directory, the `..data` symlink is switched to it with a
//! rename, and the user-visible paths are symlinks through `..data`, so a reader sees either the
//! old or the new set of files, never a mix, a partial file or a missing one.
//!
//! A reader's open walks `..data` and then the directory it names in two steps: a payload
//! directory that was just replaced is kept for [`SUPERSEDED_GRACE`] (removed by a later write
//! or resync), so an open that resolved `..data` just before the switch still finds its file.

use std::collections::{BTreeMap, BTreeSet};
use std::os::unix::fs::{PermissionsExt, symlink};
use std::path::{Component, Path, PathBuf};
use std::time::{Duration, SystemTime};

use super::VolumeError;

/// The name of the symlink to the current payload directory.
pub const DATA_DIR: &str = "..data";
const DATA_DIR_TMP: &str = "..data_tmp";

/// How long a replaced payload directory stays after `..data` stopped naming it.
pub const SUPERSEDED_GRACE: Duration = Duration::from_secs(2);

/// One file of a payload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileProjection {
    /// The content.
    pub data: Vec<u8>,
    /// The permission bits (0644 by default).
    pub mode: u32,
}

/// Checks a payload path: relative, no `..` component, not starting with `..`.
pub fn validate_path(path: &str) -> Result<(), String> {
    if path.is_empty() {
        return Err("empty path".into());
    }
    let p = Path::new(path);
    if p.is_absolute() {
        return Err(format!("{path:?} must be relative"));
    }
    if path.starts_with("..") {
        return Err(format!("{path:?} must not start with '..'"));
    }
    if p.components().any(|c| matches!(c, Component::ParentDir)) {
        return Err(format!("{path:?} must not contain '..'"));
    }
    Ok(())
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> VolumeError + '_ {
    move |source| VolumeError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Reads the payload currently visible through `..data` (for change detection).
fn current_payload(dir: &Path) -> Option<BTreeMap<String, FileProjection>> {
    let data = dir.join(DATA_DIR);
    let target = std::fs::read_link(&data).ok()?;
    let base = dir.join(target);
    let mut out = BTreeMap::new();
    let mut stack = vec![base.clone()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).ok()?.flatten() {
            let p = e.path();
            let ft = e.file_type().ok()?;
            if ft.is_dir() {
                stack.push(p);
            } else {
                let rel = p.strip_prefix(&base).ok()?.to_string_lossy().into_owned();
                let meta = std::fs::metadata(&p).ok()?;
                out.insert(
                    rel,
                    FileProjection {
                        data: std::fs::read(&p).ok()?,
                        mode: meta.permissions().mode() & 0o7777,
                    },
                );
            }
        }
    }
    Some(out)
}

fn timestamp_dir_name() -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    let ts = k8s_openapi::jiff::Timestamp::from_second(now.as_secs() as i64)
        .unwrap_or(k8s_openapi::jiff::Timestamp::UNIX_EPOCH);
    format!(
        "..{}.{:09}",
        ts.strftime("%Y_%m_%d_%H_%M_%S"),
        now.subsec_nanos()
    )
}

/// Writes `payload` into `dir` atomically. Returns whether anything changed. Payload
/// directories replaced more than [`SUPERSEDED_GRACE`] ago are removed.
pub fn write_atomic(
    dir: &Path,
    payload: &BTreeMap<String, FileProjection>,
) -> Result<bool, VolumeError> {
    write_atomic_with_grace(dir, payload, SUPERSEDED_GRACE)
}

/// [`write_atomic`] with the time a replaced payload directory is kept.
pub fn write_atomic_with_grace(
    dir: &Path,
    payload: &BTreeMap<String, FileProjection>,
    grace: Duration,
) -> Result<bool, VolumeError> {
    for path in payload.keys() {
        validate_path(path).map_err(|reason| VolumeError::InvalidPath {
            path: path.clone(),
            reason,
        })?;
    }
    std::fs::create_dir_all(dir).map_err(io(dir))?;
    let old_target = std::fs::read_link(dir.join(DATA_DIR)).ok();
    if let Some(current) = &old_target
        && current_payload(dir).as_ref() == Some(payload)
    {
        remove_superseded(dir, Path::new(current), grace)?;
        return Ok(false);
    }
    // 1. the new payload in a fresh timestamped directory
    let mut name = timestamp_dir_name();
    while dir.join(&name).exists() {
        name.push('0');
    }
    let ts_dir = dir.join(&name);
    std::fs::create_dir(&ts_dir).map_err(io(&ts_dir))?;
    std::fs::set_permissions(&ts_dir, std::fs::Permissions::from_mode(0o755))
        .map_err(io(&ts_dir))?;
    for (rel, f) in payload {
        let p = ts_dir.join(rel);
        if let Some(parent) = p.parent() {
            std::fs::create_dir_all(parent).map_err(io(parent))?;
        }
        std::fs::write(&p, &f.data).map_err(io(&p))?;
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(f.mode)).map_err(io(&p))?;
    }
    // 2. ..data_tmp -> new dir, renamed over ..data (atomic)
    let tmp = dir.join(DATA_DIR_TMP);
    let _ = std::fs::remove_file(&tmp);
    symlink(&name, &tmp).map_err(io(&tmp))?;
    let data = dir.join(DATA_DIR);
    std::fs::rename(&tmp, &data).map_err(io(&data))?;
    // 3. user-visible top-level names, symlinks through ..data
    let wanted: BTreeSet<String> = payload
        .keys()
        .filter_map(|k| {
            Path::new(k)
                .components()
                .next()
                .map(|c| c.as_os_str().to_string_lossy().into_owned())
        })
        .collect();
    for top in &wanted {
        let link = dir.join(top);
        if std::fs::symlink_metadata(&link).is_err() {
            symlink(Path::new(DATA_DIR).join(top), &link).map_err(io(&link))?;
        }
    }
    // 4. user-visible names no longer in the payload go
    for e in std::fs::read_dir(dir).map_err(io(dir))?.flatten() {
        let n = e.file_name().to_string_lossy().into_owned();
        if n.starts_with("..") || wanted.contains(&n) {
            continue;
        }
        let p = e.path();
        let is_link = std::fs::symlink_metadata(&p)
            .map(|m| m.file_type().is_symlink())
            .unwrap_or(false);
        if is_link {
            std::fs::remove_file(&p).map_err(io(&p))?;
        }
    }
    // 5. the old payload directory is marked replaced now; those replaced long enough go
    if let Some(old) = old_target {
        let old: PathBuf = dir.join(old);
        if old != ts_dir {
            let _ = std::fs::File::open(&old).and_then(|d| d.set_modified(SystemTime::now()));
        }
    }
    remove_superseded(dir, Path::new(&name), grace)?;
    Ok(true)
}

/// Removes the payload directories of `dir` other than `current` whose modification time
/// (set when `..data` stopped naming them) is at least `grace` old.
fn remove_superseded(dir: &Path, current: &Path, grace: Duration) -> Result<(), VolumeError> {
    for e in std::fs::read_dir(dir).map_err(io(dir))?.flatten() {
        let n = e.file_name();
        if !n.to_string_lossy().starts_with("..") || Path::new(&n) == current {
            continue;
        }
        let Ok(meta) = std::fs::symlink_metadata(e.path()) else {
            continue;
        };
        let age = meta
            .modified()
            .ok()
            .and_then(|m| m.elapsed().ok())
            .unwrap_or(Duration::MAX);
        if meta.is_dir() && age >= grace {
            let p = e.path();
            std::fs::remove_dir_all(&p).map_err(io(&p))?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn payload(pairs: &[(&str, &str)]) -> BTreeMap<String, FileProjection> {
        pairs
            .iter()
            .map(|(k, v)| {
                (
                    k.to_string(),
                    FileProjection {
                        data: v.as_bytes().to_vec(),
                        mode: 0o644,
                    },
                )
            })
            .collect()
    }

    #[test]
    fn layout_is_kubelets() {
        let d = tempfile::tempdir().unwrap();
        assert!(write_atomic(d.path(), &payload(&[("a", "1"), ("sub/b", "2")])).unwrap());
        let data = std::fs::read_link(d.path().join("..data")).unwrap();
        assert!(data.to_string_lossy().starts_with("..20"), "{data:?}");
        assert_eq!(
            std::fs::read_link(d.path().join("a")).unwrap(),
            Path::new("..data/a")
        );
        assert_eq!(
            std::fs::read_to_string(d.path().join("sub/b")).unwrap(),
            "2"
        );
        // unchanged payload: nothing written
        assert!(!write_atomic(d.path(), &payload(&[("a", "1"), ("sub/b", "2")])).unwrap());
        // a key removed: its user-visible link goes; the old timestamped dir stays for the
        // grace, then a later write (or an unchanged resync) removes it
        assert!(write_atomic(d.path(), &payload(&[("a", "3")])).unwrap());
        assert!(std::fs::symlink_metadata(d.path().join("sub")).is_err());
        assert_eq!(std::fs::read_to_string(d.path().join("a")).unwrap(), "3");
        assert_eq!(payload_dirs(d.path()).len(), 2);
        assert!(!write_atomic(d.path(), &payload(&[("a", "3")])).unwrap());
        assert_eq!(payload_dirs(d.path()).len(), 2, "within the grace");
        assert!(
            !write_atomic_with_grace(d.path(), &payload(&[("a", "3")]), Duration::ZERO).unwrap()
        );
        let current = std::fs::read_link(d.path().join("..data")).unwrap();
        assert_eq!(
            payload_dirs(d.path()),
            [current.to_string_lossy().into_owned()]
        );
        // with no grace a change removes the replaced directory at once (as kubelet does)
        assert!(
            write_atomic_with_grace(d.path(), &payload(&[("a", "4")]), Duration::ZERO).unwrap()
        );
        assert_eq!(payload_dirs(d.path()).len(), 1);
        assert_eq!(std::fs::read_to_string(d.path().join("a")).unwrap(), "4");
    }

    fn payload_dirs(d: &Path) -> Vec<String> {
        std::fs::read_dir(d)
            .unwrap()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n.starts_with("..2"))
            .collect()
    }

    #[test]
    fn refuses_escaping_paths() {
        let d = tempfile::tempdir().unwrap();
        for bad in ["../x", "/etc/passwd", "a/../../x", "..data", ""] {
            let e = write_atomic(d.path(), &payload(&[(bad, "x")])).unwrap_err();
            assert!(matches!(e, VolumeError::InvalidPath { .. }), "{bad}: {e}");
        }
    }
}
