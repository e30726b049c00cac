//! Service-account tokens for projected volumes: a TokenRequest to the API server per pod,
//! service account, audience and lifetime, bound to the pod, cached and requested again once
//! 80 % of its lifetime has passed (or after 24 h), as kubelet's token manager does.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use k8s_openapi::api::authentication::v1::{BoundObjectReference, TokenRequest, TokenRequestSpec};
use k8s_openapi::api::core::v1::{Pod, ServiceAccount, ServiceAccountTokenProjection};
use kube::api::{Api, PostParams};
use tokio::time::Instant;

use super::volumes::TokenSource;

/// The lifetime asked for when a projection names none (kubelet: 1 h).
pub const DEFAULT_EXPIRATION_SECONDS: i64 = 3600;

/// A token request failed.
#[derive(Debug, thiserror::Error)]
#[error("token for service account {namespace}/{service_account}: {source}")]
pub struct TokenError {
    /// The namespace.
    pub namespace: String,
    /// The service account.
    pub service_account: String,
    /// The API error.
    #[source]
    pub source: kube::Error,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct Key {
    pod_uid: String,
    service_account: String,
    audience: String,
    expiration_seconds: i64,
}

#[derive(Debug, Clone)]
struct Cached {
    token: String,
    refresh_at: Instant,
}

/// Requests, caches and refreshes the tokens of the pods' projected volumes.
pub struct ServiceAccountTokens {
    client: kube::Client,
    cache: Mutex<HashMap<Key, Cached>>,
}

impl std::fmt::Debug for ServiceAccountTokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServiceAccountTokens")
            .finish_non_exhaustive()
    }
}

fn key(pod: &Pod, p: &ServiceAccountTokenProjection) -> Key {
    Key {
        pod_uid: pod.metadata.uid.clone().unwrap_or_default(),
        service_account: pod
            .spec
            .as_ref()
            .and_then(|s| s.service_account_name.clone())
            .filter(|s| !s.is_empty())
            .unwrap_or_else(|| "default".into()),
        audience: p.audience.clone().unwrap_or_default(),
        expiration_seconds: p.expiration_seconds.unwrap_or(DEFAULT_EXPIRATION_SECONDS),
    }
}

/// The service-account token projections of a pod's volumes.
fn projections(pod: &Pod) -> impl Iterator<Item = &ServiceAccountTokenProjection> {
    pod.spec
        .iter()
        .flat_map(|s| s.volumes.iter().flatten())
        .filter_map(|v| v.projected.as_ref())
        .flat_map(|p| p.sources.iter().flatten())
        .filter_map(|s| s.service_account_token.as_ref())
}

impl ServiceAccountTokens {
    /// Tokens through `client`.
    pub fn new(client: kube::Client) -> Self {
        Self {
            client,
            cache: Mutex::new(HashMap::new()),
        }
    }

    /// Requests the pod's tokens that are missing or due for refresh. Returns how many were
    /// requested.
    pub async fn refresh_for_pod(&self, pod: &Pod) -> Result<usize, TokenError> {
        let namespace = pod.metadata.namespace.as_deref().unwrap_or("default");
        let mut requested = 0;
        for p in projections(pod) {
            let k = key(pod, p);
            let due = self
                .cache
                .lock()
                .expect("token cache lock")
                .get(&k)
                .is_none_or(|c| Instant::now() >= c.refresh_at);
            if !due {
                continue;
            }
            let cached = self.request(namespace, pod, &k).await?;
            self.cache
                .lock()
                .expect("token cache lock")
                .insert(k, cached);
            requested += 1;
        }
        Ok(requested)
    }

    async fn request(&self, namespace: &str, pod: &Pod, k: &Key) -> Result<Cached, TokenError> {
        let api: Api<ServiceAccount> = Api::namespaced(self.client.clone(), namespace);
        let req = TokenRequest {
            spec: TokenRequestSpec {
                audiences: if k.audience.is_empty() {
                    vec![]
                } else {
                    vec![k.audience.clone()]
                },
                expiration_seconds: Some(k.expiration_seconds),
                bound_object_ref: Some(BoundObjectReference {
                    api_version: Some("v1".into()),
                    kind: Some("Pod".into()),
                    name: pod.metadata.name.clone(),
                    uid: pod.metadata.uid.clone(),
                }),
            },
            ..Default::default()
        };
        let issued = Instant::now();
        let resp = api
            .create_token_request(&k.service_account, &PostParams::default(), &req)
            .await
            .map_err(|source| TokenError {
                namespace: namespace.into(),
                service_account: k.service_account.clone(),
                source,
            })?;
        let status = resp.status.ok_or_else(|| TokenError {
            namespace: namespace.into(),
            service_account: k.service_account.clone(),
            source: kube::Error::Service("the TokenRequest answer has no status".into()),
        })?;
        // the lifetime granted (the API server may shorten it), else the one asked for
        let granted = status
            .expiration_timestamp
            .0
            .duration_since(k8s_openapi::jiff::Timestamp::now())
            .try_into()
            .ok()
            .filter(|d: &Duration| !d.is_zero())
            .unwrap_or(Duration::from_secs(k.expiration_seconds.max(0) as u64));
        let refresh_after = granted.mul_f64(0.8).min(Duration::from_secs(24 * 3600));
        Ok(Cached {
            token: status.token,
            refresh_at: issued + refresh_after,
        })
    }

    /// Forgets the tokens of a pod that is gone.
    pub fn forget_pod(&self, uid: &str) {
        self.cache
            .lock()
            .expect("token cache lock")
            .retain(|k, _| k.pod_uid != uid);
    }
}

impl TokenSource for ServiceAccountTokens {
    fn token(&self, pod: &Pod, projection: &ServiceAccountTokenProjection) -> Option<String> {
        self.cache
            .lock()
            .expect("token cache lock")
            .get(&key(pod, projection))
            .map(|c| c.token.clone())
    }
}
