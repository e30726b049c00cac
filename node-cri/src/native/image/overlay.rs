//! Container root filesystems as overlayfs mounts: the image's unpacked layers as read-only lower
//! directories, a per-container upper and work directory.

use std::path::{Path, PathBuf};

use nix::mount::{MntFlags, MsFlags};

use super::ImageError;

fn check_path(p: &Path, target: &Path) -> Result<String, ImageError> {
    let s = p.to_str().ok_or_else(|| ImageError::Overlay {
        target: target.into(),
        message: format!("{} is not UTF-8", p.display()),
    })?;
    if s.contains([',', ':']) || s.is_empty() {
        return Err(ImageError::Overlay {
            target: target.into(),
            message: format!("{s:?} holds a `,` or `:` (not allowed in overlay options)"),
        });
    }
    Ok(s.to_string())
}

/// Mount an overlay on `target`: `lower_bottom_first` are the image layers bottom first (as
/// [`ImageStore::layer_dirs`](super::ImageStore::layer_dirs) returns them; the kernel wants the
/// top first, this reverses them), `upper` receives the writes, `work` is overlayfs' scratch
/// directory on the same filesystem as `upper`. Needs CAP_SYS_ADMIN.
pub fn mount_overlay(
    lower_bottom_first: &[PathBuf],
    upper: &Path,
    work: &Path,
    target: &Path,
) -> Result<(), ImageError> {
    if lower_bottom_first.is_empty() {
        return Err(ImageError::Overlay {
            target: target.into(),
            message: "no lower directories (an image has at least one layer)".into(),
        });
    }
    let lowers = lower_bottom_first
        .iter()
        .rev()
        .map(|p| check_path(p, target))
        .collect::<Result<Vec<_>, _>>()?;
    let data = format!(
        "lowerdir={},upperdir={},workdir={},index=off",
        lowers.join(":"),
        check_path(upper, target)?,
        check_path(work, target)?
    );
    // The legacy mount(2) data argument is limited to one page.
    if data.len() >= 4096 {
        return Err(ImageError::Overlay {
            target: target.into(),
            message: format!(
                "{} layers make {} bytes of overlay options, over the 4095 the kernel takes",
                lowers.len(),
                data.len()
            ),
        });
    }
    nix::mount::mount(
        Some("overlay"),
        target,
        Some("overlay"),
        MsFlags::empty(),
        Some(data.as_str()),
    )
    .map_err(|e| ImageError::Overlay {
        target: target.into(),
        message: format!("mount: {e}"),
    })
}

/// Unmount an overlay (lazily when it is busy).
pub fn unmount_overlay(target: &Path) -> Result<(), ImageError> {
    match nix::mount::umount2(target, MntFlags::empty()) {
        Ok(()) => Ok(()),
        Err(nix::errno::Errno::EBUSY) => {
            nix::mount::umount2(target, MntFlags::MNT_DETACH).map_err(|e| ImageError::Overlay {
                target: target.into(),
                message: format!("unmount (detach): {e}"),
            })
        }
        Err(e) => Err(ImageError::Overlay {
            target: target.into(),
            message: format!("unmount: {e}"),
        }),
    }
}

/// A mounted overlay, unmounted when dropped.
#[derive(Debug)]
pub struct OverlayMount {
    target: PathBuf,
    mounted: bool,
}

impl OverlayMount {
    /// [`mount_overlay`], returning a guard that unmounts on drop.
    pub fn mount(
        lower_bottom_first: &[PathBuf],
        upper: &Path,
        work: &Path,
        target: &Path,
    ) -> Result<Self, ImageError> {
        mount_overlay(lower_bottom_first, upper, work, target)?;
        Ok(Self {
            target: target.to_path_buf(),
            mounted: true,
        })
    }

    /// The mount point.
    pub fn target(&self) -> &Path {
        &self.target
    }

    /// Unmount now, reporting errors (drop unmounts silently).
    pub fn unmount(mut self) -> Result<(), ImageError> {
        self.mounted = false;
        unmount_overlay(&self.target)
    }
}

impl Drop for OverlayMount {
    fn drop(&mut self) {
        if self.mounted
            && let Err(e) = unmount_overlay(&self.target)
        {
            tracing::warn!(error = %e, "cannot unmount an overlay");
        }
    }
}
