//! The content store: blobs (manifests, configs, compressed layers) kept by digest under
//! `blobs/sha256/<hex>`, written to a temporary file, verified against their digest, then renamed
//! into place, so a blob present under its name always has the content that name promises.

use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};

use sha2::{Digest, Sha256};
use tokio::io::AsyncWrite;

use super::ImageError;

static TEMP_COUNTER: AtomicU64 = AtomicU64::new(0);

/// A unique temporary name for this process (`<prefix>.<pid>.<n>.tmp`).
pub(crate) fn temp_name(prefix: &str) -> String {
    let n = TEMP_COUNTER.fetch_add(1, Ordering::Relaxed);
    format!("{prefix}.{}.{n}.tmp", std::process::id())
}

/// `sha256:<hex>` of some bytes.
pub fn sha256_digest(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(bytes)))
}

/// The hex part of a `sha256:<64 lowercase hex>` digest; anything else is refused (it becomes a
/// file name, so it must never hold a `/` or `..`).
pub fn digest_hex(digest: &str) -> Result<&str, ImageError> {
    let hex = digest
        .strip_prefix("sha256:")
        .ok_or_else(|| ImageError::InvalidDigest {
            digest: digest.to_string(),
        })?;
    if hex.len() != 64
        || !hex
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    {
        return Err(ImageError::InvalidDigest {
            digest: digest.to_string(),
        });
    }
    Ok(hex)
}

/// Blobs by digest on disk.
#[derive(Debug, Clone)]
pub struct ContentStore {
    blobs: PathBuf,
    ingest: PathBuf,
}

impl ContentStore {
    /// A content store under `root` (`root/blobs/sha256`, `root/ingest`), created if missing.
    /// Leftover temporary files of an interrupted write are removed.
    pub fn open(root: &Path) -> Result<Self, ImageError> {
        let blobs = root.join("blobs/sha256");
        let ingest = root.join("ingest");
        for d in [&blobs, &ingest] {
            std::fs::create_dir_all(d).map_err(|e| ImageError::io(d, e))?;
        }
        if let Ok(rd) = std::fs::read_dir(&ingest) {
            for e in rd.flatten() {
                let _ = std::fs::remove_file(e.path());
            }
        }
        Ok(Self { blobs, ingest })
    }

    /// Where the blob of `digest` is (or would be).
    pub fn path(&self, digest: &str) -> Result<PathBuf, ImageError> {
        Ok(self.blobs.join(digest_hex(digest)?))
    }

    /// Whether the blob is present.
    pub fn contains(&self, digest: &str) -> bool {
        self.path(digest).map(|p| p.is_file()).unwrap_or(false)
    }

    /// The blob's bytes, verified against its digest (for small blobs: manifests and configs).
    pub fn read(&self, digest: &str) -> Result<Vec<u8>, ImageError> {
        let path = self.path(digest)?;
        let bytes = std::fs::read(&path).map_err(|e| ImageError::io(&path, e))?;
        let actual = sha256_digest(&bytes);
        if actual != digest {
            return Err(ImageError::DigestMismatch {
                what: format!("stored blob {}", path.display()),
                expected: digest.into(),
                actual,
            });
        }
        Ok(bytes)
    }

    /// Store bytes under their expected digest (refused when they do not hash to it).
    pub fn write(&self, expected: &str, bytes: &[u8]) -> Result<PathBuf, ImageError> {
        let path = self.path(expected)?;
        let actual = sha256_digest(bytes);
        if actual != expected {
            return Err(ImageError::DigestMismatch {
                what: format!("blob {expected}"),
                expected: expected.into(),
                actual,
            });
        }
        if path.is_file() {
            return Ok(path);
        }
        let tmp = self.ingest.join(temp_name(digest_hex(expected)?));
        let res = (|| {
            let mut f = std::fs::File::create(&tmp)?;
            f.write_all(bytes)?;
            f.sync_all()?;
            std::fs::rename(&tmp, &path)
        })();
        if let Err(e) = res {
            let _ = std::fs::remove_file(&tmp);
            return Err(ImageError::io(&path, e));
        }
        Ok(path)
    }

    /// Copy a file into the store under its expected digest (verified while copying).
    pub fn write_from(
        &self,
        expected: &str,
        reader: &mut dyn io::Read,
    ) -> Result<PathBuf, ImageError> {
        let path = self.path(expected)?;
        if path.is_file() {
            return Ok(path);
        }
        let tmp = self.ingest.join(temp_name(digest_hex(expected)?));
        let res = (|| {
            let mut f = std::fs::File::create(&tmp)?;
            let mut hasher = Sha256::new();
            let mut buf = vec![0u8; 256 * 1024];
            loop {
                let n = reader.read(&mut buf)?;
                if n == 0 {
                    break;
                }
                hasher.update(&buf[..n]);
                f.write_all(&buf[..n])?;
            }
            f.sync_all()?;
            Ok::<_, io::Error>(format!("sha256:{}", hex::encode(hasher.finalize())))
        })();
        match res {
            Ok(actual) if actual == expected => {
                std::fs::rename(&tmp, &path).map_err(|e| {
                    let _ = std::fs::remove_file(&tmp);
                    ImageError::io(&path, e)
                })?;
                Ok(path)
            }
            Ok(actual) => {
                let _ = std::fs::remove_file(&tmp);
                Err(ImageError::DigestMismatch {
                    what: format!("blob {expected}"),
                    expected: expected.into(),
                    actual,
                })
            }
            Err(e) => {
                let _ = std::fs::remove_file(&tmp);
                Err(ImageError::io(&tmp, e))
            }
        }
    }

    /// An async writer of a blob expected to hash to `expected`; nothing is visible under the
    /// digest until [`BlobWriter::commit`] verified it.
    pub async fn writer(&self, expected: &str) -> Result<BlobWriter, ImageError> {
        let path = self.path(expected)?;
        let tmp = self.ingest.join(temp_name(digest_hex(expected)?));
        let file = tokio::fs::File::create(&tmp)
            .await
            .map_err(|e| ImageError::io(&tmp, e))?;
        Ok(BlobWriter {
            file,
            hasher: Sha256::new(),
            tmp,
            path,
            expected: expected.to_string(),
            written: 0,
        })
    }

    /// Remove a blob (absent is fine).
    pub fn remove(&self, digest: &str) -> Result<(), ImageError> {
        let path = self.path(digest)?;
        match std::fs::remove_file(&path) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(ImageError::io(&path, e)),
            _ => Ok(()),
        }
    }

    /// The digests of every blob present.
    pub fn list(&self) -> Vec<String> {
        let Ok(rd) = std::fs::read_dir(&self.blobs) else {
            return vec![];
        };
        rd.flatten()
            .filter_map(|e| e.file_name().to_str().map(|h| format!("sha256:{h}")))
            .filter(|d| digest_hex(d).is_ok())
            .collect()
    }
}

/// An in-progress blob write: hashes what it writes; [`commit`](Self::commit) verifies the digest
/// and renames the blob into place, dropping it uncommitted removes the temporary file.
#[derive(Debug)]
pub struct BlobWriter {
    file: tokio::fs::File,
    hasher: Sha256,
    tmp: PathBuf,
    path: PathBuf,
    expected: String,
    written: u64,
}

impl BlobWriter {
    /// How many bytes were written so far.
    pub fn written(&self) -> u64 {
        self.written
    }

    /// Verify the digest of what was written and move the blob into place.
    pub async fn commit(mut self) -> Result<PathBuf, ImageError> {
        use tokio::io::AsyncWriteExt;
        self.file
            .flush()
            .await
            .map_err(|e| ImageError::io(&self.tmp, e))?;
        self.file
            .sync_all()
            .await
            .map_err(|e| ImageError::io(&self.tmp, e))?;
        let actual = format!(
            "sha256:{}",
            hex::encode(std::mem::take(&mut self.hasher).finalize())
        );
        if actual != self.expected {
            return Err(ImageError::DigestMismatch {
                what: format!("blob {}", self.expected),
                expected: self.expected.clone(),
                actual,
            });
        }
        tokio::fs::rename(&self.tmp, &self.path)
            .await
            .map_err(|e| ImageError::io(&self.path, e))?;
        Ok(self.path.clone())
    }
}

impl Drop for BlobWriter {
    fn drop(&mut self) {
        // After a successful commit the temporary file is gone and this fails harmlessly.
        let _ = std::fs::remove_file(&self.tmp);
    }
}

impl AsyncWrite for BlobWriter {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        match Pin::new(&mut this.file).poll_write(cx, buf) {
            Poll::Ready(Ok(n)) => {
                this.hasher.update(&buf[..n]);
                this.written += n as u64;
                Poll::Ready(Ok(n))
            }
            other => other,
        }
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.file).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.file).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digests_are_validated_before_becoming_file_names() {
        assert!(digest_hex("sha256:../../etc/passwd").is_err());
        assert!(digest_hex("sha512:abc").is_err());
        assert!(digest_hex(&format!("sha256:{}", "A".repeat(64))).is_err());
        assert!(digest_hex(&sha256_digest(b"x")).is_ok());
    }
}
