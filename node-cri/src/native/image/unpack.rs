//! Safe layer unpacking: a layer tar (plain, gzip or zstd) extracted into a directory that is later
//! used as an overlayfs lower directory.
//!
//! The rules, enforced for every entry:
//! - names are relative and hold no `..` component: absolute names and `..` are refused;
//! - every parent directory is opened component by component with `O_NOFOLLOW` from the layer
//!   root: a symlink is never followed during extraction, an entry below a symlink is refused;
//! - symlinks are created as symlinks; a symlink whose target resolves above the layer root
//!   (relative `..` climbing out, also through other symlinks of the layer) is refused; absolute
//!   targets resolve against the layer root, as they do inside the container;
//! - hard links must name an entry already extracted in this layer, by a relative path;
//! - AUFS whiteouts become overlayfs whiteouts (`.wh.<name>` -> character device 0/0,
//!   `.wh..wh..opq` -> `trusted.overlay.opaque=y` on the directory);
//! - character and block devices are skipped (and logged) unless [`UnpackOptions::allow_devices`];
//! - ownership, modes and modification times are preserved; `user.*` and `security.capability`
//!   xattrs are applied best-effort, `trusted.*` from a layer is never applied.
//!
//! A refused entry fails the whole layer and the partly extracted directory is removed.

use std::ffi::{OsStr, OsString};
use std::io::{self, BufRead, BufReader, Read};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::fcntl::{AtFlags, OFlag};
use nix::sys::stat::{FileStat, Mode, SFlag, UtimensatFlags};
use nix::sys::time::TimeSpec;
use nix::unistd::{Gid, Uid, UnlinkatFlags};
use sha2::{Digest, Sha256};

use super::ImageError;

/// How a layer is unpacked.
#[derive(Debug, Clone)]
pub struct UnpackOptions {
    /// Create character and block device nodes found in layers (default `false`: they are skipped
    /// and logged; overlay whiteouts are always created).
    pub allow_devices: bool,
    /// Apply the uid/gid of entries (default: when running as root).
    pub preserve_ownership: bool,
}

impl Default for UnpackOptions {
    fn default() -> Self {
        Self {
            allow_devices: false,
            preserve_ownership: nix::unistd::geteuid().is_root(),
        }
    }
}

/// What unpacking a layer did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UnpackReport {
    /// `sha256:` of the uncompressed tar stream (the layer's diff_id).
    pub diff_id: String,
    /// Entries extracted.
    pub entries: u64,
    /// Bytes of regular file content written.
    pub bytes: u64,
    /// Device nodes skipped because devices are not allowed.
    pub skipped_devices: Vec<String>,
}

/// The compression of a layer blob.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    /// A plain tar.
    None,
    /// gzip.
    Gzip,
    /// zstd.
    Zstd,
}

impl Compression {
    /// Detect the compression from the first bytes of a blob (what containerd does too: media
    /// types are not always truthful).
    pub fn detect(magic: &[u8]) -> Self {
        if magic.starts_with(&[0x1f, 0x8b]) {
            Compression::Gzip
        } else if magic.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
            Compression::Zstd
        } else {
            Compression::None
        }
    }
}

/// Whether a layer media type is one we can unpack (tar, optionally gzip or zstd; OCI and Docker
/// names, distributable or not). Encrypted and foreign artifact layers are refused.
pub fn check_layer_media_type(media_type: &str, layer: &str) -> Result<(), ImageError> {
    const KNOWN: &[&str] = &[
        "application/vnd.oci.image.layer.v1.tar",
        "application/vnd.oci.image.layer.v1.tar+gzip",
        "application/vnd.oci.image.layer.v1.tar+zstd",
        "application/vnd.oci.image.layer.nondistributable.v1.tar",
        "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip",
        "application/vnd.oci.image.layer.nondistributable.v1.tar+zstd",
        "application/vnd.docker.image.rootfs.diff.tar",
        "application/vnd.docker.image.rootfs.diff.tar.gzip",
        "application/vnd.docker.image.rootfs.diff.tar.zstd",
        "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip",
    ];
    if KNOWN.contains(&media_type) {
        Ok(())
    } else {
        Err(ImageError::UnsupportedMediaType {
            what: format!("layer {layer}"),
            media_type: media_type.to_string(),
        })
    }
}

/// Unpack a layer blob (plain, gzip or zstd tar, detected by its magic bytes) into `target`,
/// which must not exist yet (its parent must). On any error `target` is removed and nothing
/// was written outside it. `layer` names the layer in errors.
pub fn unpack_layer(
    blob: impl Read,
    layer: &str,
    target: &Path,
    opts: &UnpackOptions,
) -> Result<UnpackReport, ImageError> {
    std::fs::create_dir(target).map_err(|e| ImageError::io(target, e))?;
    let res = unpack_into(blob, layer, target, opts);
    if res.is_err()
        && let Err(e) = std::fs::remove_dir_all(target)
    {
        tracing::warn!(target = %target.display(), error = %e, "cannot remove a partly extracted layer");
    }
    res
}

fn unpack_into(
    blob: impl Read,
    layer: &str,
    target: &Path,
    opts: &UnpackOptions,
) -> Result<UnpackReport, ImageError> {
    let read_err = |e: io::Error| ImageError::Extract {
        layer: layer.to_string(),
        entry: String::new(),
        source: e,
    };
    let mut buffered = BufReader::with_capacity(128 * 1024, blob);
    let magic = buffered.fill_buf().map_err(read_err)?.to_vec();
    let stream: Box<dyn Read> = match Compression::detect(&magic) {
        Compression::None => Box::new(buffered),
        Compression::Gzip => Box::new(flate2::bufread::MultiGzDecoder::new(buffered)),
        Compression::Zstd => {
            Box::new(zstd::stream::read::Decoder::with_buffer(buffered).map_err(read_err)?)
        }
    };
    let mut hashed = HashingReader {
        inner: stream,
        hasher: Sha256::new(),
    };
    let mut x = Extractor::new(target, layer, opts)?;
    {
        let mut archive = tar::Archive::new(&mut hashed);
        let entries = archive.entries().map_err(read_err)?;
        for entry in entries {
            let entry = entry.map_err(read_err)?;
            x.entry(entry)?;
        }
    }
    // The diff_id covers the whole stream, including the padding after the end-of-archive marker.
    io::copy(&mut hashed, &mut io::sink()).map_err(read_err)?;
    x.finish()?;
    x.report.diff_id = format!("sha256:{}", hex::encode(hashed.hasher.finalize()));
    Ok(x.report)
}

struct HashingReader<R> {
    inner: R,
    hasher: Sha256,
}

impl<R: Read> Read for HashingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        Ok(n)
    }
}

/// Why an entry name or link target is refused.
fn split_name(raw: &[u8]) -> Result<Vec<OsString>, &'static str> {
    if raw.is_empty() {
        return Err("empty name");
    }
    if raw[0] == b'/' {
        return Err("absolute path");
    }
    let mut out = Vec::new();
    for c in raw.split(|b| *b == b'/') {
        match c {
            b"" | b"." => {}
            b".." => return Err("`..` path component"),
            c => out.push(OsString::from_vec(c.to_vec())),
        }
    }
    Ok(out)
}

const WHITEOUT_PREFIX: &[u8] = b".wh.";
const WHITEOUT_META_PREFIX: &[u8] = b".wh..wh.";
const OPAQUE_WHITEOUT: &[u8] = b".wh..wh..opq";
const MAX_SYMLINK_HOPS: usize = 40;

enum Refusal {
    Unsafe(String),
    Io(io::Error),
}

impl From<Errno> for Refusal {
    fn from(e: Errno) -> Self {
        Refusal::Io(io::Error::from(e))
    }
}

impl From<io::Error> for Refusal {
    fn from(e: io::Error) -> Self {
        Refusal::Io(e)
    }
}

struct Extractor<'a> {
    root: OwnedFd,
    root_path: PathBuf,
    layer: &'a str,
    opts: &'a UnpackOptions,
    /// The last parent directory opened, by its components.
    cached_parent: Option<(Vec<OsString>, OwnedFd)>,
    /// Directories whose mtime is set at the end (creating children changes it).
    dir_times: Vec<(Vec<OsString>, i64)>,
    /// Symlinks created, re-checked at the end (a later symlink may change what they resolve to).
    symlinks: Vec<(Vec<OsString>, Vec<u8>)>,
    report: UnpackReport,
}

fn dir_flags() -> OFlag {
    OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC
}

fn lstat_at(dir: BorrowedFd<'_>, name: &OsStr) -> Result<Option<FileStat>, Errno> {
    match nix::sys::stat::fstatat(dir, name, AtFlags::AT_SYMLINK_NOFOLLOW) {
        Ok(st) => Ok(Some(st)),
        Err(Errno::ENOENT) => Ok(None),
        Err(e) => Err(e),
    }
}

fn file_type(st: &FileStat) -> SFlag {
    SFlag::from_bits_truncate(st.st_mode & SFlag::S_IFMT.bits())
}

impl<'a> Extractor<'a> {
    fn new(root_path: &Path, layer: &'a str, opts: &'a UnpackOptions) -> Result<Self, ImageError> {
        let root = nix::fcntl::open(root_path, dir_flags(), Mode::empty())
            .map_err(|e| ImageError::io(root_path, e.into()))?;
        Ok(Self {
            root,
            root_path: root_path.to_path_buf(),
            layer,
            opts,
            cached_parent: None,
            dir_times: vec![],
            symlinks: vec![],
            report: UnpackReport::default(),
        })
    }

    fn entry<R: Read>(&mut self, mut entry: tar::Entry<'_, R>) -> Result<(), ImageError> {
        let raw_name = entry.path_bytes().into_owned();
        let shown = String::from_utf8_lossy(&raw_name).into_owned();
        match self.entry_inner(&mut entry, &raw_name) {
            Ok(()) => {
                self.report.entries += 1;
                Ok(())
            }
            Err(Refusal::Unsafe(reason)) => Err(ImageError::UnsafeEntry {
                layer: self.layer.to_string(),
                entry: shown,
                reason,
            }),
            Err(Refusal::Io(source)) => Err(ImageError::Extract {
                layer: self.layer.to_string(),
                entry: shown,
                source,
            }),
        }
    }

    fn entry_inner<R: Read>(
        &mut self,
        entry: &mut tar::Entry<'_, R>,
        raw_name: &[u8],
    ) -> Result<(), Refusal> {
        use tar::EntryType as T;
        let kind = entry.header().entry_type();
        if matches!(
            kind,
            T::XGlobalHeader | T::XHeader | T::GNULongName | T::GNULongLink
        ) {
            return Ok(());
        }
        let comps = split_name(raw_name).map_err(|r| Refusal::Unsafe(r.to_string()))?;
        let header = entry.header();
        let mode = header.mode()? & 0o7777;
        // Some image builders leave these fields empty: read them as 0, like GNU tar.
        let uid = header.uid().unwrap_or(0);
        let gid = header.gid().unwrap_or(0);
        let mtime = header.mtime().unwrap_or(0) as i64;
        let xattrs = collect_xattrs(entry)?;

        let Some((leaf, parent_comps)) = comps.split_last() else {
            // The layer root itself (`./`): only a directory may describe it.
            if kind != T::Directory {
                return Err(Refusal::Unsafe(
                    "the layer root can only be a directory".into(),
                ));
            }
            let root = self.root.try_clone()?;
            self.apply_dir_meta(root.as_fd(), mode, uid, gid, &xattrs)?;
            self.dir_times.push((vec![], mtime));
            return Ok(());
        };
        let leaf_bytes = leaf.as_bytes();

        // Whiteouts (AUFS form in the tar) become overlayfs whiteouts.
        if leaf_bytes.starts_with(WHITEOUT_PREFIX) {
            let parent = self.open_parent(parent_comps, true)?;
            if leaf_bytes == OPAQUE_WHITEOUT {
                set_xattr(parent.as_fd(), "trusted.overlay.opaque", b"y").map_err(|e| {
                    Refusal::Io(io::Error::new(
                        e.kind(),
                        format!("set trusted.overlay.opaque on the directory: {e}"),
                    ))
                })?;
                return Ok(());
            }
            if leaf_bytes.starts_with(WHITEOUT_META_PREFIX) {
                tracing::debug!(layer = self.layer, entry = %String::from_utf8_lossy(raw_name), "skipping AUFS metadata entry");
                return Ok(());
            }
            let hidden = &leaf_bytes[WHITEOUT_PREFIX.len()..];
            if hidden.is_empty() || hidden == b"." || hidden == b".." || hidden.contains(&b'/') {
                return Err(Refusal::Unsafe("whiteout of an invalid name".into()));
            }
            let hidden = OsStr::from_bytes(hidden);
            self.prepare_leaf(parent.as_fd(), parent_comps, hidden, false)?;
            nix::sys::stat::mknodat(
                parent.as_fd(),
                hidden,
                SFlag::S_IFCHR,
                Mode::from_bits_truncate(0o000),
                nix::sys::stat::makedev(0, 0),
            )?;
            self.chown_at(parent.as_fd(), hidden, uid, gid)?;
            return Ok(());
        }

        let parent = self.open_parent(parent_comps, true)?;
        let pfd = parent.as_fd();
        match kind {
            T::Regular | T::Continuous | T::GNUSparse => {
                self.prepare_leaf(pfd, parent_comps, leaf, false)?;
                let fd = nix::fcntl::openat(
                    pfd,
                    leaf.as_os_str(),
                    OFlag::O_WRONLY
                        | OFlag::O_CREAT
                        | OFlag::O_EXCL
                        | OFlag::O_NOFOLLOW
                        | OFlag::O_CLOEXEC,
                    Mode::from_bits_truncate(0o600),
                )?;
                let mut file = std::fs::File::from(fd);
                let n = io::copy(entry, &mut file)?;
                self.report.bytes += n;
                if self.opts.preserve_ownership {
                    nix::unistd::fchown(
                        &file,
                        Some(Uid::from_raw(uid as u32)),
                        Some(Gid::from_raw(gid as u32)),
                    )?;
                }
                // After chown: chown clears set-id bits.
                nix::sys::stat::fchmod(&file, Mode::from_bits_truncate(mode as _))?;
                apply_xattrs(file.as_fd(), &xattrs, self.layer);
                let ts = TimeSpec::new(mtime, 0);
                nix::sys::stat::futimens(&file, &ts, &ts)?;
            }
            T::Directory => {
                match lstat_at(pfd, leaf)? {
                    Some(st) if file_type(&st) == SFlag::S_IFDIR => {}
                    Some(_) => {
                        self.prepare_leaf(pfd, parent_comps, leaf, true)?;
                        nix::sys::stat::mkdirat(
                            pfd,
                            leaf.as_os_str(),
                            Mode::from_bits_truncate(0o700),
                        )?;
                    }
                    None => nix::sys::stat::mkdirat(
                        pfd,
                        leaf.as_os_str(),
                        Mode::from_bits_truncate(0o700),
                    )?,
                }
                let dir = nix::fcntl::openat(pfd, leaf.as_os_str(), dir_flags(), Mode::empty())?;
                self.apply_dir_meta(dir.as_fd(), mode, uid, gid, &xattrs)?;
                self.dir_times.push((comps.clone(), mtime));
            }
            T::Symlink => {
                let target = entry
                    .link_name_bytes()
                    .ok_or_else(|| Refusal::Unsafe("symlink without a target".into()))?
                    .into_owned();
                if target.is_empty() {
                    return Err(Refusal::Unsafe("symlink with an empty target".into()));
                }
                self.check_symlink(parent_comps, &target).map_err(|r| {
                    Refusal::Unsafe(format!(
                        "symlink target {:?} {r}",
                        String::from_utf8_lossy(&target)
                    ))
                })?;
                self.prepare_leaf(pfd, parent_comps, leaf, false)?;
                nix::unistd::symlinkat(OsStr::from_bytes(&target), pfd, leaf.as_os_str())?;
                self.chown_at(pfd, leaf, uid, gid)?;
                let ts = TimeSpec::new(mtime, 0);
                nix::sys::stat::utimensat(
                    pfd,
                    leaf.as_os_str(),
                    &ts,
                    &ts,
                    UtimensatFlags::NoFollowSymlink,
                )?;
                self.symlinks.push((comps.clone(), target));
            }
            T::Link => {
                let target = entry
                    .link_name_bytes()
                    .ok_or_else(|| Refusal::Unsafe("hard link without a target".into()))?
                    .into_owned();
                let shown = String::from_utf8_lossy(&target).into_owned();
                let tcomps = split_name(&target)
                    .map_err(|r| Refusal::Unsafe(format!("hard link target {shown:?}: {r}")))?;
                let Some((tleaf, tparent_comps)) = tcomps.split_last() else {
                    return Err(Refusal::Unsafe("hard link to the layer root".into()));
                };
                if tcomps == comps {
                    return Ok(());
                }
                let tparent = match self.open_parent(tparent_comps, false) {
                    Ok(fd) => fd,
                    Err(Refusal::Io(e)) if e.kind() == io::ErrorKind::NotFound => {
                        return Err(Refusal::Unsafe(format!(
                            "hard link target {shown:?} is not in this layer (not extracted before it)"
                        )));
                    }
                    Err(Refusal::Unsafe(r)) => {
                        return Err(Refusal::Unsafe(format!("hard link target {shown:?}: {r}")));
                    }
                    Err(e) => return Err(e),
                };
                match lstat_at(tparent.as_fd(), tleaf)? {
                    None => {
                        return Err(Refusal::Unsafe(format!(
                            "hard link target {shown:?} is not in this layer (not extracted before it)"
                        )));
                    }
                    Some(st) if file_type(&st) == SFlag::S_IFDIR => {
                        return Err(Refusal::Unsafe(format!(
                            "hard link target {shown:?} is a directory"
                        )));
                    }
                    Some(_) => {}
                }
                self.prepare_leaf(pfd, parent_comps, leaf, false)?;
                // No AT_SYMLINK_FOLLOW: a link to a symlink links the symlink itself.
                nix::unistd::linkat(
                    tparent.as_fd(),
                    tleaf.as_os_str(),
                    pfd,
                    leaf.as_os_str(),
                    AtFlags::empty(),
                )?;
            }
            T::Char | T::Block | T::Fifo => {
                let (sflag, what) = match kind {
                    T::Char => (SFlag::S_IFCHR, "character device"),
                    T::Block => (SFlag::S_IFBLK, "block device"),
                    _ => (SFlag::S_IFIFO, "fifo"),
                };
                if sflag != SFlag::S_IFIFO && !self.opts.allow_devices {
                    let name = String::from_utf8_lossy(raw_name).into_owned();
                    tracing::warn!(layer = self.layer, entry = %name, "skipping {what}: device nodes are not allowed in layers");
                    self.report.skipped_devices.push(name);
                    return Ok(());
                }
                let major = entry.header().device_major()?.unwrap_or(0) as u64;
                let minor = entry.header().device_minor()?.unwrap_or(0) as u64;
                self.prepare_leaf(pfd, parent_comps, leaf, false)?;
                nix::sys::stat::mknodat(
                    pfd,
                    leaf.as_os_str(),
                    sflag,
                    Mode::from_bits_truncate(0o600),
                    nix::sys::stat::makedev(major, minor),
                )?;
                self.chown_at(pfd, leaf, uid, gid)?;
                nix::sys::stat::fchmodat(
                    pfd,
                    leaf.as_os_str(),
                    Mode::from_bits_truncate(mode as _),
                    nix::sys::stat::FchmodatFlags::FollowSymlink,
                )?;
                let ts = TimeSpec::new(mtime, 0);
                nix::sys::stat::utimensat(
                    pfd,
                    leaf.as_os_str(),
                    &ts,
                    &ts,
                    UtimensatFlags::NoFollowSymlink,
                )?;
            }
            other => {
                tracing::warn!(layer = self.layer, entry = %String::from_utf8_lossy(raw_name), kind = ?other, "skipping a tar entry of an unsupported type");
            }
        }
        Ok(())
    }

    fn chown_at(
        &self,
        dir: BorrowedFd<'_>,
        name: &OsStr,
        uid: u64,
        gid: u64,
    ) -> Result<(), Refusal> {
        if self.opts.preserve_ownership {
            nix::unistd::fchownat(
                dir,
                name,
                Some(Uid::from_raw(uid as u32)),
                Some(Gid::from_raw(gid as u32)),
                AtFlags::AT_SYMLINK_NOFOLLOW,
            )?;
        }
        Ok(())
    }

    fn apply_dir_meta(
        &self,
        dir: BorrowedFd<'_>,
        mode: u32,
        uid: u64,
        gid: u64,
        xattrs: &[(String, Vec<u8>)],
    ) -> Result<(), Refusal> {
        if self.opts.preserve_ownership {
            nix::unistd::fchown(
                dir,
                Some(Uid::from_raw(uid as u32)),
                Some(Gid::from_raw(gid as u32)),
            )?;
        }
        nix::sys::stat::fchmod(dir, Mode::from_bits_truncate(mode as _))?;
        apply_xattrs(dir, xattrs, self.layer);
        Ok(())
    }

    /// Open the directory `comps` below the root, one component at a time with `O_NOFOLLOW`;
    /// missing directories are created (`create`) like tar does for implicit parents.
    fn open_parent(&mut self, comps: &[OsString], create: bool) -> Result<OwnedFd, Refusal> {
        if let Some((cached, fd)) = &self.cached_parent
            && cached.as_slice() == comps
        {
            return Ok(fd.try_clone()?);
        }
        let mut cur = self.root.try_clone()?;
        for c in comps {
            let next =
                match nix::fcntl::openat(cur.as_fd(), c.as_os_str(), dir_flags(), Mode::empty()) {
                    Ok(fd) => fd,
                    Err(Errno::ENOENT) if create => {
                        nix::sys::stat::mkdirat(
                            cur.as_fd(),
                            c.as_os_str(),
                            Mode::from_bits_truncate(0o755),
                        )?;
                        nix::fcntl::openat(cur.as_fd(), c.as_os_str(), dir_flags(), Mode::empty())?
                    }
                    Err(e @ (Errno::ELOOP | Errno::ENOTDIR)) => {
                        let st = lstat_at(cur.as_fd(), c)?;
                        if st.is_some_and(|st| file_type(&st) == SFlag::S_IFLNK) {
                            return Err(Refusal::Unsafe(format!(
                                "parent {:?} is a symlink: extraction never follows symlinks",
                                String::from_utf8_lossy(c.as_bytes())
                            )));
                        }
                        return Err(Refusal::Io(io::Error::new(
                            io::Error::from(e).kind(),
                            format!(
                                "parent {:?} is not a directory",
                                String::from_utf8_lossy(c.as_bytes())
                            ),
                        )));
                    }
                    Err(e) => return Err(e.into()),
                };
            cur = next;
        }
        self.cached_parent = Some((comps.to_vec(), cur.try_clone()?));
        Ok(cur)
    }

    /// Make room for a new entry `leaf` in `parent`: an existing non-directory is unlinked, an
    /// existing directory is removed recursively unless the new entry is a directory too.
    fn prepare_leaf(
        &mut self,
        parent: BorrowedFd<'_>,
        parent_comps: &[OsString],
        leaf: &OsStr,
        force_dir_removal: bool,
    ) -> Result<(), Refusal> {
        let Some(st) = lstat_at(parent, leaf)? else {
            return Ok(());
        };
        if file_type(&st) == SFlag::S_IFDIR {
            let _ = force_dir_removal;
            // Parents were opened without following any symlink, so this path stays in the root.
            let mut path = self.root_path.clone();
            path.extend(parent_comps);
            path.push(leaf);
            std::fs::remove_dir_all(&path)?;
        } else {
            nix::unistd::unlinkat(parent, leaf, UnlinkatFlags::NoRemoveDir)?;
        }
        self.cached_parent = None;
        Ok(())
    }

    /// Resolve a symlink target the way the host kernel would, starting in the link's directory
    /// (relative) or at the layer root (absolute), following the symlinks already in the layer;
    /// refuse it when it climbs above the root.
    fn check_symlink(&self, link_dir: &[OsString], target: &[u8]) -> Result<(), String> {
        let mut stack: Vec<OsString> = if target.starts_with(b"/") {
            vec![]
        } else {
            link_dir.to_vec()
        };
        let mut pending: std::collections::VecDeque<Vec<u8>> =
            target.split(|b| *b == b'/').map(|c| c.to_vec()).collect();
        let mut hops = 0;
        while let Some(c) = pending.pop_front() {
            match c.as_slice() {
                b"" | b"." => {}
                b".." => {
                    if stack.pop().is_none() {
                        return Err("resolves outside the layer root".into());
                    }
                }
                _ => {
                    stack.push(OsString::from_vec(c));
                    let mut rel = PathBuf::new();
                    rel.extend(&stack);
                    let st = match nix::sys::stat::fstatat(
                        self.root.as_fd(),
                        &rel,
                        AtFlags::AT_SYMLINK_NOFOLLOW,
                    ) {
                        Ok(st) => st,
                        Err(_) => continue, // not (yet) there: resolve lexically
                    };
                    if file_type(&st) != SFlag::S_IFLNK {
                        continue;
                    }
                    hops += 1;
                    if hops > MAX_SYMLINK_HOPS {
                        return Err("has too many levels of symlinks".into());
                    }
                    let next = nix::fcntl::readlinkat(self.root.as_fd(), &rel)
                        .map_err(|e| format!("cannot be read back: {e}"))?;
                    stack.pop();
                    let next = next.into_vec();
                    if next.starts_with(b"/") {
                        stack.clear();
                    }
                    for part in next.split(|b| *b == b'/').rev() {
                        pending.push_front(part.to_vec());
                    }
                }
            }
        }
        Ok(())
    }

    fn finish(&mut self) -> Result<(), ImageError> {
        self.cached_parent = None;
        // A later symlink can change where an earlier one leads: check them all again.
        for (comps, target) in std::mem::take(&mut self.symlinks) {
            let (_, dir) = comps.split_last().expect("a symlink has a name");
            let mut rel = PathBuf::new();
            rel.extend(&comps);
            // Replaced by a later entry: nothing left to check.
            if !nix::fcntl::readlinkat(self.root.as_fd(), &rel)
                .is_ok_and(|t| t.as_bytes() == target.as_slice())
            {
                continue;
            }
            if let Err(r) = self.check_symlink(dir, &target) {
                let mut name = PathBuf::new();
                name.extend(&comps);
                return Err(ImageError::UnsafeEntry {
                    layer: self.layer.to_string(),
                    entry: name.display().to_string(),
                    reason: format!(
                        "symlink target {:?} {r} (through other symlinks of the layer)",
                        String::from_utf8_lossy(&target)
                    ),
                });
            }
        }
        for (comps, mtime) in std::mem::take(&mut self.dir_times).into_iter().rev() {
            let ts = TimeSpec::new(mtime, 0);
            let res = match comps.split_last() {
                None => nix::sys::stat::futimens(&self.root, &ts, &ts),
                Some((leaf, parent)) => match self.open_parent(parent, false) {
                    Ok(p) => nix::sys::stat::utimensat(
                        p.as_fd(),
                        leaf.as_os_str(),
                        &ts,
                        &ts,
                        UtimensatFlags::NoFollowSymlink,
                    ),
                    Err(_) => Ok(()), // replaced or removed by a later entry
                },
            };
            if let Err(e) = res {
                tracing::debug!(layer = self.layer, error = %e, "cannot set a directory mtime");
            }
        }
        Ok(())
    }
}

fn collect_xattrs<R: Read>(entry: &mut tar::Entry<'_, R>) -> io::Result<Vec<(String, Vec<u8>)>> {
    let mut out = vec![];
    if let Some(exts) = entry.pax_extensions()? {
        for ext in exts {
            let ext = ext?;
            if let Ok(key) = ext.key()
                && let Some(name) = key.strip_prefix("SCHILY.xattr.")
            {
                out.push((name.to_string(), ext.value_bytes().to_vec()));
            }
        }
    }
    Ok(out)
}

fn apply_xattrs(fd: BorrowedFd<'_>, xattrs: &[(String, Vec<u8>)], layer: &str) {
    for (name, value) in xattrs {
        if !(name.starts_with("user.") || name == "security.capability") {
            tracing::debug!(layer, xattr = %name, "not applying an xattr outside user.* and security.capability");
            continue;
        }
        if let Err(e) = set_xattr(fd, name, value) {
            tracing::debug!(layer, xattr = %name, error = %e, "cannot set an xattr (best-effort)");
        }
    }
}

fn set_xattr(fd: BorrowedFd<'_>, name: &str, value: &[u8]) -> io::Result<()> {
    let cname =
        std::ffi::CString::new(name).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    // SAFETY: fd is a valid open descriptor; name is NUL-terminated; value points to value.len()
    // readable bytes for the duration of the call.
    let rc = unsafe {
        libc::fsetxattr(
            fd.as_raw_fd(),
            cname.as_ptr(),
            value.as_ptr().cast(),
            value.len(),
            0,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_split_and_refused() {
        assert_eq!(
            split_name(b"./a//b/").unwrap(),
            vec![OsString::from("a"), OsString::from("b")]
        );
        assert!(split_name(b"./").unwrap().is_empty());
        assert_eq!(split_name(b"/abs"), Err("absolute path"));
        assert_eq!(split_name(b"a/../../x"), Err("`..` path component"));
        assert_eq!(split_name(b".."), Err("`..` path component"));
        assert_eq!(split_name(b""), Err("empty name"));
    }

    #[test]
    fn compression_is_detected_by_magic() {
        assert_eq!(Compression::detect(&[0x1f, 0x8b, 8]), Compression::Gzip);
        assert_eq!(
            Compression::detect(&[0x28, 0xb5, 0x2f, 0xfd, 0]),
            Compression::Zstd
        );
        assert_eq!(Compression::detect(b"bin/\0\0"), Compression::None);
    }
}
