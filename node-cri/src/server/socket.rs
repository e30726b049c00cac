//! The CRI socket: prepared as containerd does (directory created, stale socket replaced,
//! mode 0660, root-owned), without a moment where it is reachable with other permissions.

use std::os::unix::fs::{DirBuilderExt, FileTypeExt, MetadataExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;

use super::ServeError;

/// The device and inode of the file at `path` (to tell whether it is still our socket).
pub fn identity(path: &Path) -> Option<(u64, u64)> {
    std::fs::symlink_metadata(path)
        .ok()
        .map(|m| (m.dev(), m.ino()))
}

/// Bind a unix socket at `path` with permission bits `mode`, owned by root (group `gid`, or 0)
/// when running as root, ready for [`tokio::net::UnixListener::from_std`].
///
/// The parent directory is created (mode 0711) when missing. A socket already at `path` is
/// replaced when nobody answers on it, and refused ([`ServeError::InUse`]) when a server does;
/// anything else at `path` is left alone ([`ServeError::NotASocket`]). The socket is bound
/// under a temporary name, given its mode and owner, then renamed into place, so it is never
/// reachable with other permissions.
pub fn bind(path: &Path, mode: u32, gid: Option<u32>) -> Result<UnixListener, ServeError> {
    let err = |what: &'static str| {
        move |source: std::io::Error| ServeError::Socket {
            path: path.to_path_buf(),
            what,
            source,
        }
    };
    let parent = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let name = path.file_name().ok_or_else(|| ServeError::Socket {
        path: path.to_path_buf(),
        what: "the path",
        source: std::io::Error::new(std::io::ErrorKind::InvalidInput, "no file name"),
    })?;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o711)
        .create(parent)
        .map_err(err("creating its directory"))?;
    match std::fs::symlink_metadata(path) {
        Ok(m) if m.file_type().is_socket() => {
            if UnixStream::connect(path).is_ok() {
                return Err(ServeError::InUse {
                    path: path.to_path_buf(),
                });
            }
            tracing::info!(socket = %path.display(), "replacing a stale socket");
        }
        Ok(_) => {
            return Err(ServeError::NotASocket {
                path: path.to_path_buf(),
            });
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(err("inspecting the path")(e)),
    }
    let tmp = parent.join(format!(
        ".{}.{}.tmp",
        name.to_string_lossy(),
        std::process::id()
    ));
    let _ = std::fs::remove_file(&tmp);
    let listener = UnixListener::bind(&tmp).map_err(err("binding"))?;
    let finish = || -> Result<(), ServeError> {
        std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(mode))
            .map_err(err("setting its mode"))?;
        // SAFETY: geteuid has no preconditions.
        let root = unsafe { libc::geteuid() } == 0;
        if root {
            std::os::unix::fs::chown(&tmp, Some(0), Some(gid.unwrap_or(0)))
                .map_err(err("setting its owner"))?;
        } else if let Some(g) = gid {
            std::os::unix::fs::chown(&tmp, None, Some(g)).map_err(err("setting its group"))?;
        }
        std::fs::rename(&tmp, path).map_err(err("moving it into place"))?;
        listener
            .set_nonblocking(true)
            .map_err(err("making it non-blocking"))
    };
    if let Err(e) = finish() {
        let _ = std::fs::remove_file(&tmp);
        return Err(e);
    }
    Ok(listener)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn binds_with_mode_replaces_stale_and_refuses_live_or_foreign() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("nested/dir/cri.sock");
        let l = bind(&path, 0o660, None).unwrap();
        let m = std::fs::symlink_metadata(&path).unwrap();
        assert!(m.file_type().is_socket());
        assert_eq!(m.permissions().mode() & 0o7777, 0o660);
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } == 0 {
            assert_eq!((m.uid(), m.gid()), (0, 0));
        }
        assert_eq!(
            std::fs::symlink_metadata(path.parent().unwrap())
                .unwrap()
                .permissions()
                .mode()
                & 0o777,
            0o711
        );
        // a live server is not replaced
        match bind(&path, 0o660, None) {
            Err(ServeError::InUse { path: p }) => assert_eq!(p, path),
            other => panic!("{other:?}"),
        }
        // once it is gone, its socket is stale and replaced
        drop(l);
        let before = identity(&path);
        let _l2 = bind(&path, 0o600, None).unwrap();
        assert_ne!(identity(&path), before);
        assert_eq!(
            std::fs::symlink_metadata(&path)
                .unwrap()
                .permissions()
                .mode()
                & 0o7777,
            0o600
        );
        // a regular file is never removed
        let file = dir.path().join("not-a-socket");
        std::fs::write(&file, "keep me").unwrap();
        let e = bind(&file, 0o660, None).unwrap_err();
        assert!(matches!(e, ServeError::NotASocket { .. }), "{e:?}");
        assert!(e.to_string().contains("not-a-socket"), "{e}");
        assert_eq!(std::fs::read_to_string(&file).unwrap(), "keep me");
        // no temporary names left behind
        let left: Vec<_> = std::fs::read_dir(path.parent().unwrap())
            .unwrap()
            .flatten()
            .map(|e| e.file_name())
            .collect();
        assert_eq!(left, vec![std::ffi::OsString::from("cri.sock")]);
    }
}
