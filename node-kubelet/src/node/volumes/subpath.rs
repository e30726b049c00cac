//! subPath resolution: a container may mount a path inside a volume, but never one that leaves
//! it, by `..` or through a symlink.

use std::path::{Component, Path, PathBuf};

use super::VolumeError;

/// Resolves `sub_path` inside `volume_root`, creating missing directories (as kubelet does for
/// a subPath of a writable volume). Refuses absolute paths, `..` components, and any path whose
/// resolution (symlinks followed) leaves the volume.
pub fn resolve_subpath(volume_root: &Path, sub_path: &str) -> Result<PathBuf, VolumeError> {
    let refuse = |reason: &str| VolumeError::SubPath {
        sub_path: sub_path.to_string(),
        reason: reason.to_string(),
    };
    let rel = Path::new(sub_path);
    if rel.is_absolute() {
        return Err(refuse("must be a relative path"));
    }
    if rel.components().any(|c| matches!(c, Component::ParentDir)) {
        return Err(refuse("must not contain '..'"));
    }
    let root = volume_root
        .canonicalize()
        .map_err(|source| VolumeError::Io {
            path: volume_root.to_path_buf(),
            source,
        })?;
    let mut current = root.clone();
    for c in rel.components() {
        let Component::Normal(name) = c else { continue };
        let next = current.join(name);
        match std::fs::symlink_metadata(&next) {
            Ok(_) => {
                let resolved = next.canonicalize().map_err(|source| VolumeError::Io {
                    path: next.clone(),
                    source,
                })?;
                if !resolved.starts_with(&root) {
                    return Err(refuse("resolves outside the volume"));
                }
                current = resolved;
            }
            Err(_) => {
                std::fs::create_dir(&next).map_err(|source| VolumeError::Io {
                    path: next.clone(),
                    source,
                })?;
                current = next;
            }
        }
    }
    Ok(current)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    #[test]
    fn subpaths_stay_inside_the_volume() {
        let d = tempfile::tempdir().unwrap();
        let vol = d.path().join("vol");
        std::fs::create_dir_all(vol.join("data")).unwrap();
        let outside = d.path().join("outside");
        std::fs::create_dir(&outside).unwrap();
        symlink(&outside, vol.join("escape")).unwrap();
        symlink("data", vol.join("inner")).unwrap();
        symlink("../../outside", vol.join("data/up")).unwrap();

        let ok = resolve_subpath(&vol, "data/new/dir").unwrap();
        assert!(ok.is_dir() && ok.ends_with("data/new/dir"));
        assert_eq!(
            resolve_subpath(&vol, "inner").unwrap(),
            vol.canonicalize().unwrap().join("data")
        );
        for bad in [
            "../outside",
            "/etc",
            "escape",
            "escape/x",
            "data/up",
            "data/../../x",
        ] {
            let e = resolve_subpath(&vol, bad).unwrap_err();
            assert!(matches!(e, VolumeError::SubPath { .. }), "{bad}: {e}");
        }
        assert!(!outside.join("x").exists());
    }
}
