//! `ImageService` over a [`node_core::ImageBackend`]: checks, delegation, CRI semantics
//! (absent images are no error, the sandbox image is pinned, the list filter is applied).

use k8s_cri::v1::image_service_server::ImageService;
use node_core::cri;
use tonic::{Request, Response, Status};

use super::status::{invalid, to_status};
use super::{CriApi, filter, guarded};

type Answer<T> = Result<Response<T>, Status>;

/// The image spec of a request: present, with a non-empty reference.
fn need_image(method: &str, image: Option<cri::ImageSpec>) -> Result<cri::ImageSpec, Status> {
    let image = image.ok_or_else(|| invalid(method, "image is missing"))?;
    if image.image.trim().is_empty() {
        return Err(invalid(method, "image.image is empty"));
    }
    Ok(image)
}

impl CriApi {
    /// Mark the sandbox image pinned (the kubelet's image GC leaves pinned images alone).
    fn pin(&self, image: &mut cri::Image) {
        let sandbox = &self.0.config.sandbox_image;
        if !sandbox.is_empty() && filter::image_matches(image, sandbox) {
            image.pinned = true;
        }
    }
}

#[tonic::async_trait]
impl ImageService for CriApi {
    async fn list_images(
        &self,
        r: Request<cri::ListImagesRequest>,
    ) -> Answer<cri::ListImagesResponse> {
        const M: &str = "ListImages";
        let f = r.into_inner().filter;
        guarded(M, async {
            let items = self
                .0
                .images
                .list_images(f.clone())
                .await
                .map_err(|e| to_status(M, &e))?;
            let mut images = filter::images(items, f.as_ref());
            images.iter_mut().for_each(|i| self.pin(i));
            Ok(cri::ListImagesResponse { images })
        })
        .await
    }

    async fn image_status(
        &self,
        r: Request<cri::ImageStatusRequest>,
    ) -> Answer<cri::ImageStatusResponse> {
        const M: &str = "ImageStatus";
        let req = r.into_inner();
        guarded(M, async {
            let image = need_image(M, req.image)?;
            let mut resp = match self.0.images.image_status(image, req.verbose).await {
                Ok(resp) => resp,
                // the CRI: an absent image is an answer without an image, not an error
                Err(e) if e.is_not_found() => cri::ImageStatusResponse::default(),
                Err(e) => return Err(to_status(M, &e)),
            };
            if let Some(i) = resp.image.as_mut() {
                self.pin(i);
            }
            if !req.verbose {
                resp.info.clear();
            }
            Ok(resp)
        })
        .await
    }

    async fn pull_image(
        &self,
        r: Request<cri::PullImageRequest>,
    ) -> Answer<cri::PullImageResponse> {
        const M: &str = "PullImage";
        let req = r.into_inner();
        guarded(M, async {
            let image = need_image(M, req.image)?;
            let reference = image.image.clone();
            let image_ref = self
                .0
                .images
                .pull_image(image, req.auth, req.sandbox_config)
                .await
                .map_err(|e| to_status(M, &e))?;
            if image_ref.is_empty() {
                return Err(Status::internal(format!(
                    "{M}: the image backend returned no reference for {reference:?}"
                )));
            }
            Ok(cri::PullImageResponse { image_ref })
        })
        .await
    }

    async fn remove_image(
        &self,
        r: Request<cri::RemoveImageRequest>,
    ) -> Answer<cri::RemoveImageResponse> {
        const M: &str = "RemoveImage";
        let req = r.into_inner();
        guarded(M, async {
            let image = need_image(M, req.image)?;
            match self.0.images.remove_image(image).await {
                Ok(()) => Ok(cri::RemoveImageResponse {}),
                Err(e) if e.is_not_found() => Ok(cri::RemoveImageResponse {}),
                Err(e) => Err(to_status(M, &e)),
            }
        })
        .await
    }

    async fn image_fs_info(
        &self,
        _r: Request<cri::ImageFsInfoRequest>,
    ) -> Answer<cri::ImageFsInfoResponse> {
        const M: &str = "ImageFsInfo";
        guarded(M, async {
            self.0
                .images
                .image_fs_info()
                .await
                .map_err(|e| to_status(M, &e))
        })
        .await
    }
}
