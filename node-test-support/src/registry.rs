//! A real OCI registry for tests: Debian's `docker-registry` on 127.0.0.1, with its storage in a
//! temporary directory, stopped on drop; and a push of a [`TestImage`] over the registry HTTP API.

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::image::{Blob, TestImage};

/// An HTTP answer: status, headers (lowercase names) and body.
pub type HttpAnswer = (u16, Vec<(String, String)>, Vec<u8>);

/// A `docker-registry` process serving on 127.0.0.1 (plain HTTP), stopped on drop.
#[derive(Debug)]
pub struct LocalRegistry {
    child: Child,
    addr: SocketAddr,
    _dir: tempfile::TempDir,
}

impl LocalRegistry {
    /// Start a registry on a free loopback port and wait until it answers.
    pub fn start() -> io::Result<Self> {
        let dir = tempfile::tempdir()?;
        let port = TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        let addr: SocketAddr = ([127, 0, 0, 1], port).into();
        let config = format!(
            "version: 0.1\nlog:\n  level: error\nstorage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\nhttp:\n  addr: {addr}\n",
            dir.path().join("data").display()
        );
        let cfg = dir.path().join("config.yml");
        std::fs::write(&cfg, config)?;
        let binary = crate::which("docker-registry").ok_or_else(|| {
            io::Error::new(io::ErrorKind::NotFound, "docker-registry is not installed")
        })?;
        let child = Command::new(binary)
            .arg("serve")
            .arg(&cfg)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()?;
        let mut reg = Self {
            child,
            addr,
            _dir: dir,
        };
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            if let Ok((200, _, _)) = reg.request("GET", "/v2/", &[], &[]) {
                return Ok(reg);
            }
            if let Some(status) = reg.child.try_wait()? {
                return Err(io::Error::other(format!(
                    "docker-registry exited early: {status}"
                )));
            }
            if Instant::now() > deadline {
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "docker-registry did not answer within 15 s",
                ));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// `127.0.0.1:<port>`, the registry host part of image references.
    pub fn host(&self) -> String {
        self.addr.to_string()
    }

    /// The registry's address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Push an image as `repo:tag`; returns the full reference `127.0.0.1:<port>/repo:tag`.
    pub fn push(&self, image: &TestImage, repo: &str, tag: &str) -> io::Result<String> {
        for blob in image.layers.iter().chain([&image.config]) {
            self.push_blob(repo, blob)?;
        }
        let path = format!("/v2/{repo}/manifests/{tag}");
        let (status, _, body) = self.request(
            "PUT",
            &path,
            &[("Content-Type", &image.manifest.media_type)],
            &image.manifest.bytes,
        )?;
        if status != 201 {
            return Err(io::Error::other(format!(
                "PUT {path}: {status} {}",
                String::from_utf8_lossy(&body)
            )));
        }
        Ok(format!("{}/{repo}:{tag}", self.host()))
    }

    /// Push an image index (a multi-platform "manifest list") as `repo:tag`: every image's blobs
    /// and manifest (by digest), then the index naming each by its `os/arch[/variant]`
    /// platform. Returns the full reference and the index blob (its digest is the image's
    /// repo digest).
    pub fn push_index(
        &self,
        images: &[(&TestImage, &str)],
        repo: &str,
        tag: &str,
    ) -> io::Result<(String, Blob)> {
        let mut manifests = vec![];
        for (image, platform) in images {
            for blob in image.layers.iter().chain([&image.config]) {
                self.push_blob(repo, blob)?;
            }
            self.push_manifest(repo, &image.manifest.digest, &image.manifest)?;
            let mut parts = platform.split('/');
            let mut p = serde_json::json!({"os": parts.next().unwrap_or("linux"), "architecture": parts.next().unwrap_or("amd64")});
            if let Some(v) = parts.next() {
                p["variant"] = serde_json::json!(v);
            }
            let mut desc = image.manifest.descriptor();
            desc["platform"] = p;
            manifests.push(desc);
        }
        let index = serde_json::json!({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json", "manifests": manifests});
        let index = Blob::new(
            "application/vnd.oci.image.index.v1+json",
            serde_json::to_vec(&index)?,
        );
        self.push_manifest(repo, tag, &index)?;
        Ok((format!("{}/{repo}:{tag}", self.host()), index))
    }

    /// Put a manifest (or index) blob under `reference` (a tag or its digest).
    pub fn push_manifest(&self, repo: &str, reference: &str, manifest: &Blob) -> io::Result<()> {
        let path = format!("/v2/{repo}/manifests/{reference}");
        let (status, _, body) = self.request(
            "PUT",
            &path,
            &[("Content-Type", &manifest.media_type)],
            &manifest.bytes,
        )?;
        if status != 201 {
            return Err(io::Error::other(format!(
                "PUT {path}: {status} {}",
                String::from_utf8_lossy(&body)
            )));
        }
        Ok(())
    }

    /// Where the registry keeps a blob's bytes on disk (tests overwrite it to serve corrupted
    /// content).
    pub fn blob_data_path(&self, digest: &str) -> std::path::PathBuf {
        let hex = digest.trim_start_matches("sha256:");
        self._dir
            .path()
            .join("data/docker/registry/v2/blobs/sha256")
            .join(&hex[..2.min(hex.len())])
            .join(hex)
            .join("data")
    }

    /// Upload a blob into `repo`.
    pub fn push_blob(&self, repo: &str, blob: &Blob) -> io::Result<()> {
        let (status, headers, body) =
            self.request("POST", &format!("/v2/{repo}/blobs/uploads/"), &[], &[])?;
        if status != 202 {
            return Err(io::Error::other(format!(
                "start upload: {status} {}",
                String::from_utf8_lossy(&body)
            )));
        }
        let location = header(&headers, "location")
            .ok_or_else(|| io::Error::other("upload without Location"))?;
        let location = location
            .split_once("://")
            .map(|(_, rest)| {
                rest.split_once('/')
                    .map(|(_, p)| format!("/{p}"))
                    .unwrap_or_default()
            })
            .unwrap_or(location);
        let sep = if location.contains('?') { '&' } else { '?' };
        let url = format!("{location}{sep}digest={}", blob.digest);
        let (status, _, body) = self.request(
            "PUT",
            &url,
            &[("Content-Type", "application/octet-stream")],
            &blob.bytes,
        )?;
        if status != 201 {
            return Err(io::Error::other(format!(
                "upload {}: {status} {}",
                blob.digest,
                String::from_utf8_lossy(&body)
            )));
        }
        Ok(())
    }

    /// One HTTP/1.1 request to the registry: status, headers and body.
    pub fn request(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> io::Result<HttpAnswer> {
        let mut s = TcpStream::connect_timeout(&self.addr, Duration::from_secs(2))?;
        s.set_read_timeout(Some(Duration::from_secs(30)))?;
        let mut req = format!(
            "{method} {path} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\nContent-Length: {}\r\n",
            self.addr,
            body.len()
        );
        for (k, v) in headers {
            req.push_str(&format!("{k}: {v}\r\n"));
        }
        req.push_str("\r\n");
        s.write_all(req.as_bytes())?;
        s.write_all(body)?;
        let mut raw = Vec::new();
        s.read_to_end(&mut raw)?;
        let split = raw
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
            .ok_or_else(|| io::Error::other("malformed HTTP answer"))?;
        let head = String::from_utf8_lossy(&raw[..split]).into_owned();
        let mut lines = head.split("\r\n");
        let status = lines
            .next()
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|c| c.parse().ok())
            .ok_or_else(|| io::Error::other("malformed status line"))?;
        let headers = lines
            .filter_map(|l| l.split_once(':'))
            .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
            .collect();
        Ok((status, headers, raw[split + 4..].to_vec()))
    }
}

fn header(headers: &[(String, String)], name: &str) -> Option<String> {
    headers
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.clone())
}

impl Drop for LocalRegistry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pushes_and_serves_the_test_image() {
        if !crate::require_command("pushes_and_serves_the_test_image", "docker-registry")
            || !crate::require_path("pushes_and_serves_the_test_image", crate::image::BUSYBOX)
        {
            return;
        }
        let reg = LocalRegistry::start().unwrap();
        let img = TestImage::busybox().build().unwrap();
        let r = reg.push(&img, "nodekit/busybox", "1.0").unwrap();
        assert_eq!(r, format!("{}/nodekit/busybox:1.0", reg.host()));
        let (status, headers, _) = reg
            .request(
                "HEAD",
                "/v2/nodekit/busybox/manifests/1.0",
                &[("Accept", "application/vnd.oci.image.manifest.v1+json")],
                &[],
            )
            .unwrap();
        assert_eq!(status, 200);
        assert_eq!(
            header(&headers, "docker-content-digest").as_deref(),
            Some(img.digest())
        );
    }
}
