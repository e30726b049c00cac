//! Pulls from OCI and Docker registries with oci-client: hosts from `certs.d` tried in order,
//! image indexes resolved to our platform, every manifest and blob verified against its digest
//! before it is stored, layers already unpacked never downloaded again.

use std::time::Duration;

use base64::Engine;
use futures::{StreamExt, TryStreamExt};
use node_core::cri::AuthConfig;
use oci_client::client::{Certificate, CertificateEncoding, ClientConfig, ClientProtocol};
use oci_client::errors::{OciDistributionError, OciErrorCode};
use oci_client::manifest::OciDescriptor;
use oci_client::secrets::RegistryAuth;
use oci_client::{Client, Reference};
use oci_spec::image::{ImageIndex, ImageManifest};

use super::{
    ImageError, ImageRecord, ImageStore, RegistryHost, digest_hex, parse_reference, registry_hosts,
    sha256_digest,
};

const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
const DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
const ACCEPTED: &[&str] = &[OCI_MANIFEST, OCI_INDEX, DOCKER_MANIFEST, DOCKER_LIST];

/// The oci-client credentials of a CRI `AuthConfig`: a registry token (bearer), a
/// username/password, or `auth` (base64 `user:password`).
pub fn registry_auth(
    reference: &str,
    auth: Option<&AuthConfig>,
) -> Result<RegistryAuth, ImageError> {
    let Some(a) = auth else {
        return Ok(RegistryAuth::Anonymous);
    };
    let bad = |message: String| ImageError::Auth {
        reference: reference.into(),
        message,
    };
    if !a.registry_token.is_empty() {
        return Ok(RegistryAuth::Bearer(a.registry_token.clone()));
    }
    if !a.username.is_empty() || !a.password.is_empty() {
        return Ok(RegistryAuth::Basic(a.username.clone(), a.password.clone()));
    }
    if !a.auth.is_empty() {
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(a.auth.trim())
            .map_err(|e| bad(format!("field `auth` is not base64: {e}")))?;
        let decoded = String::from_utf8(decoded)
            .map_err(|_| bad("field `auth` does not decode to UTF-8".into()))?;
        let (user, pass) = decoded
            .split_once(':')
            .ok_or_else(|| bad("field `auth` does not decode to `user:password`".into()))?;
        return Ok(RegistryAuth::Basic(user.into(), pass.into()));
    }
    if !a.identity_token.is_empty() {
        return Err(bad("field `identity_token` (an OAuth2 refresh token) is not supported; use `registry_token`".into()));
    }
    Ok(RegistryAuth::Anonymous)
}

fn client_for(h: &RegistryHost) -> Result<Client, ImageError> {
    let mut extra = vec![];
    for ca in &h.ca {
        let data = std::fs::read(ca).map_err(|e| ImageError::io(ca, e))?;
        extra.push(Certificate {
            encoding: CertificateEncoding::Pem,
            data,
        });
    }
    Ok(Client::new(ClientConfig {
        protocol: if h.scheme == "http" {
            ClientProtocol::Http
        } else {
            ClientProtocol::Https
        },
        accept_invalid_certificates: h.skip_verify,
        extra_root_certificates: extra,
        platform_resolver: None,
        connect_timeout: Some(Duration::from_secs(15)),
        read_timeout: Some(Duration::from_secs(120)),
        ..Default::default()
    }))
}

fn map_err(e: OciDistributionError, reference: &str, host: &str) -> ImageError {
    match e {
        OciDistributionError::ImageManifestNotFoundError(_) => ImageError::NotFound {
            reference: reference.into(),
        },
        OciDistributionError::RegistryError { ref envelope, .. }
            if envelope.errors.iter().any(|e| {
                matches!(
                    e.code,
                    OciErrorCode::ManifestUnknown
                        | OciErrorCode::NameUnknown
                        | OciErrorCode::BlobUnknown
                        | OciErrorCode::NotFound
                )
            }) =>
        {
            ImageError::NotFound {
                reference: reference.into(),
            }
        }
        OciDistributionError::ServerError { code: 404, .. } => ImageError::NotFound {
            reference: reference.into(),
        },
        OciDistributionError::UnauthorizedError { url } => ImageError::Unauthorized {
            reference: reference.into(),
            host: host.into(),
            message: format!("not authorized: {url}"),
        },
        OciDistributionError::AuthenticationFailure(m) => ImageError::Unauthorized {
            reference: reference.into(),
            host: host.into(),
            message: m,
        },
        OciDistributionError::DigestError(oci_client::errors::DigestError::VerificationError {
            expected,
            actual,
        }) => ImageError::DigestMismatch {
            what: format!("blob from {host}"),
            expected,
            actual,
        },
        other => ImageError::Registry {
            reference: reference.into(),
            message: format!("{host}: {other}"),
        },
    }
}

fn is_index(v: &serde_json::Value) -> bool {
    match v.get("mediaType").and_then(|m| m.as_str()) {
        Some(OCI_INDEX | DOCKER_LIST) => true,
        Some(_) => false,
        None => v.get("manifests").is_some() && v.get("layers").is_none(),
    }
}

impl ImageStore {
    /// Pull an image from its registry (or the mirrors of its `hosts.toml`) and unpack it.
    pub async fn pull(
        &self,
        reference: &str,
        auth: Option<&AuthConfig>,
    ) -> Result<ImageRecord, ImageError> {
        let r = parse_reference(reference)?;
        let creds = registry_auth(reference, auth)?;
        // Content by digest never changes: an image present under that digest is the answer.
        if let Some(rec) = r.digest().and_then(|_| self.get(&r.whole())) {
            return Ok(rec);
        }
        let hosts = registry_hosts(
            self.config.registry_config_dir.as_deref(),
            r.registry(),
            &self.config.insecure_registries,
        )?;
        let need_resolve = r.digest().is_none();
        let mut errors: Vec<(String, ImageError)> = vec![];
        for h in hosts
            .iter()
            .filter(|h| h.pull && (h.resolve || !need_resolve))
        {
            match self.pull_from(reference, &r, h, &creds).await {
                Ok(rec) => return Ok(rec),
                Err(e) => {
                    tracing::debug!(image = reference, host = %h.host, error = %e, "pull from this host failed");
                    errors.push((h.host.clone(), e));
                }
            }
        }
        if errors.is_empty() {
            return Err(ImageError::Registry {
                reference: reference.into(),
                message: "no registry host may pull it (check capabilities in hosts.toml)".into(),
            });
        }
        if errors.iter().all(|(_, e)| e.is_not_found()) {
            return Err(ImageError::NotFound {
                reference: reference.into(),
            });
        }
        if errors.len() == 1 {
            return Err(errors.pop().expect("one error").1);
        }
        let message = errors
            .iter()
            .map(|(h, e)| format!("{h}: {e}"))
            .collect::<Vec<_>>()
            .join("; ");
        Err(ImageError::Registry {
            reference: reference.into(),
            message,
        })
    }

    async fn pull_from(
        &self,
        reference: &str,
        r: &Reference,
        h: &RegistryHost,
        creds: &RegistryAuth,
    ) -> Result<ImageRecord, ImageError> {
        let client = client_for(h)?;
        let target = match r.digest() {
            Some(d) => Reference::with_digest(h.host.clone(), r.repository().into(), d.into()),
            None => Reference::with_tag(
                h.host.clone(),
                r.repository().into(),
                r.tag().unwrap_or("latest").into(),
            ),
        };
        let (raw, _) = client
            .pull_manifest_raw(&target, creds, ACCEPTED)
            .await
            .map_err(|e| map_err(e, reference, &h.host))?;
        let top_digest = sha256_digest(&raw);
        if let Some(want) = r.digest()
            && want != top_digest
        {
            return Err(ImageError::DigestMismatch {
                what: format!("manifest of {reference} from {}", h.host),
                expected: want.into(),
                actual: top_digest,
            });
        }
        let value: serde_json::Value =
            serde_json::from_slice(&raw).map_err(|e| ImageError::Malformed {
                what: format!("manifest of {reference}"),
                message: e.to_string(),
            })?;
        let (manifest_digest, manifest_raw) = if is_index(&value) {
            self.content.write(&top_digest, &raw)?;
            let index: ImageIndex =
                serde_json::from_slice(&raw).map_err(|e| ImageError::Malformed {
                    what: format!("index {top_digest}"),
                    message: e.to_string(),
                })?;
            let child = self.select_platform(reference, &index)?;
            let child_ref = target.clone_with_digest(child.clone());
            let (child_raw, _) = client
                .pull_manifest_raw(&child_ref, creds, ACCEPTED)
                .await
                .map_err(|e| map_err(e, reference, &h.host))?;
            let actual = sha256_digest(&child_raw);
            if actual != child {
                return Err(ImageError::DigestMismatch {
                    what: format!("manifest {child} of {reference}"),
                    expected: child,
                    actual,
                });
            }
            (child, child_raw.to_vec())
        } else {
            (top_digest.clone(), raw.to_vec())
        };
        if serde_json::from_slice::<serde_json::Value>(&manifest_raw)
            .ok()
            .is_some_and(|v| is_index(&v))
        {
            return Err(ImageError::UnsupportedMediaType {
                what: format!("manifest {manifest_digest} of {reference}"),
                media_type: "nested image index".into(),
            });
        }
        let manifest: ImageManifest =
            serde_json::from_slice(&manifest_raw).map_err(|e| ImageError::Malformed {
                what: format!("manifest {manifest_digest} of {reference}"),
                message: e.to_string(),
            })?;
        self.content.write(&manifest_digest, &manifest_raw)?;

        let config = manifest.config();
        if !self.content.contains(config.digest().as_ref()) {
            self.fetch_blob(
                &client,
                &target,
                config.digest().as_ref(),
                config.media_type().as_ref(),
                config.size(),
                reference,
                &h.host,
            )
            .await?;
        }
        let config_bytes = self.content.read(config.digest().as_ref())?;
        let cfg: oci_spec::image::ImageConfiguration = serde_json::from_slice(&config_bytes)
            .map_err(|e| ImageError::Malformed {
                what: format!("config {} of {reference}", config.digest()),
                message: e.to_string(),
            })?;
        let diff_ids = cfg.rootfs().diff_ids().clone();
        let mut wanted = vec![];
        for (i, l) in manifest.layers().iter().enumerate() {
            super::check_layer_media_type(l.media_type().as_ref(), l.digest().as_ref())?;
            let unpacked = diff_ids
                .get(i)
                .and_then(|d| digest_hex(d).ok())
                .is_some_and(|hex| self.layers_dir.join(hex).is_dir());
            if !unpacked && !self.content.contains(l.digest().as_ref()) {
                wanted.push(l.clone());
            }
        }
        let n = self.config.max_concurrent_downloads.max(1);
        futures::stream::iter(wanted)
            .map(|l| {
                let client = &client;
                let target = &target;
                async move {
                    self.fetch_blob(
                        client,
                        target,
                        l.digest().as_ref(),
                        l.media_type().as_ref(),
                        l.size(),
                        reference,
                        &h.host,
                    )
                    .await
                }
            })
            .buffer_unordered(n)
            .try_collect::<Vec<()>>()
            .await?;

        let repo = format!("{}/{}", r.registry(), r.repository());
        let tags = r.tag().map(|t| format!("{repo}:{t}")).into_iter().collect();
        let digests = vec![format!("{repo}@{top_digest}")];
        self.finish_image(&manifest_digest, &manifest, tags, digests)
            .await
    }

    #[allow(clippy::too_many_arguments)]
    async fn fetch_blob(
        &self,
        client: &Client,
        target: &Reference,
        digest: &str,
        media_type: &str,
        size: u64,
        reference: &str,
        host: &str,
    ) -> Result<(), ImageError> {
        let mut w = self.content.writer(digest).await?;
        let desc = OciDescriptor {
            digest: digest.into(),
            media_type: media_type.into(),
            size: size as i64,
            ..Default::default()
        };
        client
            .pull_blob(target, &desc, &mut w)
            .await
            .map_err(|e| map_err(e, reference, host))?;
        w.commit().await?;
        Ok(())
    }

    pub(super) fn select_platform(
        &self,
        reference: &str,
        index: &ImageIndex,
    ) -> Result<String, ImageError> {
        let os = &self.config.os;
        let arch = &self.config.architecture;
        let mut available = vec![];
        let mut fallback = None;
        for m in index.manifests() {
            let Some(p) = m.platform() else { continue };
            let (pos, parch) = (p.os().to_string(), p.architecture().to_string());
            available.push(match p.variant() {
                Some(v) => format!("{pos}/{parch}/{v}"),
                None => format!("{pos}/{parch}"),
            });
            if &pos == os && &parch == arch {
                // arm64 images may say v8 or nothing; take the first exact os/arch match.
                if fallback.is_none() {
                    fallback = Some(m.digest().to_string());
                }
            }
        }
        fallback.ok_or_else(|| ImageError::NoMatchingPlatform {
            reference: reference.into(),
            platform: format!("{os}/{arch}"),
            available: if available.is_empty() {
                "no platforms".into()
            } else {
                available.join(", ")
            },
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cri_auth_configs_map_to_registry_credentials() {
        let basic = |u: &str, p: &str| AuthConfig {
            username: u.into(),
            password: p.into(),
            ..Default::default()
        };
        assert!(matches!(
            registry_auth("r", None).unwrap(),
            RegistryAuth::Anonymous
        ));
        assert!(
            matches!(registry_auth("r", Some(&basic("u", "p"))).unwrap(), RegistryAuth::Basic(u, p) if u == "u" && p == "p")
        );
        let b64 = AuthConfig {
            auth: base64::engine::general_purpose::STANDARD.encode("alice:s3:cret"),
            ..Default::default()
        };
        assert!(
            matches!(registry_auth("r", Some(&b64)).unwrap(), RegistryAuth::Basic(u, p) if u == "alice" && p == "s3:cret")
        );
        let token = AuthConfig {
            registry_token: "tok".into(),
            ..basic("u", "p")
        };
        assert!(
            matches!(registry_auth("r", Some(&token)).unwrap(), RegistryAuth::Bearer(t) if t == "tok")
        );
        let bad = AuthConfig {
            auth: "%%%".into(),
            ..Default::default()
        };
        assert!(
            matches!(registry_auth("r", Some(&bad)), Err(ImageError::Auth { message, .. }) if message.contains("`auth`"))
        );
        let no_colon = AuthConfig {
            auth: base64::engine::general_purpose::STANDARD.encode("alice"),
            ..Default::default()
        };
        assert!(registry_auth("r", Some(&no_colon)).is_err());
        assert!(matches!(
            registry_auth("r", Some(&AuthConfig::default())).unwrap(),
            RegistryAuth::Anonymous
        ));
    }
}
