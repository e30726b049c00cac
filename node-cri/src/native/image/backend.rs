//! The CRI `ImageService` of the native runtime: [`ImageStore`] as a node-core `ImageBackend`.

use async_trait::async_trait;
use node_core::{ImageBackend, RuntimeError, cri};

use super::ImageStore;

#[async_trait]
impl ImageBackend for ImageStore {
    async fn pull_image(
        &self,
        image: cri::ImageSpec,
        auth: Option<cri::AuthConfig>,
        _sandbox_config: Option<cri::PodSandboxConfig>,
    ) -> Result<String, RuntimeError> {
        let rec = self.pull(&image.image, auth.as_ref()).await?;
        Ok(rec.id)
    }

    async fn image_status(
        &self,
        image: cri::ImageSpec,
        verbose: bool,
    ) -> Result<cri::ImageStatusResponse, RuntimeError> {
        let Some(rec) = self.get(&image.image) else {
            return Ok(cri::ImageStatusResponse {
                image: None,
                info: Default::default(),
            });
        };
        let mut info = std::collections::HashMap::new();
        if verbose {
            let layers = self.layer_dirs(&rec.id)?;
            info.insert(
                "info".to_string(),
                serde_json::json!({
                    "manifestDigest": rec.manifest_digest,
                    "layers": rec.layers,
                    "layerDirs": layers,
                })
                .to_string(),
            );
        }
        Ok(cri::ImageStatusResponse {
            image: Some(rec.to_cri()),
            info,
        })
    }

    async fn list_images(
        &self,
        filter: Option<cri::ImageFilter>,
    ) -> Result<Vec<cri::Image>, RuntimeError> {
        let wanted = filter
            .and_then(|f| f.image)
            .map(|s| s.image)
            .filter(|s| !s.is_empty());
        Ok(match wanted {
            Some(r) => self.get(&r).map(|rec| rec.to_cri()).into_iter().collect(),
            None => self.list().iter().map(|r| r.to_cri()).collect(),
        })
    }

    async fn remove_image(&self, image: cri::ImageSpec) -> Result<(), RuntimeError> {
        // The CRI removes the image with all its names (as containerd does), whatever name is given.
        let Some(rec) = self.get(&image.image) else {
            return Ok(());
        };
        match self.remove(&rec.id) {
            Err(e) if e.is_not_found() => Ok(()),
            other => Ok(other?),
        }
    }

    async fn image_fs_info(&self) -> Result<cri::ImageFsInfoResponse, RuntimeError> {
        let (bytes, inodes) = self.usage();
        let timestamp = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as i64)
            .unwrap_or(0);
        let usage = cri::FilesystemUsage {
            timestamp,
            fs_id: Some(cri::FilesystemIdentifier {
                mountpoint: self.store_config().root.display().to_string(),
            }),
            used_bytes: Some(cri::UInt64Value { value: bytes }),
            inodes_used: Some(cri::UInt64Value { value: inodes }),
        };
        Ok(cri::ImageFsInfoResponse {
            image_filesystems: vec![usage],
            container_filesystems: vec![],
        })
    }
}
