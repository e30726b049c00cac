//! A tiny OCI image built locally from busybox-static (no network): one gzip layer with
//! `/bin/busybox`, its applet links, `/etc/passwd` and `/etc/group`, plus any files a test adds.

use std::io::{self, Write};
use std::path::{Path, PathBuf};

use flate2::Compression;
use flate2::write::GzEncoder;
use serde_json::json;
use sha2::{Digest, Sha256};

/// Where Debian's busybox-static puts its binary.
pub const BUSYBOX: &str = "/bin/busybox";

/// The busybox applets linked into `/bin` of the test image.
pub const APPLETS: &[&str] = &[
    "sh", "ash", "ls", "cat", "echo", "sleep", "httpd", "nc", "wget", "hostname", "id", "ps",
    "mount", "true", "false", "env", "grep", "head", "tail", "dd", "kill", "mkdir", "rm", "touch",
    "ip", "ifconfig", "ping", "date", "yes", "seq", "wc", "test", "[", "printf", "stat", "uname",
    "whoami", "df", "free", "top", "mkfifo", "tr", "sed", "awk", "cut", "sort", "xargs", "find",
    "chmod", "chown", "ln", "cp", "mv", "pwd", "nslookup", "timeout", "sync", "usleep", "udhcpc",
    "route", "netstat", "umount",
];

/// One content-addressed blob of an image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Blob {
    /// Its media type.
    pub media_type: String,
    /// `sha256:<hex>`.
    pub digest: String,
    /// Its bytes.
    pub bytes: Vec<u8>,
}

impl Blob {
    /// A blob of these bytes.
    pub fn new(media_type: &str, bytes: Vec<u8>) -> Self {
        Self {
            media_type: media_type.to_string(),
            digest: sha256_digest(&bytes),
            bytes,
        }
    }
    /// Its OCI descriptor.
    pub fn descriptor(&self) -> serde_json::Value {
        json!({"mediaType": self.media_type, "digest": self.digest, "size": self.bytes.len()})
    }
}

/// `sha256:<hex>` of some bytes.
pub fn sha256_digest(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(bytes)))
}

/// An OCI image: layers, config and manifest.
#[derive(Debug, Clone)]
pub struct TestImage {
    /// The layers (gzip tar), bottom first.
    pub layers: Vec<Blob>,
    /// The image config.
    pub config: Blob,
    /// The image manifest.
    pub manifest: Blob,
}

/// Builds a [`TestImage`].
#[derive(Debug, Clone)]
pub struct TestImageBuilder {
    files: Vec<(String, Vec<u8>, u32)>,
    cmd: Vec<String>,
    entrypoint: Vec<String>,
    env: Vec<String>,
    busybox: bool,
}

impl TestImage {
    /// A builder of the busybox image (`sh` as its command).
    pub fn busybox() -> TestImageBuilder {
        TestImageBuilder {
            files: vec![],
            cmd: vec!["sh".into()],
            entrypoint: vec![],
            env: vec!["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".into()],
            busybox: true,
        }
    }

    /// A builder of an image that holds only the files added (a sandbox "pause" image can be
    /// busybox with `sleep` as its command instead).
    pub fn empty() -> TestImageBuilder {
        TestImageBuilder {
            busybox: false,
            cmd: vec![],
            ..Self::busybox()
        }
    }

    /// The manifest's digest: the image's id in a registry.
    pub fn digest(&self) -> &str {
        &self.manifest.digest
    }

    /// Unpack the layers, bottom first, into `<dir>/layers/<n>`: the layer directories an
    /// image source of unpacked layers (the native runtime's `LayerDirImages`) is given.
    pub fn unpack_layers(&self, dir: &Path) -> io::Result<Vec<PathBuf>> {
        let mut dirs = Vec::with_capacity(self.layers.len());
        for (n, layer) in self.layers.iter().enumerate() {
            let to = dir.join("layers").join(n.to_string());
            std::fs::create_dir_all(&to)?;
            tar::Archive::new(flate2::read::GzDecoder::new(&layer.bytes[..])).unpack(&to)?;
            dirs.push(to);
        }
        Ok(dirs)
    }

    /// The image config, parsed as `T` (an OCI `ImageConfiguration`).
    pub fn parsed_config<T: serde::de::DeserializeOwned>(&self) -> serde_json::Result<T> {
        serde_json::from_slice(&self.config.bytes)
    }

    /// Write the image as an OCI image layout directory, tagged `tag`.
    pub fn write_oci_layout(&self, dir: &Path, tag: &str) -> io::Result<()> {
        let blobs = dir.join("blobs/sha256");
        std::fs::create_dir_all(&blobs)?;
        for b in self.layers.iter().chain([&self.config, &self.manifest]) {
            std::fs::write(blobs.join(b.digest.trim_start_matches("sha256:")), &b.bytes)?;
        }
        std::fs::write(dir.join("oci-layout"), br#"{"imageLayoutVersion":"1.0.0"}"#)?;
        let mut desc = self.manifest.descriptor();
        desc["annotations"] = json!({"org.opencontainers.image.ref.name": tag});
        let index = json!({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json", "manifests": [desc]});
        std::fs::write(dir.join("index.json"), serde_json::to_vec_pretty(&index)?)?;
        Ok(())
    }
}

impl TestImageBuilder {
    /// Add a file (parent directories are created); `mode` like `0o755`.
    pub fn file(mut self, path: &str, contents: impl Into<Vec<u8>>, mode: u32) -> Self {
        self.files.push((
            path.trim_start_matches('/').to_string(),
            contents.into(),
            mode,
        ));
        self
    }
    /// The image's `Cmd`.
    pub fn cmd(mut self, cmd: &[&str]) -> Self {
        self.cmd = cmd.iter().map(|s| s.to_string()).collect();
        self
    }
    /// The image's `Entrypoint`.
    pub fn entrypoint(mut self, ep: &[&str]) -> Self {
        self.entrypoint = ep.iter().map(|s| s.to_string()).collect();
        self
    }
    /// Add an environment variable (`KEY=value`).
    pub fn env(mut self, kv: &str) -> Self {
        self.env.push(kv.to_string());
        self
    }

    /// Build the image. Fails when busybox-static is not installed.
    pub fn build(self) -> io::Result<TestImage> {
        let tar = self.layer_tar()?;
        let diff_id = sha256_digest(&tar);
        let mut gz = GzEncoder::new(Vec::new(), Compression::fast());
        gz.write_all(&tar)?;
        let layer = Blob::new("application/vnd.oci.image.layer.v1.tar+gzip", gz.finish()?);
        let mut cfg = json!({"Env": self.env, "WorkingDir": "/"});
        if !self.cmd.is_empty() {
            cfg["Cmd"] = json!(self.cmd);
        }
        if !self.entrypoint.is_empty() {
            cfg["Entrypoint"] = json!(self.entrypoint);
        }
        let config = json!({
            "created": "2026-01-01T00:00:00Z",
            "architecture": "amd64",
            "os": "linux",
            "config": cfg,
            "rootfs": {"type": "layers", "diff_ids": [diff_id]},
            "history": [{"created": "2026-01-01T00:00:00Z", "created_by": "nodekit test image"}],
        });
        let config = Blob::new(
            "application/vnd.oci.image.config.v1+json",
            serde_json::to_vec(&config)?,
        );
        let manifest = json!({
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": config.descriptor(),
            "layers": [layer.descriptor()],
        });
        let manifest = Blob::new(
            "application/vnd.oci.image.manifest.v1+json",
            serde_json::to_vec(&manifest)?,
        );
        Ok(TestImage {
            layers: vec![layer],
            config,
            manifest,
        })
    }

    fn layer_tar(&self) -> io::Result<Vec<u8>> {
        let mut b = tar::Builder::new(Vec::new());
        let mut dirs: Vec<String> = vec![
            "bin".into(),
            "etc".into(),
            "tmp".into(),
            "proc".into(),
            "sys".into(),
            "dev".into(),
            "root".into(),
            "var".into(),
            "var/www".into(),
        ];
        for (path, _, _) in &self.files {
            let mut p = Path::new(path).parent();
            while let Some(d) = p.filter(|d| !d.as_os_str().is_empty()) {
                dirs.push(d.to_string_lossy().into_owned());
                p = d.parent();
            }
        }
        dirs.sort();
        dirs.dedup();
        for d in &dirs {
            let mut h = tar::Header::new_gnu();
            h.set_entry_type(tar::EntryType::Directory);
            h.set_mode(if d == "tmp" { 0o1777 } else { 0o755 });
            h.set_size(0);
            h.set_mtime(0);
            b.append_data(&mut h, format!("{d}/"), io::empty())?;
        }
        if self.busybox {
            let bin = std::fs::read(BUSYBOX).map_err(|e| {
                io::Error::new(e.kind(), format!("{BUSYBOX}: {e} (install busybox-static)"))
            })?;
            append_file(&mut b, "bin/busybox", &bin, 0o755)?;
            for a in APPLETS {
                let mut h = tar::Header::new_gnu();
                h.set_entry_type(tar::EntryType::Symlink);
                h.set_mode(0o777);
                h.set_size(0);
                h.set_mtime(0);
                b.append_link(&mut h, format!("bin/{a}"), "busybox")?;
            }
            append_file(
                &mut b,
                "etc/passwd",
                b"root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/false\n",
                0o644,
            )?;
            append_file(&mut b, "etc/group", b"root:x:0:\nnogroup:x:65534:\n", 0o644)?;
        }
        for (path, data, mode) in &self.files {
            append_file(&mut b, path, data, *mode)?;
        }
        b.into_inner()
    }
}

fn append_file(
    b: &mut tar::Builder<Vec<u8>>,
    path: &str,
    data: &[u8],
    mode: u32,
) -> io::Result<()> {
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(tar::EntryType::Regular);
    h.set_mode(mode);
    h.set_size(data.len() as u64);
    h.set_mtime(0);
    b.append_data(&mut h, path, data)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn image_is_content_addressed_and_layout_is_written() {
        if !crate::require_path("image_is_content_addressed_and_layout_is_written", BUSYBOX) {
            return;
        }
        let img = TestImage::busybox()
            .file("/srv/hello.txt", "hi\n", 0o644)
            .build()
            .unwrap();
        assert_eq!(img.manifest.digest, sha256_digest(&img.manifest.bytes));
        let m: serde_json::Value = serde_json::from_slice(&img.manifest.bytes).unwrap();
        assert_eq!(m["layers"][0]["digest"], img.layers[0].digest);
        let dir = tempfile::tempdir().unwrap();
        img.write_oci_layout(dir.path(), "latest").unwrap();
        assert!(
            dir.path()
                .join("blobs/sha256")
                .join(img.digest().trim_start_matches("sha256:"))
                .exists()
        );
        // the layer holds busybox and the added file
        let gz = flate2::read::GzDecoder::new(&img.layers[0].bytes[..]);
        let mut ar = tar::Archive::new(gz);
        let names: Vec<String> = ar
            .entries()
            .unwrap()
            .map(|e| e.unwrap().path().unwrap().display().to_string())
            .collect();
        assert!(names.contains(&"bin/busybox".to_string()));
        assert!(names.contains(&"srv/hello.txt".to_string()));
        // the same input gives the same digest (reproducible)
        let again = TestImage::busybox()
            .file("/srv/hello.txt", "hi\n", 0o644)
            .build()
            .unwrap();
        assert_eq!(again.digest(), img.digest());
    }

    #[test]
    fn layers_unpack_into_numbered_directories_and_the_config_parses() {
        let img = TestImage::empty()
            .file("/srv/motd", "unpacked\n", 0o640)
            .cmd(&["cat", "/srv/motd"])
            .build()
            .unwrap();
        let dir = tempfile::tempdir().unwrap();
        let dirs = img.unpack_layers(dir.path()).unwrap();
        assert_eq!(dirs, vec![dir.path().join("layers/0")]);
        let motd = dirs[0].join("srv/motd");
        assert_eq!(std::fs::read_to_string(&motd).unwrap(), "unpacked\n");
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(
            std::fs::metadata(&motd).unwrap().permissions().mode() & 0o777,
            0o640
        );
        let config: serde_json::Value = img.parsed_config().unwrap();
        assert_eq!(config["config"]["Cmd"], json!(["cat", "/srv/motd"]));
    }
}
