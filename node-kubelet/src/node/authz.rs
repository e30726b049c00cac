//! Authorization of the kubelet's server (kubelet's `--authorization-mode`), as kubelet's
//! `pkg/kubelet/server/auth.go` does it:
//!
//! - who the client is comes from [`super::authn`] (a client certificate, a bearer token
//!   reviewed by the API server, or `system:anonymous`): an [`Identity`] with the user, uid,
//!   groups and extra that the SubjectAccessReview carries;
//! - every request on the secure port, `/healthz` included, is authorized as a resource request
//!   on `nodes/<node name>` ([`request_attributes`]): the verb from the HTTP method (`GET` →
//!   `get`, `POST` → `create`, `PUT` → `update`, `PATCH` → `patch`, `DELETE` → `delete`, any
//!   other → the empty verb, which no policy grants; a WebSocket `exec` by `GET` is `get`, as in
//!   kubelet), the subresource from the path (`/stats/*` → `stats`, `/metrics*` → `metrics`,
//!   `/logs/*` → `log`, `/checkpoint/*` → `checkpoint`, everything else, `/containerLogs`,
//!   `/exec`, `/attach`, `/portForward` and `/run` among it, → `proxy`); with kubelet's
//!   `KubeletFineGrainedAuthz` (on by default, [`AuthorizationConfig::fine_grained`]) `/pods`
//!   and `/runningpods/` are tried as `pods`, `/healthz` as `healthz`, `/configz` as `configz`
//!   and `/statusz` as `statusz` first, then as `proxy`;
//! - [`AuthorizationMode::AlwaysAllow`] allows everything; [`AuthorizationMode::Webhook`] asks
//!   the API server with a `SubjectAccessReview` (authorization.k8s.io/v1) and caches the
//!   answer (kubelet's `--authorization-webhook-cache-authorized-ttl` 5m and
//!   `--authorization-webhook-cache-unauthorized-ttl` 30s) in an [`LruExpireCache`] of
//!   [`WEBHOOK_CACHE_SIZE`] decisions, as kubelet's webhook authorizer;
//! - [`Authorizer::check`] answers a refusal as kubelet does: denied → `403` `Forbidden
//!   (user=<u>, verb=<v>, resource=nodes, subresource=<s>)`; the API server not answering →
//!   `500` `Authorization error (user=<u>, verb=<v>, resource=nodes, subresource=<s>)` (the
//!   request is refused, the error logged, nothing cached).

use std::collections::{BTreeMap, HashMap};
use std::hash::Hash;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::http::{Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use backon::{ExponentialBuilder, Retryable};
use k8s_openapi::api::authorization::v1::{
    ResourceAttributes, SubjectAccessReview, SubjectAccessReviewSpec,
};
use kube::api::{Api, PostParams};
use tokio::time::Instant;

/// kubelet's `--authorization-mode`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum AuthorizationMode {
    /// Every authenticated request is allowed (kubelet's flag default, for a node without an API
    /// server).
    AlwaysAllow,
    /// Each request is authorized by the API server with a `SubjectAccessReview` (kubelet's
    /// configuration-file default).
    #[default]
    Webhook,
}

impl std::str::FromStr for AuthorizationMode {
    type Err = AuthzError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "AlwaysAllow" => Ok(Self::AlwaysAllow),
            "Webhook" => Ok(Self::Webhook),
            other => Err(AuthzError::Config(format!(
                "unknown authorization mode {other:?} (AlwaysAllow or Webhook)"
            ))),
        }
    }
}

impl std::fmt::Display for AuthorizationMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::AlwaysAllow => "AlwaysAllow",
            Self::Webhook => "Webhook",
        })
    }
}

/// How the kubelet's server authorizes requests.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuthorizationConfig {
    /// `--authorization-mode` (default [`AuthorizationMode::Webhook`]).
    pub mode: AuthorizationMode,
    /// The node's name: the `nodes` object every request is authorized against.
    pub node_name: String,
    /// How long an allowed decision is reused
    /// (`--authorization-webhook-cache-authorized-ttl`, 5m).
    pub cache_authorized_ttl: Duration,
    /// How long a denied decision is reused
    /// (`--authorization-webhook-cache-unauthorized-ttl`, 30s).
    pub cache_unauthorized_ttl: Duration,
    /// kubelet's `KubeletFineGrainedAuthz` (on by default): `/pods`, `/healthz`, `/configz`
    /// and `/statusz` are first authorized with their own subresource, then as `proxy`.
    pub fine_grained: bool,
    /// The first wait before a SubjectAccessReview that failed on the way (the API server
    /// unreachable, 5xx, 429) is sent again; the waits grow 1.5x with jitter (kubelet's webhook
    /// back-off: 500ms).
    pub webhook_retry_initial: Duration,
    /// How many times in all a review is sent before the request gets 500 (kubelet's: 5).
    pub webhook_retry_attempts: usize,
}

impl Default for AuthorizationConfig {
    fn default() -> Self {
        Self {
            mode: AuthorizationMode::Webhook,
            node_name: String::new(),
            cache_authorized_ttl: Duration::from_secs(5 * 60),
            cache_unauthorized_ttl: Duration::from_secs(30),
            fine_grained: true,
            webhook_retry_initial: Duration::from_millis(500),
            webhook_retry_attempts: 5,
        }
    }
}

/// Whether a failed review is worth sending again: the API server did not answer, or answered
/// that it could not now (5xx, 429), as kubelet's webhook retries.
fn transient(e: &kube::Error) -> bool {
    match e {
        kube::Error::Api(s) => s.code >= 500 || s.code == 429,
        kube::Error::HyperError(_) | kube::Error::Service(_) => true,
        _ => false,
    }
}

/// Creates a review (a SubjectAccessReview, a TokenReview) on the API server with kubelet's
/// webhook back-off: a review that failed on the way ([`transient`]) is sent again after
/// `initial`, growing 1.5x with jitter, `attempts` times in all.
pub(crate) async fn create_review<K>(
    client: &kube::Client,
    review: &K,
    initial: Duration,
    attempts: usize,
) -> Result<K, kube::Error>
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + serde::Serialize + std::fmt::Debug,
    K::DynamicType: Default,
{
    let api = Api::<K>::all(client.clone());
    let backoff = ExponentialBuilder::new()
        .with_min_delay(initial)
        .with_factor(1.5)
        .with_jitter()
        .with_max_times(attempts.saturating_sub(1));
    let params = PostParams::default();
    let kind = K::kind(&K::DynamicType::default()).into_owned();
    (|| api.create(&params, review))
        .retry(backoff)
        .when(transient)
        .notify(|e, wait| {
            tracing::debug!(error = %e, ?wait, "{kind} failed; sending it again");
        })
        .await
}

/// How many decisions kubelet's webhook authorizer keeps (its `NewLRUExpireCache(8192)`).
pub const WEBHOOK_CACHE_SIZE: usize = 8192;

/// A cache of at most a fixed number of entries, each with its own expiry (kubelet's
/// `LRUExpireCache`): an expired entry is gone when asked for, and when the cache is full the
/// least recently used entry gives way to a new one. Times are tokio's (a paused clock moves
/// them).
#[derive(Debug)]
pub struct LruExpireCache<K, V> {
    capacity: usize,
    /// key -> (value, expiry, its place in `order`)
    entries: HashMap<K, (V, Instant, u64)>,
    /// place -> key, the least recently used first
    order: BTreeMap<u64, K>,
    next: u64,
}

impl<K: Hash + Eq + Clone, V: Clone> LruExpireCache<K, V> {
    /// An empty cache of at most `capacity` entries (at least one).
    pub fn new(capacity: usize) -> Self {
        Self {
            capacity: capacity.max(1),
            entries: HashMap::new(),
            order: BTreeMap::new(),
            next: 0,
        }
    }

    /// The value of `key` while it has not expired at `now` (it becomes the most recently
    /// used); an expired entry is removed.
    pub fn get(&mut self, key: &K, now: Instant) -> Option<V> {
        let place = self.next;
        let entry = self.entries.get_mut(key)?;
        if now >= entry.1 {
            let old = entry.2;
            self.entries.remove(key);
            self.order.remove(&old);
            return None;
        }
        let old = std::mem::replace(&mut entry.2, place);
        let value = entry.0.clone();
        self.next += 1;
        if let Some(k) = self.order.remove(&old) {
            self.order.insert(place, k);
        }
        Some(value)
    }

    /// Keeps `value` for `key` until `now + ttl`, in place of any earlier one; when the cache is
    /// full the least recently used entry is dropped.
    pub fn add(&mut self, key: K, value: V, ttl: Duration, now: Instant) {
        if let Some((_, _, old)) = self.entries.remove(&key) {
            self.order.remove(&old);
        }
        while self.entries.len() >= self.capacity {
            let Some((_, oldest)) = self.order.pop_first() else {
                break;
            };
            self.entries.remove(&oldest);
        }
        let place = self.next;
        self.next += 1;
        self.order.insert(place, key.clone());
        self.entries.insert(key, (value, now + ttl, place));
    }

    /// Forgets `key`.
    pub fn remove(&mut self, key: &K) {
        if let Some((_, _, old)) = self.entries.remove(key) {
            self.order.remove(&old);
        }
    }

    /// How many entries are kept (expired ones not yet asked for included).
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether nothing is kept.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The most entries kept.
    pub fn capacity(&self) -> usize {
        self.capacity
    }
}

/// An error of authorization.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AuthzError {
    /// The configuration is not usable.
    #[error("authorization: {0}")]
    Config(String),
    /// The API server did not answer the SubjectAccessReview.
    #[error("SubjectAccessReview: {0}")]
    Review(#[from] kube::Error),
}

/// The user of a request that brought no credentials (kubelet's `--anonymous-auth`).
pub const ANONYMOUS: &str = "system:anonymous";
/// The group of [`ANONYMOUS`].
pub const UNAUTHENTICATED: &str = "system:unauthenticated";
/// The group every authenticated user is given.
pub const AUTHENTICATED: &str = "system:authenticated";

/// Who a client is: the user information a SubjectAccessReview carries.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default)]
pub struct Identity {
    /// The user name (a certificate's common name, a token's reviewed user name).
    pub user: String,
    /// The user's UID (a reviewed token's; empty for a certificate).
    pub uid: String,
    /// The groups (a certificate's organizations, a token's reviewed groups), with
    /// `system:authenticated`.
    pub groups: Vec<String>,
    /// Further information on the user (a reviewed token's `extra`).
    pub extra: BTreeMap<String, Vec<String>>,
}

impl Identity {
    /// The identity of a client certificate (DER) as kubelet's x509 authenticator reads it:
    /// the subject's common name (the last one, when several) is the user, its organizations are
    /// the groups, and `system:authenticated` is added. `None` when the certificate does not
    /// parse or has no common name (such a client is not authenticated by its certificate).
    pub fn from_certificate(der: &[u8]) -> Option<Self> {
        let (cn, orgs) = subject_cn_and_o(der)?;
        let user = cn.filter(|c| !c.is_empty())?;
        Some(
            Self {
                user,
                groups: orgs,
                ..Default::default()
            }
            .with_authenticated_group(),
        )
    }

    /// `system:anonymous` in the group `system:unauthenticated` (kubelet's anonymous
    /// authenticator).
    pub fn anonymous() -> Self {
        Self {
            user: ANONYMOUS.into(),
            groups: vec![UNAUTHENTICATED.into()],
            ..Default::default()
        }
    }

    /// With `system:authenticated` added to the groups, as the API server's authenticated-group
    /// adder: not for `system:anonymous`, nor when the groups already hold
    /// `system:authenticated` or `system:unauthenticated`.
    pub fn with_authenticated_group(mut self) -> Self {
        if self.user != ANONYMOUS
            && !self
                .groups
                .iter()
                .any(|g| g == AUTHENTICATED || g == UNAUTHENTICATED)
        {
            self.groups.push(AUTHENTICATED.into());
        }
        self
    }
}

/// One DER element: its tag, its content and what follows it.
fn der_element(b: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, rest) = b.split_first()?;
    let (&first, rest) = rest.split_first()?;
    let (len, rest) = if first < 0x80 {
        (usize::from(first), rest)
    } else {
        let n = usize::from(first & 0x7f);
        if n == 0 || n > 4 || rest.len() < n {
            return None;
        }
        let len = rest[..n]
            .iter()
            .fold(0usize, |acc, &x| (acc << 8) | usize::from(x));
        (len, &rest[n..])
    };
    if rest.len() < len {
        return None;
    }
    Some((tag, &rest[..len], &rest[len..]))
}

/// A directory string of a certificate's name.
fn der_string(tag: u8, v: &[u8]) -> String {
    match tag {
        // BMPString: UTF-16BE
        0x1e => {
            let units: Vec<u16> = v
                .chunks_exact(2)
                .map(|c| u16::from_be_bytes([c[0], c[1]]))
                .collect();
            String::from_utf16_lossy(&units)
        }
        // UTF8String, PrintableString, IA5String, TeletexString and the rest
        _ => String::from_utf8_lossy(v).into_owned(),
    }
}

const OID_CN: &[u8] = &[0x55, 0x04, 0x03];
const OID_O: &[u8] = &[0x55, 0x04, 0x0a];

/// The subject's common name and organizations of a certificate.
fn subject_cn_and_o(der: &[u8]) -> Option<(Option<String>, Vec<String>)> {
    let (0x30, cert, _) = der_element(der)? else {
        return None;
    };
    let (0x30, tbs, _) = der_element(cert)? else {
        return None;
    };
    let mut rest = tbs;
    let (tag, _, after) = der_element(rest)?;
    if tag == 0xa0 {
        // the explicit version
        rest = after;
    }
    // serialNumber, signature, issuer, validity, then the subject
    for _ in 0..4 {
        rest = der_element(rest)?.2;
    }
    let (0x30, mut name, _) = der_element(rest)? else {
        return None;
    };
    let (mut cn, mut orgs) = (None, Vec::new());
    while !name.is_empty() {
        let (set_tag, mut set, next) = der_element(name)?;
        name = next;
        if set_tag != 0x31 {
            return None;
        }
        while !set.is_empty() {
            let (_, atv, next) = der_element(set)?;
            set = next;
            let (0x06, oid, value) = der_element(atv)? else {
                return None;
            };
            let (vtag, v, _) = der_element(value)?;
            if oid == OID_CN {
                cn = Some(der_string(vtag, v));
            } else if oid == OID_O {
                orgs.push(der_string(vtag, v));
            }
        }
    }
    Some((cn, orgs))
}

/// kubelet's API verb of an HTTP method (the empty verb for any other method).
pub fn verb_of(method: &Method) -> &'static str {
    match *method {
        Method::POST => "create",
        Method::GET => "get",
        Method::PUT => "update",
        Method::PATCH => "patch",
        Method::DELETE => "delete",
        _ => "",
    }
}

/// kubelet's `isSubpath`: `sub` is `path` (without its trailing `/`) or below it.
fn is_subpath(sub: &str, path: &str) -> bool {
    let path = path.strip_suffix('/').unwrap_or(path);
    sub == path || (sub.starts_with(path) && sub.as_bytes().get(path.len()) == Some(&b'/'))
}

/// The `nodes` subresources a request path is authorized as, in the order they are tried
/// (kubelet's `GetRequestAttributes`): the fine-grained one first (when `fine_grained`), then
/// `stats`, `metrics`, `log`, `checkpoint` or `proxy`.
pub fn subresources_of(path: &str, fine_grained: bool) -> Vec<&'static str> {
    let mut out = Vec::with_capacity(2);
    if fine_grained {
        if is_subpath(path, "/pods") || is_subpath(path, "/runningpods/") {
            out.push("pods");
        } else if is_subpath(path, "/healthz") {
            out.push("healthz");
        } else if is_subpath(path, "/configz") {
            out.push("configz");
        } else if is_subpath(path, "/statusz") {
            out.push("statusz");
        }
    }
    out.push(if is_subpath(path, "/stats/") {
        "stats"
    } else if is_subpath(path, "/metrics") {
        "metrics"
    } else if is_subpath(path, "/logs/") {
        "log"
    } else if is_subpath(path, "/checkpoint/") {
        "checkpoint"
    } else {
        "proxy"
    });
    out
}

/// What one authorization decision is about: a resource request on `nodes/<name>`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Attributes {
    /// The user.
    pub user: String,
    /// The user's UID.
    pub uid: String,
    /// The user's groups.
    pub groups: Vec<String>,
    /// The user's extra information.
    pub extra: BTreeMap<String, Vec<String>>,
    /// The API verb ([`verb_of`]).
    pub verb: String,
    /// The resource: `nodes`.
    pub resource: String,
    /// The subresource ([`subresources_of`]).
    pub subresource: String,
    /// The node's name.
    pub name: String,
}

impl Attributes {
    /// The SubjectAccessReview's spec for these attributes (kubelet's webhook authorizer:
    /// the user with its uid, groups and extra; version `v1`, the core group, no namespace).
    pub fn review_spec(&self) -> SubjectAccessReviewSpec {
        SubjectAccessReviewSpec {
            user: Some(self.user.clone()),
            uid: (!self.uid.is_empty()).then(|| self.uid.clone()),
            groups: Some(self.groups.clone()),
            extra: (!self.extra.is_empty()).then(|| self.extra.clone()),
            resource_attributes: Some(ResourceAttributes {
                verb: Some(self.verb.clone()),
                group: Some(String::new()),
                version: Some("v1".into()),
                resource: Some(self.resource.clone()),
                subresource: Some(self.subresource.clone()),
                name: Some(self.name.clone()),
                namespace: Some(String::new()),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    fn words(&self) -> String {
        format!(
            "user={}, verb={}, resource={}, subresource={}",
            self.user, self.verb, self.resource, self.subresource
        )
    }
}

/// The attributes a request is authorized with, in the order they are tried (the first allowed
/// one lets the request through).
pub fn request_attributes(
    identity: &Identity,
    method: &Method,
    path: &str,
    node_name: &str,
    fine_grained: bool,
) -> Vec<Attributes> {
    subresources_of(path, fine_grained)
        .into_iter()
        .map(|sub| Attributes {
            user: identity.user.clone(),
            uid: identity.uid.clone(),
            groups: identity.groups.clone(),
            extra: identity.extra.clone(),
            verb: verb_of(method).into(),
            resource: "nodes".into(),
            subresource: sub.into(),
            name: node_name.into(),
        })
        .collect()
}

/// A decision.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Allowed.
    Allow,
    /// Denied (or no opinion), with the reviewer's reason.
    Deny(String),
}

/// The kubelet server's authorizer; cheap to clone (the decision cache is shared).
#[derive(Clone)]
pub struct Authorizer {
    config: AuthorizationConfig,
    client: Option<kube::Client>,
    cache: Arc<Mutex<LruExpireCache<Attributes, bool>>>,
}

impl std::fmt::Debug for Authorizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Authorizer")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl Authorizer {
    /// An authorizer for `config`; [`AuthorizationMode::Webhook`] needs the API server's
    /// `client`.
    pub fn new(
        config: AuthorizationConfig,
        client: Option<kube::Client>,
    ) -> Result<Self, AuthzError> {
        if config.mode == AuthorizationMode::Webhook {
            if client.is_none() {
                return Err(AuthzError::Config(
                    "the Webhook authorization mode needs an API server".into(),
                ));
            }
            if config.node_name.is_empty() {
                return Err(AuthzError::Config(
                    "the Webhook authorization mode needs the node's name".into(),
                ));
            }
        }
        Ok(Self {
            config,
            client,
            cache: decision_cache(),
        })
    }

    /// The authorizer that allows every authenticated request.
    pub fn always_allow() -> Self {
        Self {
            config: AuthorizationConfig {
                mode: AuthorizationMode::AlwaysAllow,
                ..Default::default()
            },
            client: None,
            cache: decision_cache(),
        }
    }

    /// The configuration.
    pub fn config(&self) -> &AuthorizationConfig {
        &self.config
    }

    /// Decides on one set of attributes: from the cache while the decision is fresh, else by a
    /// SubjectAccessReview (whose answer is cached; errors are not).
    pub async fn authorize(&self, attrs: &Attributes) -> Result<Decision, AuthzError> {
        let (AuthorizationMode::Webhook, Some(client)) = (self.config.mode, &self.client) else {
            return Ok(Decision::Allow);
        };
        let now = Instant::now();
        if let Some(allowed) = self.cache.lock().expect("cache").get(attrs, now) {
            return Ok(if allowed {
                Decision::Allow
            } else {
                Decision::Deny("cached".into())
            });
        }
        let review = SubjectAccessReview {
            spec: attrs.review_spec(),
            ..Default::default()
        };
        let answer = create_review(
            client,
            &review,
            self.config.webhook_retry_initial,
            self.config.webhook_retry_attempts,
        )
        .await?;
        let status = answer.status.unwrap_or_default();
        let allowed = status.allowed && !status.denied.unwrap_or(false);
        let ttl = if allowed {
            self.config.cache_authorized_ttl
        } else {
            self.config.cache_unauthorized_ttl
        };
        if !ttl.is_zero() {
            self.cache
                .lock()
                .expect("cache")
                .add(attrs.clone(), allowed, ttl, now);
        }
        Ok(if allowed {
            Decision::Allow
        } else {
            // no opinion counts as denied; an evaluation error is only a reason
            let reason = status.reason.unwrap_or_default();
            match status.evaluation_error.filter(|e| !e.is_empty()) {
                Some(e) => Decision::Deny(format!("{reason} (evaluation error: {e})")),
                None => Decision::Deny(reason),
            }
        })
    }

    /// Authorizes a request of `identity`: `None` when it may go on, else kubelet's answer (403
    /// `Forbidden (...)` when denied, 500 `Authorization error (...)` when the API server did
    /// not answer).
    pub async fn check(
        &self,
        identity: &Identity,
        method: &Method,
        path: &str,
    ) -> Option<Response> {
        if self.config.mode == AuthorizationMode::AlwaysAllow {
            return None;
        }
        let attrs = request_attributes(
            identity,
            method,
            path,
            &self.config.node_name,
            self.config.fine_grained,
        );
        let mut last = None;
        for a in &attrs {
            match self.authorize(a).await {
                Ok(Decision::Allow) => return None,
                Ok(Decision::Deny(reason)) => {
                    tracing::debug!(%path, attributes = %a.words(), %reason, "kubelet server: forbidden");
                    last = Some(a);
                }
                Err(e) => {
                    let msg = format!("Authorization error ({})", a.words());
                    tracing::error!(error = %e, %path, "{msg}");
                    return Some(text(StatusCode::INTERNAL_SERVER_ERROR, msg));
                }
            }
        }
        let words = last.map(Attributes::words).unwrap_or_default();
        Some(text(StatusCode::FORBIDDEN, format!("Forbidden ({words})")))
    }
}

fn decision_cache() -> Arc<Mutex<LruExpireCache<Attributes, bool>>> {
    Arc::new(Mutex::new(LruExpireCache::new(WEBHOOK_CACHE_SIZE)))
}

fn text(status: StatusCode, message: String) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        message,
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn methods_map_to_kubelets_verbs() {
        assert_eq!(verb_of(&Method::GET), "get");
        assert_eq!(verb_of(&Method::POST), "create");
        assert_eq!(verb_of(&Method::PUT), "update");
        assert_eq!(verb_of(&Method::PATCH), "patch");
        assert_eq!(verb_of(&Method::DELETE), "delete");
        // kubelet maps nothing else
        assert_eq!(verb_of(&Method::HEAD), "");
        assert_eq!(verb_of(&Method::OPTIONS), "");
    }

    #[test]
    fn paths_map_to_kubelets_subresources() {
        let coarse = |p: &str| subresources_of(p, false);
        let fine = |p: &str| subresources_of(p, true);
        assert_eq!(coarse("/stats/summary"), ["stats"]);
        assert_eq!(coarse("/stats"), ["stats"]);
        assert_eq!(coarse("/metrics"), ["metrics"]);
        assert_eq!(coarse("/metrics/cadvisor"), ["metrics"]);
        assert_eq!(coarse("/metrics/probes"), ["metrics"]);
        assert_eq!(coarse("/metricsx"), ["proxy"]);
        assert_eq!(coarse("/logs/"), ["log"]);
        assert_eq!(coarse("/logs/syslog"), ["log"]);
        assert_eq!(coarse("/checkpoint/ns/pod/c"), ["checkpoint"]);
        // the streaming endpoints and the rest are nodes/proxy
        for p in [
            "/containerLogs/default/web/app",
            "/exec/default/web/app",
            "/attach/default/web/uid/app",
            "/portForward/default/web",
            "/run/default/web/app",
            "/spec/",
            "/pods",
            "/healthz",
            "/",
        ] {
            assert_eq!(coarse(p), ["proxy"], "{p}");
        }
        assert_eq!(fine("/pods"), ["pods", "proxy"]);
        assert_eq!(fine("/pods/"), ["pods", "proxy"]);
        assert_eq!(fine("/runningpods/"), ["pods", "proxy"]);
        assert_eq!(fine("/healthz"), ["healthz", "proxy"]);
        assert_eq!(fine("/healthz/ping"), ["healthz", "proxy"]);
        assert_eq!(fine("/configz"), ["configz", "proxy"]);
        assert_eq!(fine("/statusz"), ["statusz", "proxy"]);
        assert_eq!(fine("/podsx"), ["proxy"]);
        assert_eq!(fine("/stats/summary"), ["stats"]);
        assert_eq!(fine("/exec/default/web/app"), ["proxy"]);
    }

    #[test]
    fn attributes_and_their_review() {
        let id = Identity {
            user: "alice".into(),
            uid: "u-1".into(),
            groups: vec!["dev".into(), "system:authenticated".into()],
            extra: [("scopes".to_string(), vec!["a".to_string(), "b".to_string()])].into(),
        };
        let a = request_attributes(&id, &Method::POST, "/exec/default/web/app", "node-1", true);
        assert_eq!(a.len(), 1);
        assert_eq!(
            a[0].words(),
            "user=alice, verb=create, resource=nodes, subresource=proxy"
        );
        let spec = a[0].review_spec();
        assert_eq!(spec.user.as_deref(), Some("alice"));
        assert_eq!(spec.groups, Some(id.groups.clone()));
        assert_eq!(spec.uid.as_deref(), Some("u-1"));
        assert_eq!(spec.extra, Some(id.extra.clone()));
        let ra = spec.resource_attributes.unwrap();
        assert_eq!(ra.verb.as_deref(), Some("create"));
        assert_eq!(ra.resource.as_deref(), Some("nodes"));
        assert_eq!(ra.subresource.as_deref(), Some("proxy"));
        assert_eq!(ra.name.as_deref(), Some("node-1"));
        assert_eq!(ra.version.as_deref(), Some("v1"));
    }

    #[test]
    fn modes_parse_and_webhook_needs_a_client() {
        assert_eq!(
            "Webhook".parse::<AuthorizationMode>().unwrap(),
            AuthorizationMode::Webhook
        );
        assert_eq!(
            "AlwaysAllow".parse::<AuthorizationMode>().unwrap(),
            AuthorizationMode::AlwaysAllow
        );
        assert!("RBAC".parse::<AuthorizationMode>().is_err());
        let e = Authorizer::new(
            AuthorizationConfig {
                node_name: "n".into(),
                ..Default::default()
            },
            None,
        )
        .unwrap_err();
        assert!(e.to_string().contains("needs an API server"), "{e}");
    }

    #[test]
    fn the_decision_cache_is_bounded_and_expires() {
        let t0 = Instant::now();
        let ttl = Duration::from_secs(10);
        let mut c = LruExpireCache::new(3);
        assert_eq!(c.capacity(), 3);
        for k in 1..=3 {
            c.add(k, k * 10, ttl, t0);
        }
        assert_eq!(c.len(), 3);
        // 1 is used, so 2 is the least recently used and gives way to 4
        assert_eq!(c.get(&1, t0), Some(10));
        c.add(4, 40, ttl, t0);
        assert_eq!(c.len(), 3);
        assert_eq!(c.get(&2, t0), None);
        assert_eq!(c.get(&1, t0), Some(10));
        assert_eq!(c.get(&4, t0), Some(40));
        // replacing a key does not grow the cache, and sets its new expiry
        c.add(3, 31, Duration::from_secs(1), t0);
        assert_eq!(c.len(), 3);
        assert_eq!(c.get(&3, t0), Some(31));
        // an expired entry is gone when asked for
        assert_eq!(c.get(&3, t0 + Duration::from_secs(1)), None);
        assert_eq!(c.len(), 2);
        assert_eq!(c.get(&1, t0 + ttl), None);
        c.remove(&4);
        assert!(c.is_empty());
        // thousands of distinct keys never exceed the bound
        let mut big = LruExpireCache::new(WEBHOOK_CACHE_SIZE);
        for k in 0..WEBHOOK_CACHE_SIZE + 100 {
            big.add(k, (), ttl, t0);
        }
        assert_eq!(big.len(), WEBHOOK_CACHE_SIZE);
        assert_eq!(big.get(&0, t0), None, "the oldest went first");
        assert_eq!(big.get(&(WEBHOOK_CACHE_SIZE + 99), t0), Some(()));
    }

    #[test]
    fn der_lengths() {
        assert_eq!(
            der_element(&[0x04, 0x01, 0xaa, 0xbb]),
            Some((0x04, &[0xaa][..], &[0xbb][..]))
        );
        assert_eq!(
            der_element(&[0x04, 0x81, 0x01, 0xaa]),
            Some((0x04, &[0xaa][..], &[][..]))
        );
        assert_eq!(der_element(&[0x04, 0x02, 0xaa]), None);
        assert_eq!(der_element(&[0x04, 0x80]), None);
        assert!(Identity::from_certificate(b"not a certificate").is_none());
    }
}
