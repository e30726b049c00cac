//! Images for the native runtime: pulls from OCI/Docker registries (mirrors and plain-HTTP hosts
//! configured like containerd's `certs.d`), imports of OCI layouts, a content store by digest,
//! safely unpacked layers shared between images, and overlayfs root filesystems.
//!
//! On disk, under [`ImageStoreConfig::root`]:
//! - `blobs/sha256/<hex>`: manifests, indexes, configs and compressed layers, verified on write;
//! - `layers/sha256/<diff_id hex>`: each layer unpacked once (an overlayfs lower directory);
//! - `images/<config hex>.json`: one [`ImageRecord`] per image, and `refs.json`, the index of
//!   references (tags and digests) to image ids.
//!
//! Everything is found again by [`ImageStore::new`] after a restart.

mod backend;
mod content;
mod error;
mod hosts;
mod layout;
mod overlay;
mod pull;
mod unpack;

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use oci_spec::distribution::Reference;
use oci_spec::image::{ImageConfiguration, ImageManifest};
use serde::{Deserialize, Serialize};

pub use content::{BlobWriter, ContentStore, digest_hex, sha256_digest};
pub use error::ImageError;
pub use hosts::{RegistryHost, parse_hosts_toml, registry_hosts};
pub use overlay::{OverlayMount, mount_overlay, unmount_overlay};
pub use pull::registry_auth;
pub use unpack::{Compression, UnpackOptions, UnpackReport, check_layer_media_type, unpack_layer};

/// Configuration of an [`ImageStore`].
#[derive(Debug, Clone)]
pub struct ImageStoreConfig {
    /// Where blobs, unpacked layers and image metadata live.
    pub root: PathBuf,
    /// containerd's `config_path`: a `certs.d` directory of `<host>/hosts.toml` files.
    pub registry_config_dir: Option<PathBuf>,
    /// Registries (`host[:port]`) reached over plain HTTP without a `hosts.toml`.
    pub insecure_registries: Vec<String>,
    /// The OS to select in image indexes (`linux`).
    pub os: String,
    /// The architecture to select in image indexes (`amd64`, `arm64`...: the one we run on).
    pub architecture: String,
    /// How layers are unpacked (device nodes, ownership).
    pub unpack: UnpackOptions,
    /// Layers downloaded at once per pull.
    pub max_concurrent_downloads: usize,
}

impl Default for ImageStoreConfig {
    fn default() -> Self {
        Self {
            root: PathBuf::from("/var/lib/nodekit/images"),
            registry_config_dir: None,
            insecure_registries: vec![],
            os: "linux".into(),
            architecture: go_arch().into(),
            unpack: UnpackOptions::default(),
            max_concurrent_downloads: 3,
        }
    }
}

/// The GOARCH name of the architecture we run on (what image indexes use).
pub fn go_arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "x86" => "386",
        "arm" => "arm",
        "powerpc64" => "ppc64le",
        "s390x" => "s390x",
        "riscv64" => "riscv64",
        other => other,
    }
}

/// One layer of an image.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LayerRecord {
    /// The digest of the (compressed) blob.
    pub digest: String,
    /// Its media type.
    pub media_type: String,
    /// Its size in bytes.
    pub size: u64,
    /// The digest of the uncompressed tar: the name of the unpacked directory.
    pub diff_id: String,
}

/// An image in the store.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageRecord {
    /// The config digest (`sha256:...`): the image id.
    pub id: String,
    /// Tag references (`docker.io/library/busybox:1.36`).
    pub repo_tags: Vec<String>,
    /// Digest references (`docker.io/library/busybox@sha256:...`).
    pub repo_digests: Vec<String>,
    /// Manifest, config and compressed layers, in bytes.
    pub size: u64,
    /// The uid of the config's `User` when it is numeric.
    pub uid: Option<i64>,
    /// The user name of the config's `User` when it is not numeric.
    pub username: String,
    /// The digest of the image manifest (the platform's, below an index).
    pub manifest_digest: String,
    /// The layers, bottom first.
    pub layers: Vec<LayerRecord>,
}

impl ImageRecord {
    /// The CRI view of this image.
    pub fn to_cri(&self) -> node_core::cri::Image {
        node_core::cri::Image {
            id: self.id.clone(),
            repo_tags: self.repo_tags.clone(),
            repo_digests: self.repo_digests.clone(),
            size: self.size,
            uid: self.uid.map(|value| node_core::cri::Int64Value { value }),
            username: self.username.clone(),
            ..Default::default()
        }
    }
}

/// The uid or user name of an image config's `User` (`1000`, `1000:1000`, `nginx`, `nginx:web`).
pub fn user_of(user: &str) -> (Option<i64>, String) {
    let name = user.split(':').next().unwrap_or("");
    if name.is_empty() {
        return (None, String::new());
    }
    match name.parse::<i64>() {
        Ok(uid) => (Some(uid), String::new()),
        Err(_) => (None, name.to_string()),
    }
}

/// Parse and normalize an image reference the way containerd does (`busybox` ->
/// `docker.io/library/busybox:latest`).
pub fn parse_reference(reference: &str) -> Result<Reference, ImageError> {
    if reference.trim() != reference || reference.is_empty() {
        return Err(ImageError::InvalidReference {
            reference: reference.into(),
            message: "empty or surrounded by spaces".into(),
        });
    }
    reference
        .parse::<Reference>()
        .map_err(|e| ImageError::InvalidReference {
            reference: reference.into(),
            message: e.to_string(),
        })
}

/// Drop the digest references of repositories the image has no tag of any more (an image known
/// by digests only keeps them: they are its names).
fn prune_repo_digests(rec: &mut ImageRecord) {
    if rec.repo_tags.is_empty() {
        return;
    }
    let repos: Vec<&str> = rec
        .repo_tags
        .iter()
        .filter_map(|t| t.rsplit_once(':').map(|(r, _)| r))
        .collect();
    rec.repo_digests
        .retain(|d| d.split_once('@').is_some_and(|(r, _)| repos.contains(&r)));
}

#[derive(Debug, Default)]
struct State {
    images: BTreeMap<String, ImageRecord>,
}

impl State {
    fn find(&self, key: &str) -> Option<&ImageRecord> {
        if let Some(r) = self.images.get(key) {
            return Some(r);
        }
        if digest_hex(&format!("sha256:{key}")).is_ok()
            && let Some(r) = self.images.get(&format!("sha256:{key}"))
        {
            return Some(r);
        }
        let normalized = parse_reference(key).ok().map(|r| r.whole());
        self.images.values().find(|img| {
            img.repo_tags
                .iter()
                .chain(&img.repo_digests)
                .any(|t| t == key || Some(t) == normalized.as_ref())
        })
    }
}

/// The native image store: content by digest, unpacked layers, image records and references.
pub struct ImageStore {
    config: ImageStoreConfig,
    content: ContentStore,
    layers_dir: PathBuf,
    layers_tmp: PathBuf,
    images_dir: PathBuf,
    state: Mutex<State>,
    layer_locks: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
}

impl std::fmt::Debug for ImageStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ImageStore")
            .field("root", &self.config.root)
            .finish_non_exhaustive()
    }
}

fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), ImageError> {
    use std::io::Write;
    let dir = path.parent().unwrap_or(Path::new("."));
    let tmp = dir.join(content::temp_name(".write"));
    let res = (|| {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    if let Err(e) = res {
        let _ = std::fs::remove_file(&tmp);
        return Err(ImageError::io(path, e));
    }
    Ok(())
}

impl ImageStore {
    /// Open (or create) the store under `config.root` and load the images recorded there.
    pub fn new(config: ImageStoreConfig) -> Result<Self, ImageError> {
        let root = &config.root;
        let content = ContentStore::open(root)?;
        let layers_dir = root.join("layers/sha256");
        let layers_tmp = root.join("layers/tmp");
        let images_dir = root.join("images");
        for d in [&layers_dir, &images_dir] {
            std::fs::create_dir_all(d).map_err(|e| ImageError::io(d, e))?;
        }
        // Half-extracted layers of an interrupted process are garbage.
        if layers_tmp.exists() {
            std::fs::remove_dir_all(&layers_tmp).map_err(|e| ImageError::io(&layers_tmp, e))?;
        }
        std::fs::create_dir_all(&layers_tmp).map_err(|e| ImageError::io(&layers_tmp, e))?;
        let mut state = State::default();
        let rd = std::fs::read_dir(&images_dir).map_err(|e| ImageError::io(&images_dir, e))?;
        for e in rd.flatten() {
            let path = e.path();
            if path.extension().is_none_or(|x| x != "json") {
                continue;
            }
            let bytes = std::fs::read(&path).map_err(|e| ImageError::io(&path, e))?;
            match serde_json::from_slice::<ImageRecord>(&bytes) {
                Ok(rec) => {
                    state.images.insert(rec.id.clone(), rec);
                }
                Err(e) => {
                    tracing::warn!(file = %path.display(), error = %e, "ignoring an unreadable image record")
                }
            }
        }
        Ok(Self {
            config,
            content,
            layers_dir,
            layers_tmp,
            images_dir,
            state: Mutex::new(state),
            layer_locks: Mutex::new(HashMap::new()),
        })
    }

    /// The configuration the store was opened with.
    pub fn store_config(&self) -> &ImageStoreConfig {
        &self.config
    }

    /// The content store of blobs.
    pub fn content(&self) -> &ContentStore {
        &self.content
    }

    /// An image by tag reference, digest reference, image id (`sha256:<hex>`) or bare hex id.
    pub fn get(&self, reference_or_id: &str) -> Option<ImageRecord> {
        self.state
            .lock()
            .expect("image state lock")
            .find(reference_or_id)
            .cloned()
    }

    /// Every image in the store.
    pub fn list(&self) -> Vec<ImageRecord> {
        self.state
            .lock()
            .expect("image state lock")
            .images
            .values()
            .cloned()
            .collect()
    }

    /// The unpacked layer directories of an image, BOTTOM FIRST (reverse them for an overlay
    /// `lowerdir`).
    pub fn layer_dirs(&self, image_id: &str) -> Result<Vec<PathBuf>, ImageError> {
        let img = self.get(image_id).ok_or_else(|| ImageError::NotFound {
            reference: image_id.into(),
        })?;
        img.layers
            .iter()
            .map(|l| Ok(self.layers_dir.join(digest_hex(&l.diff_id)?)))
            .collect()
    }

    /// The OCI image configuration (env, cmd, entrypoint, user, working dir...).
    pub fn config(&self, image_id: &str) -> Result<ImageConfiguration, ImageError> {
        let img = self.get(image_id).ok_or_else(|| ImageError::NotFound {
            reference: image_id.into(),
        })?;
        let bytes = self.content.read(&img.id)?;
        serde_json::from_slice(&bytes).map_err(|e| ImageError::Malformed {
            what: format!("config {}", img.id),
            message: e.to_string(),
        })
    }

    /// Remove an image by reference or id. A name (tag or digest reference) that leaves the image
    /// at least one tag only drops that name (like `docker rmi`); otherwise, and by id, the image
    /// goes, then the blobs and unpacked layers no other image uses. (The CRI `RemoveImage` of
    /// [`ImageBackend`](node_core::ImageBackend) always removes the whole image.)
    pub fn remove(&self, reference_or_id: &str) -> Result<(), ImageError> {
        let mut state = self.state.lock().expect("image state lock");
        let img = state
            .find(reference_or_id)
            .cloned()
            .ok_or_else(|| ImageError::NotFound {
                reference: reference_or_id.into(),
            })?;
        let normalized = parse_reference(reference_or_id).ok().map(|r| r.whole());
        let is_name = |t: &String| t == reference_or_id || Some(t) == normalized.as_ref();
        let by_name = img.repo_tags.iter().chain(&img.repo_digests).any(is_name);
        if by_name {
            let mut kept = img.clone();
            kept.repo_tags.retain(|t| !is_name(t));
            kept.repo_digests.retain(|t| !is_name(t));
            prune_repo_digests(&mut kept);
            if !kept.repo_tags.is_empty() {
                self.save_record(&kept)?;
                state.images.insert(kept.id.clone(), kept);
                self.save_refs(&state)?;
                return Ok(());
            }
        }
        let path = self
            .images_dir
            .join(format!("{}.json", digest_hex(&img.id)?));
        match std::fs::remove_file(&path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                return Err(ImageError::io(&path, e));
            }
            _ => {}
        }
        state.images.remove(&img.id);
        self.save_refs(&state)?;
        self.collect_garbage(&state, &img)
    }

    fn collect_garbage(&self, state: &State, removed: &ImageRecord) -> Result<(), ImageError> {
        let used_diff: std::collections::HashSet<&str> = state
            .images
            .values()
            .flat_map(|i| i.layers.iter().map(|l| l.diff_id.as_str()))
            .collect();
        let mut used_blobs: std::collections::HashSet<String> = std::collections::HashSet::new();
        for i in state.images.values() {
            used_blobs.insert(i.id.clone());
            used_blobs.insert(i.manifest_digest.clone());
            used_blobs.extend(i.layers.iter().map(|l| l.digest.clone()));
            used_blobs.extend(
                i.repo_digests
                    .iter()
                    .filter_map(|d| d.rsplit_once('@').map(|(_, d)| d.to_string())),
            );
        }
        for l in &removed.layers {
            if !used_diff.contains(l.diff_id.as_str()) {
                let dir = self.layers_dir.join(digest_hex(&l.diff_id)?);
                if dir.exists() {
                    std::fs::remove_dir_all(&dir).map_err(|e| ImageError::io(&dir, e))?;
                }
            }
        }
        let mut blobs = vec![removed.id.clone(), removed.manifest_digest.clone()];
        blobs.extend(removed.layers.iter().map(|l| l.digest.clone()));
        blobs.extend(
            removed
                .repo_digests
                .iter()
                .filter_map(|d| d.rsplit_once('@').map(|(_, d)| d.to_string())),
        );
        for b in blobs {
            if !used_blobs.contains(&b) {
                self.content.remove(&b)?;
            }
        }
        Ok(())
    }

    fn save_record(&self, rec: &ImageRecord) -> Result<(), ImageError> {
        let path = self
            .images_dir
            .join(format!("{}.json", digest_hex(&rec.id)?));
        let bytes = serde_json::to_vec_pretty(rec).map_err(|e| ImageError::Malformed {
            what: path.display().to_string(),
            message: e.to_string(),
        })?;
        write_atomic(&path, &bytes)
    }

    fn save_refs(&self, state: &State) -> Result<(), ImageError> {
        let mut refs = BTreeMap::new();
        for img in state.images.values() {
            for r in img.repo_tags.iter().chain(&img.repo_digests) {
                refs.insert(r.clone(), img.id.clone());
            }
        }
        let bytes = serde_json::to_vec_pretty(&refs).expect("a map of strings serializes");
        write_atomic(&self.config.root.join("refs.json"), &bytes)
    }

    /// Record an image whose blobs are in the content store and whose layers are unpacked; the
    /// names it gets are taken from any other image that had them.
    fn commit(&self, mut rec: ImageRecord) -> Result<ImageRecord, ImageError> {
        let mut state = self.state.lock().expect("image state lock");
        if let Some(old) = state.images.get(&rec.id) {
            for t in &old.repo_tags {
                if !rec.repo_tags.contains(t) {
                    rec.repo_tags.push(t.clone());
                }
            }
            for d in &old.repo_digests {
                if !rec.repo_digests.contains(d) {
                    rec.repo_digests.push(d.clone());
                }
            }
        }
        if state.images.get(&rec.id) == Some(&rec) {
            return Ok(rec); // nothing new (a re-pull of a present image)
        }
        let ids: Vec<String> = state
            .images
            .keys()
            .filter(|id| **id != rec.id)
            .cloned()
            .collect();
        for id in ids {
            let other = state.images.get_mut(&id).expect("listed id");
            let before = (other.repo_tags.len(), other.repo_digests.len());
            other.repo_tags.retain(|t| !rec.repo_tags.contains(t));
            other.repo_digests.retain(|t| !rec.repo_digests.contains(t));
            if before != (other.repo_tags.len(), other.repo_digests.len()) {
                prune_repo_digests(other);
                let other = other.clone();
                self.save_record(&other)?;
            }
        }
        self.save_record(&rec)?;
        state.images.insert(rec.id.clone(), rec.clone());
        self.save_refs(&state)?;
        Ok(rec)
    }

    /// Unpack the layer blob `layer` (already in the content store) unless a layer with its
    /// diff_id is unpacked already. Concurrent calls for the same diff_id extract it once.
    async fn ensure_layer(&self, layer: &LayerRecord) -> Result<(), ImageError> {
        let hex = digest_hex(&layer.diff_id)?.to_string();
        let dir = self.layers_dir.join(&hex);
        if dir.is_dir() {
            return Ok(());
        }
        let lock = {
            let mut locks = self.layer_locks.lock().expect("layer locks");
            locks.entry(hex.clone()).or_default().clone()
        };
        let _guard = lock.lock().await;
        let res = self.unpack_layer_locked(layer, &hex, &dir).await;
        self.layer_locks.lock().expect("layer locks").remove(&hex);
        res
    }

    async fn unpack_layer_locked(
        &self,
        layer: &LayerRecord,
        hex: &str,
        dir: &Path,
    ) -> Result<(), ImageError> {
        if dir.is_dir() {
            return Ok(());
        }
        check_layer_media_type(&layer.media_type, &layer.digest)?;
        let blob = self.content.path(&layer.digest)?;
        let tmp = self.layers_tmp.join(content::temp_name(hex));
        let opts = self.config.unpack.clone();
        let name = layer.digest.clone();
        let expected = layer.diff_id.clone();
        let target = dir.to_path_buf();
        tokio::task::spawn_blocking(move || {
            let file = std::fs::File::open(&blob).map_err(|e| ImageError::io(&blob, e))?;
            let report = unpack_layer(file, &name, &tmp, &opts)?;
            let cleanup = |e: ImageError| {
                let _ = std::fs::remove_dir_all(&tmp);
                e
            };
            if report.diff_id != expected {
                return Err(cleanup(ImageError::DigestMismatch {
                    what: format!("layer {name} diff_id"),
                    expected,
                    actual: report.diff_id,
                }));
            }
            match std::fs::rename(&tmp, &target) {
                Ok(()) => Ok(()),
                // Another process unpacked it meanwhile: keep theirs.
                Err(_) if target.is_dir() => {
                    let _ = std::fs::remove_dir_all(&tmp);
                    Ok(())
                }
                Err(e) => Err(cleanup(ImageError::io(&target, e))),
            }
        })
        .await
        .map_err(|e| ImageError::io(dir, std::io::Error::other(e.to_string())))?
    }

    /// Turn a manifest and config already in the content store (layers too) into a recorded
    /// image: layers unpacked, diff_ids checked against the config.
    async fn finish_image(
        &self,
        manifest_digest: &str,
        manifest: &ImageManifest,
        repo_tags: Vec<String>,
        repo_digests: Vec<String>,
    ) -> Result<ImageRecord, ImageError> {
        let config_digest = manifest.config().digest().to_string();
        let config_bytes = self.content.read(&config_digest)?;
        let config: ImageConfiguration =
            serde_json::from_slice(&config_bytes).map_err(|e| ImageError::Malformed {
                what: format!("config {config_digest}"),
                message: e.to_string(),
            })?;
        let diff_ids = config.rootfs().diff_ids();
        if diff_ids.len() != manifest.layers().len() {
            return Err(ImageError::Malformed {
                what: format!("image {manifest_digest}"),
                message: format!(
                    "{} layers in the manifest but {} diff_ids in the config",
                    manifest.layers().len(),
                    diff_ids.len()
                ),
            });
        }
        let mut layers = vec![];
        for (desc, diff_id) in manifest.layers().iter().zip(diff_ids) {
            digest_hex(diff_id)?;
            layers.push(LayerRecord {
                digest: desc.digest().to_string(),
                media_type: desc.media_type().to_string(),
                size: desc.size(),
                diff_id: diff_id.clone(),
            });
        }
        for l in &layers {
            self.ensure_layer(l).await?;
        }
        let manifest_size = self
            .content
            .path(manifest_digest)
            .ok()
            .and_then(|p| std::fs::metadata(p).ok())
            .map(|m| m.len())
            .unwrap_or(0);
        let (uid, username) = user_of(
            config
                .config()
                .as_ref()
                .and_then(|c| c.user().as_deref())
                .unwrap_or(""),
        );
        let rec = ImageRecord {
            id: config_digest,
            repo_tags,
            repo_digests,
            size: manifest_size
                + config_bytes.len() as u64
                + layers.iter().map(|l| l.size).sum::<u64>(),
            uid,
            username,
            manifest_digest: manifest_digest.to_string(),
            layers,
        };
        self.commit(rec)
    }

    /// Bytes and inodes used by the store (blobs, layers, metadata).
    pub fn usage(&self) -> (u64, u64) {
        fn walk(p: &Path, bytes: &mut u64, inodes: &mut u64) {
            let Ok(rd) = std::fs::read_dir(p) else { return };
            for e in rd.flatten() {
                let Ok(md) = e.metadata() else { continue };
                *inodes += 1;
                if md.is_dir() {
                    walk(&e.path(), bytes, inodes);
                } else {
                    *bytes += std::os::unix::fs::MetadataExt::blocks(&md) * 512;
                }
            }
        }
        let (mut bytes, mut inodes) = (0, 0);
        walk(&self.config.root, &mut bytes, &mut inodes);
        (bytes, inodes)
    }
}
