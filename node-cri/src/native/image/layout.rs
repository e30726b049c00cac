//! Import of an OCI image layout (a directory or a tar archive of one): blobs copied into the
//! content store with their digests verified, the platform's manifest chosen, layers unpacked.

use std::io::Read;
use std::path::{Path, PathBuf};

use oci_spec::image::{ImageIndex, ImageManifest};

use super::{ImageError, ImageRecord, ImageStore, digest_hex, parse_reference, sha256_digest};

const REF_NAME: &str = "org.opencontainers.image.ref.name";
const CONTAINERD_NAME: &str = "io.containerd.image.name";

enum Source {
    Dir(PathBuf),
    /// The blobs of the archive are in the content store already.
    Tar,
}

impl ImageStore {
    /// Import an image from an OCI layout directory or a tar archive of one. `tag` names it (a
    /// full reference like `registry.local/app:1`); without it, the index's
    /// `io.containerd.image.name` or a full-reference `org.opencontainers.image.ref.name`
    /// annotation is used, else the image is known by its id only.
    pub async fn import_oci_layout(
        &self,
        dir_or_tar: &Path,
        tag: Option<&str>,
    ) -> Result<ImageRecord, ImageError> {
        let tag_ref = tag.map(parse_reference).transpose()?;
        let path = dir_or_tar.to_path_buf();
        let (index_bytes, source) = if path.is_dir() {
            let index = path.join("index.json");
            (
                std::fs::read(&index).map_err(|e| ImageError::io(&index, e))?,
                Source::Dir(path.clone()),
            )
        } else {
            let content = self.content.clone();
            let p = path.clone();
            let index = tokio::task::spawn_blocking(move || ingest_tar(&content, &p))
                .await
                .map_err(|e| ImageError::io(&path, std::io::Error::other(e.to_string())))??;
            (index, Source::Tar)
        };
        let what = format!("{}/index.json", path.display());
        let index: ImageIndex =
            serde_json::from_slice(&index_bytes).map_err(|e| ImageError::Malformed {
                what: what.clone(),
                message: e.to_string(),
            })?;
        let entry = match index.manifests().as_slice() {
            [] => {
                return Err(ImageError::Malformed {
                    what,
                    message: "no manifests".into(),
                });
            }
            [one] => one.clone(),
            many => {
                // Several: the one named like the tag asked for, else the one for our platform.
                let by_name = tag_ref.as_ref().and_then(|t| {
                    many.iter().find(|m| {
                        m.annotations()
                            .as_ref()
                            .and_then(|a| a.get(REF_NAME))
                            .is_some_and(|n| Some(n.as_str()) == t.tag() || *n == t.whole())
                    })
                });
                match by_name {
                    Some(m) => m.clone(),
                    None => {
                        let digest = self.select_platform(&path.display().to_string(), &index)?;
                        many.iter()
                            .find(|m| m.digest().to_string() == digest)
                            .expect("selected from this list")
                            .clone()
                    }
                }
            }
        };
        let top_digest = entry.digest().to_string();
        let mut manifest_bytes = self.layout_blob(&source, &top_digest)?;
        let mut manifest_digest = top_digest.clone();
        let v: serde_json::Value =
            serde_json::from_slice(&manifest_bytes).map_err(|e| ImageError::Malformed {
                what: format!("manifest {top_digest} in {}", path.display()),
                message: e.to_string(),
            })?;
        if v.get("manifests").is_some() && v.get("layers").is_none() {
            let nested: ImageIndex =
                serde_json::from_slice(&manifest_bytes).map_err(|e| ImageError::Malformed {
                    what: format!("index {top_digest} in {}", path.display()),
                    message: e.to_string(),
                })?;
            manifest_digest = self.select_platform(&path.display().to_string(), &nested)?;
            manifest_bytes = self.layout_blob(&source, &manifest_digest)?;
        }
        let manifest: ImageManifest =
            serde_json::from_slice(&manifest_bytes).map_err(|e| ImageError::Malformed {
                what: format!("manifest {manifest_digest} in {}", path.display()),
                message: e.to_string(),
            })?;
        self.layout_blob(&source, manifest.config().digest().as_ref())?;
        for l in manifest.layers() {
            super::check_layer_media_type(l.media_type().as_ref(), l.digest().as_ref())?;
            if let Source::Dir(dir) = &source {
                let d = l.digest().to_string();
                let src = dir.join("blobs/sha256").join(digest_hex(&d)?);
                let content = self.content.clone();
                tokio::task::spawn_blocking(move || {
                    let mut f = std::fs::File::open(&src).map_err(|e| ImageError::io(&src, e))?;
                    content.write_from(&d, &mut f)
                })
                .await
                .map_err(|e| ImageError::io(dir, std::io::Error::other(e.to_string())))??;
            } else if !self.content.contains(l.digest().as_ref()) {
                return Err(ImageError::Malformed {
                    what: path.display().to_string(),
                    message: format!("layer blob {} is missing", l.digest()),
                });
            }
        }

        let name = tag_ref.or_else(|| {
            let ann = entry.annotations().as_ref()?;
            let n = ann
                .get(CONTAINERD_NAME)
                .or_else(|| ann.get(REF_NAME).filter(|n| n.contains('/')))?;
            parse_reference(n).ok()
        });
        let (tags, digests) = match name {
            Some(r) => {
                let repo = format!("{}/{}", r.registry(), r.repository());
                (
                    r.tag().map(|t| format!("{repo}:{t}")).into_iter().collect(),
                    vec![format!("{repo}@{top_digest}")],
                )
            }
            None => (vec![], vec![]),
        };
        self.finish_image(&manifest_digest, &manifest, tags, digests)
            .await
    }

    /// A small blob (manifest, index, config) of the layout, verified and stored; returned.
    fn layout_blob(&self, source: &Source, digest: &str) -> Result<Vec<u8>, ImageError> {
        if let Source::Dir(dir) = source {
            let path = dir.join("blobs/sha256").join(digest_hex(digest)?);
            let bytes = std::fs::read(&path).map_err(|e| ImageError::io(&path, e))?;
            let actual = sha256_digest(&bytes);
            if actual != digest {
                return Err(ImageError::DigestMismatch {
                    what: format!("blob {}", path.display()),
                    expected: digest.into(),
                    actual,
                });
            }
            self.content.write(digest, &bytes)?;
            return Ok(bytes);
        }
        self.content.read(digest)
    }
}

/// Copy every `blobs/sha256/<hex>` of an OCI layout archive into the content store (verified) and
/// return its `index.json`.
fn ingest_tar(content: &super::ContentStore, path: &Path) -> Result<Vec<u8>, ImageError> {
    let file = std::fs::File::open(path).map_err(|e| ImageError::io(path, e))?;
    let mut ar = tar::Archive::new(std::io::BufReader::new(file));
    let bad = |e: std::io::Error| ImageError::io(path, e);
    let mut index = None;
    for entry in ar.entries().map_err(bad)? {
        let mut entry = entry.map_err(bad)?;
        if entry.header().entry_type() != tar::EntryType::Regular {
            continue;
        }
        let name = String::from_utf8_lossy(&entry.path_bytes())
            .trim_start_matches("./")
            .to_string();
        if name == "index.json" {
            let mut buf = vec![];
            entry.read_to_end(&mut buf).map_err(bad)?;
            index = Some(buf);
        } else if let Some(hex) = name.strip_prefix("blobs/sha256/") {
            let digest = format!("sha256:{hex}");
            if digest_hex(&digest).is_ok() {
                content.write_from(&digest, &mut entry)?;
            }
        }
    }
    index.ok_or_else(|| ImageError::Malformed {
        what: path.display().to_string(),
        message: "no index.json: not an OCI layout archive".into(),
    })
}
