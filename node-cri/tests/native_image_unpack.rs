//! Safe layer unpacking of the native image store: a hostile layer corpus built here from raw tar
//! headers (the tar crate refuses `..` names, so the name bytes are written into the header
//! directly) must be refused with nothing written outside the target, and ordinary layers
//! (whiteouts, opaque dirs, hard links, symlinks, gzip, zstd) must unpack faithfully.
//!
//! Whiteouts are character devices 0/0 and opaque dirs a `trusted.*` xattr: the tests that check
//! them need root (`require_root`); the refusal tests run as any user.
//!
//! The "symlink to /etc then write through it" cases point at a sentinel directory next to the
//! target instead of the real `/etc`: same code path, and a regression cannot damage the host.

use std::io::Write;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use node_cri::native::image::{ImageError, UnpackOptions, UnpackReport, unpack_layer};
use node_test_support::require_root;
use sha2::Digest;
use tar::EntryType;

/// A tar archive written header by header.
#[derive(Default)]
struct RawTar(Vec<u8>);

impl RawTar {
    fn entry(mut self, name: &[u8], kind: EntryType, link: &[u8], data: &[u8], mode: u32) -> Self {
        let mut h = tar::Header::new_gnu();
        {
            let old = h.as_old_mut();
            assert!(name.len() <= old.name.len() && link.len() <= old.linkname.len());
            old.name[..name.len()].copy_from_slice(name);
            old.linkname[..link.len()].copy_from_slice(link);
        }
        h.set_entry_type(kind);
        h.set_size(data.len() as u64);
        h.set_mode(mode);
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(1_000_000);
        if matches!(kind, EntryType::Char | EntryType::Block) {
            h.set_device_major(1).unwrap();
            h.set_device_minor(3).unwrap();
        }
        h.set_cksum();
        self.0.extend_from_slice(h.as_bytes());
        self.0.extend_from_slice(data);
        self.0.resize(self.0.len().next_multiple_of(512), 0);
        self
    }
    fn file(self, name: &str, data: &[u8]) -> Self {
        self.entry(name.as_bytes(), EntryType::Regular, b"", data, 0o644)
    }
    fn dir(self, name: &str) -> Self {
        self.entry(name.as_bytes(), EntryType::Directory, b"", b"", 0o755)
    }
    fn symlink(self, name: &str, target: &str) -> Self {
        self.entry(
            name.as_bytes(),
            EntryType::Symlink,
            target.as_bytes(),
            b"",
            0o777,
        )
    }
    fn hardlink(self, name: &str, target: &str) -> Self {
        self.entry(
            name.as_bytes(),
            EntryType::Link,
            target.as_bytes(),
            b"",
            0o644,
        )
    }
    fn finish(mut self) -> Vec<u8> {
        self.0.extend_from_slice(&[0u8; 1024]);
        self.0
    }
}

/// A base directory holding the target `layer` and a `sentinel` directory with one file that
/// must never change.
struct Scene {
    base: tempfile::TempDir,
}

impl Scene {
    fn new() -> Self {
        let base = tempfile::tempdir().unwrap();
        std::fs::create_dir(base.path().join("sentinel")).unwrap();
        std::fs::write(base.path().join("sentinel/secret"), b"orig").unwrap();
        Self { base }
    }
    fn target(&self) -> PathBuf {
        self.base.path().join("layer")
    }
    fn sentinel(&self) -> String {
        self.base.path().join("sentinel").display().to_string()
    }
    fn unpack(&self, tar: &[u8]) -> Result<UnpackReport, ImageError> {
        unpack_layer(
            tar,
            "sha256:test",
            &self.target(),
            &UnpackOptions::default(),
        )
    }
    /// Nothing was written outside the target: the base holds only the sentinel (and the layer
    /// when it was accepted), the sentinel only its untouched file.
    fn assert_nothing_outside(&self, layer_expected: bool) {
        let mut names: Vec<String> = std::fs::read_dir(self.base.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        let want: Vec<&str> = if layer_expected {
            vec!["layer", "sentinel"]
        } else {
            vec!["sentinel"]
        };
        assert_eq!(names, want, "unexpected files next to the target");
        let inside: Vec<String> = std::fs::read_dir(self.base.path().join("sentinel"))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(
            inside,
            vec!["secret".to_string()],
            "the sentinel directory changed"
        );
        let secret = self.base.path().join("sentinel/secret");
        assert_eq!(std::fs::read(&secret).unwrap(), b"orig");
        assert_eq!(
            std::fs::metadata(&secret).unwrap().nlink(),
            1,
            "the sentinel file got a hard link"
        );
    }
}

fn assert_refused(scene: &Scene, tar: &[u8], entry: &str, reason_part: &str) {
    match scene.unpack(tar) {
        Err(ImageError::UnsafeEntry {
            entry: e, reason, ..
        }) => {
            assert_eq!(e, entry, "the error names the entry");
            assert!(
                reason.contains(reason_part),
                "reason {reason:?} should mention {reason_part:?}"
            );
        }
        other => panic!("entry {entry:?} should have been refused, got {other:?}"),
    }
    assert!(
        !scene.target().exists(),
        "the half-extracted layer is removed"
    );
    scene.assert_nothing_outside(false);
}

#[test]
fn dot_dot_entries_are_refused() {
    let s = Scene::new();
    let tar = RawTar::default()
        .file("ok", b"1")
        .file("../escape", b"x")
        .finish();
    assert_refused(&s, &tar, "../escape", "..");
    let tar = RawTar::default().dir("a").file("a/../../x", b"x").finish();
    assert_refused(&s, &tar, "a/../../x", "..");
}

#[test]
fn absolute_entries_are_refused() {
    let s = Scene::new();
    let abs = format!("{}/abs", s.sentinel());
    let tar = RawTar::default().file(&abs, b"x").finish();
    assert_refused(&s, &tar, &abs, "absolute");
    let tar = RawTar::default().file("/abs", b"x").finish();
    assert_refused(&s, &tar, "/abs", "absolute");
}

#[test]
fn writing_through_a_symlinked_directory_is_refused() {
    let s = Scene::new();
    // `evil -> /etc` then `evil/passwd`, with the sentinel standing in for /etc.
    let tar = RawTar::default()
        .symlink("evil", &s.sentinel())
        .file("evil/passwd", b"root::0:0::/:/bin/sh\n")
        .finish();
    assert_refused(&s, &tar, "evil/passwd", "symlink");
    // The same through a relative symlink inside the layer.
    let tar = RawTar::default()
        .dir("d")
        .symlink("d/link", "..")
        .file("d/link/x", b"x")
        .finish();
    assert_refused(&s, &tar, "d/link/x", "symlink");
    // A directory entry below a symlink.
    let tar = RawTar::default()
        .symlink("evil", &s.sentinel())
        .dir("evil/sub")
        .finish();
    assert_refused(&s, &tar, "evil/sub", "symlink");
}

#[test]
fn symlinks_escaping_the_root_are_refused() {
    let s = Scene::new();
    let tar = RawTar::default()
        .dir("a")
        .dir("a/b")
        .symlink("a/b/up", "../../../sentinel")
        .finish();
    assert_refused(&s, &tar, "a/b/up", "outside the layer root");
    // A chain: `d/up -> ..` is the root, `d/esc -> up/..` climbs above it through the first link.
    let tar = RawTar::default()
        .dir("d")
        .symlink("d/up", "..")
        .symlink("d/esc", "up/..")
        .finish();
    assert_refused(&s, &tar, "d/esc", "outside the layer root");
    // A chain completed by a later entry: `y -> x/a/..` is harmless until `x/a -> ..` exists.
    let tar = RawTar::default()
        .symlink("y", "x/a/..")
        .dir("x")
        .symlink("x/a", "..")
        .finish();
    assert_refused(&s, &tar, "y", "outside the layer root");
}

#[test]
fn hard_links_outside_the_layer_are_refused() {
    let s = Scene::new();
    let tar = RawTar::default().hardlink("passwd", "/etc/passwd").finish();
    assert_refused(&s, &tar, "passwd", "absolute");
    let tar = RawTar::default().hardlink("h", "../outside").finish();
    assert_refused(&s, &tar, "h", "..");
    let secret = format!("{}/secret", s.sentinel());
    let tar = RawTar::default().hardlink("h", &secret).finish();
    assert_refused(&s, &tar, "h", "absolute");
    // Through a symlink of the layer to the sentinel directory.
    let tar = RawTar::default()
        .symlink("lnk", &s.sentinel())
        .hardlink("h", "lnk/secret")
        .finish();
    assert_refused(&s, &tar, "h", "symlink");
    // To something not (yet) extracted.
    let tar = RawTar::default()
        .hardlink("h", "later")
        .file("later", b"x")
        .finish();
    assert_refused(&s, &tar, "h", "not in this layer");
}

#[test]
fn whiteouts_outside_the_root_are_refused() {
    let s = Scene::new();
    let tar = RawTar::default().file("../.wh.sentinel", b"").finish();
    assert_refused(&s, &tar, "../.wh.sentinel", "..");
    let tar = RawTar::default().dir("a").file("a/.wh...", b"").finish();
    assert_refused(&s, &tar, "a/.wh...", "whiteout");
}

#[test]
fn a_whiteout_through_a_symlink_is_refused() {
    let s = Scene::new();
    // Followed, this would delete the sentinel's file.
    let tar = RawTar::default()
        .symlink("lnk", &s.sentinel())
        .file("lnk/.wh.secret", b"")
        .finish();
    assert_refused(&s, &tar, "lnk/.wh.secret", "symlink");
    let tar = RawTar::default()
        .symlink("lnk", &s.sentinel())
        .file("lnk/.wh..wh..opq", b"")
        .finish();
    assert_refused(&s, &tar, "lnk/.wh..wh..opq", "symlink");
}

#[test]
fn long_and_pax_names_are_checked_too() {
    let s = Scene::new();
    // A GNU long name (`././@LongLink` entry) holding `..`.
    let long = format!("a/{}/../../../long-escape", "b".repeat(120));
    let mut data = long.clone().into_bytes();
    data.push(0);
    let tar = RawTar::default()
        .entry(b"././@LongLink", EntryType::GNULongName, b"", &data, 0o644)
        .file("short", b"x")
        .finish();
    assert_refused(&s, &tar, &long, "..");
    // A PAX `path` record overriding a harmless header name.
    let record = b"22 path=../pax-escape\n";
    let tar = RawTar::default()
        .entry(b"PaxHeaders/x", EntryType::XHeader, b"", record, 0o644)
        .file("harmless", b"x")
        .finish();
    assert_refused(&s, &tar, "../pax-escape", "..");
    // A PAX `linkpath` for a hard link.
    let record = b"29 linkpath=../../etc/shadow\n";
    let tar = RawTar::default()
        .entry(b"PaxHeaders/y", EntryType::XHeader, b"", record, 0o644)
        .hardlink("h", "ok")
        .finish();
    assert_refused(&s, &tar, "h", "..");
}

#[test]
fn device_nodes_are_skipped_unless_allowed() {
    let s = Scene::new();
    let tar = RawTar::default()
        .dir("dev")
        .entry(b"dev/null", EntryType::Char, b"", b"", 0o666)
        .entry(b"dev/sda", EntryType::Block, b"", b"", 0o660)
        .file("ok", b"1")
        .finish();
    let report = s.unpack(&tar).unwrap();
    assert_eq!(
        report.skipped_devices,
        vec!["dev/null".to_string(), "dev/sda".to_string()]
    );
    assert!(std::fs::symlink_metadata(s.target().join("dev/null")).is_err());
    assert!(std::fs::symlink_metadata(s.target().join("dev/sda")).is_err());
    assert_eq!(std::fs::read(s.target().join("ok")).unwrap(), b"1");
    s.assert_nothing_outside(true);
}

#[test]
fn an_entry_replacing_a_symlink_never_writes_through_it() {
    let s = Scene::new();
    let target = format!("{}/written", s.sentinel());
    let tar = RawTar::default()
        .symlink("f", &target)
        .file("f", b"new")
        .symlink("g", &format!("{}/secret", s.sentinel()))
        .file("g", b"new")
        .finish();
    s.unpack(&tar).unwrap();
    let md = std::fs::symlink_metadata(s.target().join("f")).unwrap();
    assert!(md.file_type().is_file());
    assert_eq!(std::fs::read(s.target().join("g")).unwrap(), b"new");
    s.assert_nothing_outside(true);
}

fn sample_tar() -> Vec<u8> {
    RawTar::default()
        .dir("./")
        .dir("bin")
        .entry(
            b"bin/tool",
            EntryType::Regular,
            b"",
            b"#!/bin/sh\necho hi\n",
            0o4755,
        )
        .symlink("bin/sh", "tool")
        .symlink("bin/abs", "/bin/tool")
        .dir("usr")
        .dir("usr/lib")
        .symlink("usr/lib/rel", "../../bin/tool")
        .hardlink("bin/tool-link", "bin/tool")
        .dir("replaced")
        .file("replaced/child", b"c")
        .file("replaced", b"now a file")
        .file("was-file", b"f")
        .dir("was-file")
        .finish()
}

#[test]
fn ordinary_layers_unpack_faithfully() {
    let s = Scene::new();
    let tar = sample_tar();
    let report = s.unpack(&tar).unwrap();
    assert_eq!(
        report.diff_id,
        format!("sha256:{}", hex::encode(sha2::Sha256::digest(&tar)))
    );
    let t = s.target();
    assert_eq!(
        std::fs::read(t.join("bin/tool")).unwrap(),
        b"#!/bin/sh\necho hi\n"
    );
    let md = std::fs::metadata(t.join("bin/tool")).unwrap();
    assert_eq!(
        md.permissions().mode() & 0o7777,
        0o4755,
        "mode (with setuid) preserved"
    );
    assert_eq!(md.mtime(), 1_000_000, "mtime preserved");
    assert_eq!(
        std::fs::read_link(t.join("bin/sh")).unwrap(),
        Path::new("tool")
    );
    assert_eq!(
        std::fs::read_link(t.join("bin/abs")).unwrap(),
        Path::new("/bin/tool")
    );
    assert_eq!(
        std::fs::read_link(t.join("usr/lib/rel")).unwrap(),
        Path::new("../../bin/tool")
    );
    let link = std::fs::metadata(t.join("bin/tool-link")).unwrap();
    assert_eq!(link.ino(), md.ino(), "hard link shares the inode");
    assert_eq!(md.nlink(), 2);
    assert_eq!(std::fs::read(t.join("replaced")).unwrap(), b"now a file");
    assert!(std::fs::metadata(t.join("was-file")).unwrap().is_dir());
    assert_eq!(
        std::fs::metadata(t.join("bin")).unwrap().mtime(),
        1_000_000,
        "directory mtimes are set after their children"
    );
    s.assert_nothing_outside(true);
}

#[test]
fn gzip_and_zstd_layers_give_the_same_tree_and_diff_id() {
    let tar = sample_tar();
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gz.write_all(&tar).unwrap();
    let gz = gz.finish().unwrap();
    let zst = zstd::encode_all(&tar[..], 3).unwrap();
    let plain = Scene::new().unpack(&tar).unwrap().diff_id;
    for (name, blob) in [("gzip", gz), ("zstd", zst)] {
        let s = Scene::new();
        let report = s.unpack(&blob).unwrap();
        assert_eq!(
            report.diff_id, plain,
            "{name}: diff_id is the digest of the uncompressed tar"
        );
        assert_eq!(
            std::fs::read(s.target().join("bin/tool")).unwrap(),
            b"#!/bin/sh\necho hi\n",
            "{name}"
        );
        s.assert_nothing_outside(true);
    }
}

#[test]
fn a_truncated_layer_fails_and_leaves_nothing() {
    let s = Scene::new();
    let tar = sample_tar();
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gz.write_all(&tar).unwrap();
    let gz = gz.finish().unwrap();
    let err = s.unpack(&gz[..gz.len() / 2]).unwrap_err();
    assert!(matches!(err, ImageError::Extract { .. }), "{err:?}");
    assert!(!s.target().exists());
    s.assert_nothing_outside(false);
}

#[test]
fn the_busybox_test_image_layer_unpacks() {
    if !node_test_support::require_path(
        "the_busybox_test_image_layer_unpacks",
        node_test_support::image::BUSYBOX,
    ) {
        return;
    }
    let img = node_test_support::TestImage::busybox().build().unwrap();
    let s = Scene::new();
    s.unpack(&img.layers[0].bytes).unwrap();
    assert!(s.target().join("bin/busybox").is_file());
    assert_eq!(
        std::fs::read_link(s.target().join("bin/sh")).unwrap(),
        Path::new("busybox")
    );
    assert!(
        std::fs::read_to_string(s.target().join("etc/passwd"))
            .unwrap()
            .starts_with("root:")
    );
}

fn getxattr(path: &Path, name: &str) -> Option<Vec<u8>> {
    use std::os::unix::ffi::OsStrExt;
    let p = std::ffi::CString::new(path.as_os_str().as_bytes()).unwrap();
    let n = std::ffi::CString::new(name).unwrap();
    let mut buf = vec![0u8; 64];
    // SAFETY: valid NUL-terminated strings and a buffer of the given length.
    let rc = unsafe { libc::lgetxattr(p.as_ptr(), n.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
    if rc < 0 {
        return None;
    }
    buf.truncate(rc as usize);
    Some(buf)
}

#[test]
fn whiteouts_and_opaque_dirs_become_overlay_form() {
    if !require_root("whiteouts_and_opaque_dirs_become_overlay_form") {
        return;
    }
    let s = Scene::new();
    let tar = RawTar::default()
        .dir("etc")
        .file("etc/.wh..wh..opq", b"")
        .file("etc/kept", b"k")
        .file(".wh.gone", b"")
        .dir("var")
        .file("var/.wh.cache", b"")
        .file("var/.wh..wh.plnk", b"")
        .entry(b"owned", EntryType::Regular, b"", b"o", 0o600)
        .finish();
    let mut tar = tar;
    // Give `owned` uid/gid 1234 by patching its header (the builder writes 0).
    let pos = tar.windows(5).position(|w| w == b"owned").unwrap();
    let mut h = tar::Header::from_byte_slice(&tar[pos..pos + 512]).clone();
    h.set_uid(1234);
    h.set_gid(4321);
    h.set_cksum();
    tar[pos..pos + 512].copy_from_slice(h.as_bytes());
    s.unpack(&tar).unwrap();
    let t = s.target();
    for w in ["gone", "var/cache"] {
        let md = std::fs::symlink_metadata(t.join(w)).unwrap();
        assert!(
            std::os::unix::fs::FileTypeExt::is_char_device(&md.file_type()),
            "{w} is a char device"
        );
        assert_eq!(md.rdev(), 0, "{w} is device 0/0");
    }
    assert!(std::fs::symlink_metadata(t.join(".wh.gone")).is_err());
    assert!(
        std::fs::symlink_metadata(t.join("var/.wh..wh.plnk")).is_err(),
        "AUFS metadata is skipped"
    );
    assert_eq!(
        getxattr(&t.join("etc"), "trusted.overlay.opaque").as_deref(),
        Some(&b"y"[..])
    );
    assert_eq!(getxattr(&t.join("var"), "trusted.overlay.opaque"), None);
    assert!(std::fs::symlink_metadata(t.join("etc/.wh..wh..opq")).is_err());
    let md = std::fs::metadata(t.join("owned")).unwrap();
    assert_eq!((md.uid(), md.gid()), (1234, 4321), "ownership preserved");
    s.assert_nothing_outside(true);
}

#[test]
fn devices_are_created_when_allowed() {
    if !require_root("devices_are_created_when_allowed") {
        return;
    }
    let s = Scene::new();
    let tar = RawTar::default()
        .entry(b"null", EntryType::Char, b"", b"", 0o666)
        .finish();
    let opts = UnpackOptions {
        allow_devices: true,
        ..Default::default()
    };
    let report = unpack_layer(&tar[..], "sha256:dev", &s.target(), &opts).unwrap();
    assert!(report.skipped_devices.is_empty());
    let md = std::fs::symlink_metadata(s.target().join("null")).unwrap();
    assert!(std::os::unix::fs::FileTypeExt::is_char_device(
        &md.file_type()
    ));
    assert_eq!(md.rdev(), libc::makedev(1, 3));
}
