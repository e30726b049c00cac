//! `ImageService` over a [`node_core::ImageBackend`]: checks, delegation, CRI semantics
//! (absent images are no error, the sandbox image is pinned, the list filter is applied).

use k8s_cri::v1::image_service_server::ImageService;
use node_core::cri;
use tonic::{Request, Response, Status};

use super::status::{invalid, to_status};
use super::{CriApi, filter, guarded, rpc, strict};

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
        rpc!(M = "ListImages", r, |req| {
            let f = req.filter;
            let items = strict(M, self.0.images.list_images(f.clone()).await)?;
            let mut images = filter::images(items, f.as_ref());
            images.iter_mut().for_each(|i| self.pin(i));
            Ok(cri::ListImagesResponse { images })
        })
    }

    async fn image_status(
        &self,
        r: Request<cri::ImageStatusRequest>,
    ) -> Answer<cri::ImageStatusResponse> {
        rpc!(M = "ImageStatus", r, |req| {
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
    }

    async fn pull_image(
        &self,
        r: Request<cri::PullImageRequest>,
    ) -> Answer<cri::PullImageResponse> {
        rpc!(M = "PullImage", r, |req| {
            let image = need_image(M, req.image)?;
            let reference = image.image.clone();
            let pulled = self
                .0
                .images
                .pull_image(image, req.auth, req.sandbox_config);
            let image_ref = strict(M, pulled.await)?;
            if image_ref.is_empty() {
                return Err(Status::internal(format!(
                    "{M}: the image backend returned no reference for {reference:?}"
                )));
            }
            Ok(cri::PullImageResponse { image_ref })
        })
    }

    async fn remove_image(
        &self,
        r: Request<cri::RemoveImageRequest>,
    ) -> Answer<cri::RemoveImageResponse> {
        rpc!(M = "RemoveImage", r, |req| {
            let image = need_image(M, req.image)?;
            match self.0.images.remove_image(image).await {
                Ok(()) => Ok(cri::RemoveImageResponse {}),
                Err(e) if e.is_not_found() => Ok(cri::RemoveImageResponse {}),
                Err(e) => Err(to_status(M, &e)),
            }
        })
    }

    async fn image_fs_info(
        &self,
        r: Request<cri::ImageFsInfoRequest>,
    ) -> Answer<cri::ImageFsInfoResponse> {
        rpc!(M = "ImageFsInfo", r, |_| strict(
            M,
            self.0.images.image_fs_info().await
        ))
    }
}
