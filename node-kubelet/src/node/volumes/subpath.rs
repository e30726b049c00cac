//! subPath without a time-of-check/time-of-use race: a container may mount a path inside a
//! volume, never one that leaves it, by `..` or through a symlink — even one swapped in while
//! the kubelet works. The path is opened with `openat2(RESOLVE_BENEATH)` from the volume's root
//! (missing directories made with `mkdirat` and opened with `RESOLVE_NO_SYMLINKS`), and the
//! opened file itself is bind-mounted through `/proc/self/fd/<fd>` onto a kubelet-owned target
//! the runtime then mounts: what was checked is what the container gets.

use std::ffi::OsStr;
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::{Component, Path, PathBuf};

use nix::errno::Errno;
use nix::fcntl::{OFlag, OpenHow, ResolveFlag, open, openat2};
use nix::sys::stat::{Mode, SFlag, fstat, mkdirat};

use super::VolumeError;

fn refuse(sub_path: &str, reason: &str) -> VolumeError {
    VolumeError::SubPath {
        sub_path: sub_path.to_string(),
        reason: reason.to_string(),
    }
}

fn io(path: &Path, e: Errno) -> VolumeError {
    VolumeError::Io {
        path: path.to_path_buf(),
        source: e.into(),
    }
}

fn how(directory: bool, resolve: ResolveFlag) -> OpenHow {
    let mut flags = OFlag::O_PATH | OFlag::O_CLOEXEC;
    if directory {
        flags |= OFlag::O_DIRECTORY;
    }
    OpenHow::new().flags(flags).resolve(resolve)
}

/// `openat2` beneath `dir`, retried when a concurrent rename makes the kernel answer EAGAIN.
fn open_beneath(
    dir: &OwnedFd,
    path: &Path,
    directory: bool,
    resolve: ResolveFlag,
) -> Result<OwnedFd, Errno> {
    let mut last = Errno::EAGAIN;
    for _ in 0..16 {
        match openat2(dir, path, how(directory, resolve)) {
            Err(Errno::EAGAIN) => last = Errno::EAGAIN,
            other => return other,
        }
    }
    Err(last)
}

/// Opens `sub_path` beneath `volume_root` as an `O_PATH` descriptor, creating missing
/// directories (as kubelet does for a subPath of a writable volume). Refuses absolute paths,
/// `..` components and any resolution that leaves the volume (symlinks inside it that stay
/// inside are followed).
pub fn open_subpath(volume_root: &Path, sub_path: &str) -> Result<OwnedFd, VolumeError> {
    let rel = Path::new(sub_path);
    if rel.is_absolute() {
        return Err(refuse(sub_path, "must be a relative path"));
    }
    if rel.components().any(|c| matches!(c, Component::ParentDir)) {
        return Err(refuse(sub_path, "must not contain '..'"));
    }
    let root = open(
        volume_root,
        OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| io(volume_root, e))?;
    let beneath = ResolveFlag::RESOLVE_BENEATH | ResolveFlag::RESOLVE_NO_MAGICLINKS;
    let outside = |e: Errno| match e {
        Errno::EXDEV | Errno::ELOOP => refuse(sub_path, "resolves outside the volume"),
        e => io(&volume_root.join(rel), e),
    };
    match open_beneath(&root, rel, false, beneath) {
        Ok(fd) => return Ok(fd),
        Err(Errno::ENOENT) => {}
        Err(e) => return Err(outside(e)),
    }
    // create what is missing, one directory at a time
    let names: Vec<&OsStr> = rel
        .components()
        .filter_map(|c| match c {
            Component::Normal(n) => Some(n),
            _ => None,
        })
        .collect();
    let mut dir = root.try_clone().map_err(|e| VolumeError::Io {
        path: volume_root.to_path_buf(),
        source: e,
    })?;
    let mut prefix = PathBuf::new();
    for name in names {
        prefix.push(name);
        match open_beneath(&root, &prefix, true, beneath) {
            Ok(fd) => {
                dir = fd;
                continue;
            }
            Err(Errno::ENOENT) => {}
            Err(e) => return Err(outside(e)),
        }
        match mkdirat(&dir, name, Mode::from_bits_truncate(0o755)) {
            Ok(()) | Err(Errno::EEXIST) => {}
            Err(e) => return Err(io(&volume_root.join(&prefix), e)),
        }
        // what we made may have been swapped for a symlink meanwhile: follow none
        dir = open_beneath(
            &dir,
            Path::new(name),
            true,
            beneath | ResolveFlag::RESOLVE_NO_SYMLINKS,
        )
        .map_err(outside)?;
    }
    Ok(dir)
}

/// Bind-mounts `sub_path` of `volume_root` onto `target` (a directory or file made to match),
/// through the descriptor [`open_subpath`] checked. A target already mounted is kept.
pub fn bind_subpath(volume_root: &Path, sub_path: &str, target: &Path) -> Result<(), VolumeError> {
    if super::is_mount_point(target) {
        return Ok(());
    }
    let fd = open_subpath(volume_root, sub_path)?;
    let st = fstat(&fd).map_err(|e| io(&volume_root.join(sub_path), e))?;
    let is_dir = SFlag::from_bits_truncate(st.st_mode) & SFlag::S_IFMT == SFlag::S_IFDIR;
    let made = if is_dir {
        std::fs::create_dir_all(target)
    } else {
        target
            .parent()
            .map_or(Ok(()), std::fs::create_dir_all)
            .and_then(|()| {
                std::fs::OpenOptions::new()
                    .create(true)
                    .truncate(false)
                    .write(true)
                    .open(target)
                    .map(drop)
            })
    };
    made.map_err(|source| VolumeError::Io {
        path: target.to_path_buf(),
        source,
    })?;
    let source = PathBuf::from(format!("/proc/self/fd/{}", fd.as_raw_fd()));
    nix::mount::mount(
        Some(&source),
        target,
        None::<&str>,
        nix::mount::MsFlags::MS_BIND,
        None::<&str>,
    )
    .map_err(|source| VolumeError::Mount {
        op: "bind subPath",
        path: target.to_path_buf(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    /// Where an `O_PATH` descriptor points.
    fn path_of(fd: &OwnedFd) -> PathBuf {
        std::fs::read_link(format!("/proc/self/fd/{}", fd.as_raw_fd())).unwrap()
    }

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
        symlink("/etc", vol.join("absolute")).unwrap();

        let ok = open_subpath(&vol, "data/new/dir").unwrap();
        let real = vol.canonicalize().unwrap();
        assert_eq!(path_of(&ok), real.join("data/new/dir"));
        assert!(real.join("data/new/dir").is_dir());
        assert_eq!(
            path_of(&open_subpath(&vol, "inner").unwrap()),
            real.join("data")
        );
        for bad in [
            "../outside",
            "/etc",
            "escape",
            "escape/x",
            "data/up",
            "data/up/x",
            "data/../../x",
            "absolute",
        ] {
            let e = open_subpath(&vol, bad).unwrap_err();
            assert!(matches!(e, VolumeError::SubPath { .. }), "{bad}: {e}");
        }
        assert!(!outside.join("x").exists());
    }
}
