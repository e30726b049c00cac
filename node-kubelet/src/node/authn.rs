//! Authentication of the kubelet's server (kubelet's `--client-ca-file`,
//! `--authentication-token-webhook` and `--anonymous-auth`), as kubelet's delegating
//! authenticator (`cmd/kubelet/app/auth.go` over the API server's `DelegatingAuthenticatorConfig`):
//!
//! 1. a client certificate verified against the client CA: its common name is the user, its
//!    organizations the groups ([`Identity::from_certificate`]); a certificate without a common
//!    name does not authenticate (the next way is tried);
//! 2. with the token webhook on ([`AuthenticationConfig::webhook`]), an `Authorization: Bearer`
//!    token ([`bearer_token`]) or, on a WebSocket upgrade, a token in a
//!    `base64url.bearer.authorization.k8s.io.<token>` subprotocol ([`websocket_bearer_token`];
//!    the subprotocol is removed before the request goes on), reviewed by the API server with a
//!    `TokenReview` (authentication.k8s.io/v1): an authenticated status gives the user name,
//!    uid, groups and extra; the answer, authenticated or not, is kept for [`AuthenticationConfig::webhook_cache_ttl`] (kubelet's 2m) in an
//!    [`LruExpireCache`] of [`TOKEN_CACHE_SIZE`] tokens (by a keyed SHA-256 of the token, not the
//!    token); requests with the same token meanwhile share one review; a review that fails on
//!    the way is sent again with kubelet's webhook back-off and is not cached. With the webhook
//!    off a bearer token is not looked at;
//! 3. with anonymous requests on ([`AuthenticationConfig::anonymous`], kubelet's default), a
//!    request that none of these authenticated is `system:anonymous` in the group
//!    `system:unauthenticated` ([`Identity::anonymous`]) — unless a token was sent and refused
//!    or could not be reviewed: that fails the request, as kubelet's `NewFailOnError` does;
//! 4. else `401` `Unauthorized`: no credentials (anonymous off), a token the API server did not
//!    authenticate, or a TokenReview that did not reach it (kubelet answers every
//!    authentication error 401, logged, and so does [`Authenticator::check`]).
//!
//! Certificate and token users get the group `system:authenticated` (the API server's
//! authenticated-group adder, [`Identity::with_authenticated_group`]); the [`Identity`] then goes
//! to the [`Authorizer`](super::authz::Authorizer), whose SubjectAccessReview carries it whole.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use base64::Engine;
use futures::FutureExt;
use futures::future::{BoxFuture, Shared};
use k8s_openapi::api::authentication::v1::{TokenReview, TokenReviewSpec};
use sha2::{Digest, Sha256};
use tokio::time::Instant;

use super::authz::{Identity, LruExpireCache, create_review};

/// How many token reviews are kept: kubelet's token cache was sized for 32768 tokens (32
/// stripes of 1024; "5k nodes and 10k namespaces, a 2x safety margin"), which bounds it here.
pub const TOKEN_CACHE_SIZE: usize = 32 * 1024;

/// How the kubelet's server authenticates requests.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuthenticationConfig {
    /// `--anonymous-auth`: a request without credentials is served as `system:anonymous`
    /// (group `system:unauthenticated`) and authorized as such (kubelet's default: true). With
    /// [`AlwaysAllow`](super::authz::AuthorizationMode::AlwaysAllow) authorization that lets any
    /// client do anything ([`KubeletServer::start`](super::server::KubeletServer::start) warns).
    pub anonymous: bool,
    /// `--authentication-token-webhook`: bearer tokens are reviewed by the API server with a
    /// TokenReview (kubelet's flag default: false; needs the API server's client).
    pub webhook: bool,
    /// `--authentication-token-webhook-cache-ttl`: how long a review's answer, authenticated or
    /// not, is reused (kubelet's 2m; zero: every request is reviewed).
    pub webhook_cache_ttl: Duration,
    /// The first wait before a TokenReview that failed on the way (the API server unreachable,
    /// 5xx, 429) is sent again; the waits grow 1.5x with jitter (kubelet's webhook back-off:
    /// 500ms).
    pub webhook_retry_initial: Duration,
    /// How many times in all a review is sent before the request gets 401 (kubelet's: 5).
    pub webhook_retry_attempts: usize,
}

impl Default for AuthenticationConfig {
    fn default() -> Self {
        Self {
            anonymous: true,
            webhook: false,
            webhook_cache_ttl: Duration::from_secs(2 * 60),
            webhook_retry_initial: Duration::from_millis(500),
            webhook_retry_attempts: 5,
        }
    }
}

/// An error of authentication.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AuthnError {
    /// The configuration is not usable.
    #[error("authentication: {0}")]
    Config(String),
    /// The TokenReview did not reach the API server (or it failed).
    #[error("TokenReview: {0}")]
    Review(#[from] kube::Error),
    /// The API server did not authenticate the bearer token.
    #[error("invalid bearer token")]
    InvalidToken,
    /// The API server did not authenticate the bearer token, with an error (not cached).
    #[error("TokenReview: {0}")]
    Rejected(String),
    /// A WebSocket bearer-token subprotocol that cannot be used.
    #[error("{0}")]
    WebSocketProtocol(&'static str),
    /// The error of a review another request with the same token was waiting for too.
    #[error(transparent)]
    Shared(Arc<AuthnError>),
}

/// A keyed hash of a token: what the cache keeps in its place.
type TokenKey = [u8; 32];

/// A review under way, which requests with the same token wait for together.
type Flight = Shared<BoxFuture<'static, Result<Option<Identity>, Arc<AuthnError>>>>;

/// The kubelet server's authenticator; cheap to clone (the token cache is shared).
#[derive(Clone)]
pub struct Authenticator {
    config: AuthenticationConfig,
    client: Option<kube::Client>,
    cache: Arc<Mutex<LruExpireCache<TokenKey, Option<Identity>>>>,
    /// The reviews under way.
    flights: Arc<Mutex<HashMap<TokenKey, Flight>>>,
    /// The random key of the cache's token hashes.
    key: [u8; 32],
}

impl std::fmt::Debug for Authenticator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Authenticator")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

/// The token of an `Authorization: Bearer <token>` header, as the API server's bearer-token
/// authenticator reads it (`None`: no such header, another scheme, or an empty token).
pub fn bearer_token(headers: &HeaderMap) -> Option<String> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?.trim();
    let mut parts = value.splitn(3, ' ');
    let scheme = parts.next()?;
    let token = parts.next()?;
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then(|| token.to_string())
}

/// The prefix of the WebSocket subprotocol that carries a bearer token, base64url-encoded
/// without padding (kubelet's and the API server's WebSocket protocol authenticator).
pub const WEBSOCKET_BEARER_PROTOCOL: &str = "base64url.bearer.authorization.k8s.io.";

/// Whether a request is a WebSocket upgrade (`Upgrade: websocket` and `Connection` naming
/// `upgrade`).
fn is_websocket(headers: &HeaderMap) -> bool {
    let value = |h| headers.get(h).and_then(|v| v.to_str().ok()).unwrap_or("");
    value(header::UPGRADE).eq_ignore_ascii_case("websocket")
        && value(header::CONNECTION)
            .split(',')
            .any(|t| t.trim().eq_ignore_ascii_case("upgrade"))
}

/// The bearer token of a WebSocket upgrade's `Sec-WebSocket-Protocol` headers and the other
/// subprotocols asked for (what the request keeps once the token authenticated), as the API
/// server's WebSocket protocol authenticator reads them: `None` for another request or without
/// a token subprotocol; an error for two token subprotocols, a token that is not base64url or not
/// UTF-8, or a token without another subprotocol to answer with.
pub fn websocket_bearer_token(
    headers: &HeaderMap,
) -> Result<Option<(String, Vec<String>)>, AuthnError> {
    if !is_websocket(headers) {
        return Ok(None);
    }
    let (mut token, mut others) = (None, Vec::new());
    for value in headers.get_all(header::SEC_WEBSOCKET_PROTOCOL) {
        let Ok(value) = value.to_str() else { continue };
        for protocol in value.split(',').map(str::trim) {
            let Some(encoded) = protocol.strip_prefix(WEBSOCKET_BEARER_PROTOCOL) else {
                others.push(protocol.to_string());
                continue;
            };
            if token.is_some() {
                return Err(AuthnError::WebSocketProtocol(
                    "multiple base64.bearer.authorization tokens specified",
                ));
            }
            let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
                .decode(encoded)
                .map_err(|_| {
                    AuthnError::WebSocketProtocol(
                        "invalid base64.bearer.authorization token encoding",
                    )
                })?;
            let t = String::from_utf8(bytes).map_err(|_| {
                AuthnError::WebSocketProtocol("invalid base64.bearer.authorization token")
            })?;
            token = Some(t);
        }
    }
    match token.filter(|t| !t.is_empty()) {
        None => Ok(None),
        Some(_) if others.is_empty() => Err(AuthnError::WebSocketProtocol(
            "missing additional subprotocol",
        )),
        Some(t) => Ok(Some((t, others))),
    }
}

impl Authenticator {
    /// An authenticator for `config`; the token webhook needs the API server's `client`.
    pub fn new(
        config: AuthenticationConfig,
        client: Option<kube::Client>,
    ) -> Result<Self, AuthnError> {
        if config.webhook && client.is_none() {
            return Err(AuthnError::Config(
                "the token webhook (--authentication-token-webhook) needs an API server".into(),
            ));
        }
        let mut key = [0u8; 32];
        rustls::crypto::aws_lc_rs::default_provider()
            .secure_random
            .fill(&mut key)
            .map_err(|_| AuthnError::Config("no random bytes for the token cache".into()))?;
        Ok(Self {
            config,
            client,
            cache: Arc::new(Mutex::new(LruExpireCache::new(TOKEN_CACHE_SIZE))),
            flights: Arc::default(),
            key,
        })
    }

    /// Client certificates only: no token webhook, no anonymous requests.
    pub fn certificates_only() -> Self {
        Self::new(
            AuthenticationConfig {
                anonymous: false,
                webhook: false,
                ..Default::default()
            },
            None,
        )
        .expect("an authenticator without a webhook")
    }

    /// The configuration.
    pub fn config(&self) -> &AuthenticationConfig {
        &self.config
    }

    fn cache_key(&self, token: &str) -> TokenKey {
        let mut h = Sha256::new();
        h.update(self.key);
        h.update(u32::try_from(token.len()).unwrap_or(u32::MAX).to_be_bytes());
        h.update(token.as_bytes());
        h.finalize().into()
    }

    /// Reviews a bearer token: from the cache while its answer is fresh, else by a TokenReview
    /// (kubelet's: the token alone, no audiences) whose answer is cached; requests with the
    /// same token while it is under way wait for it and share its answer. `Some` with the
    /// reviewed user (without `system:authenticated`, which [`authenticate`](Self::authenticate)
    /// adds), `None` when the API server did not authenticate it; an error (not cached) when the
    /// review did not reach the API server or came back with an error.
    pub async fn review_token(&self, token: &str) -> Result<Option<Identity>, AuthnError> {
        let Some(client) = self.client.clone().filter(|_| self.config.webhook) else {
            return Err(AuthnError::Config("the token webhook is off".into()));
        };
        let key = self.cache_key(token);
        if let Some(hit) = self.cache.lock().expect("cache").get(&key, Instant::now()) {
            return Ok(hit);
        }
        let flight = {
            let mut flights = self.flights.lock().expect("flights");
            flights
                .entry(key)
                .or_insert_with(|| {
                    // its own task: it ends, and leaves the map, even when every request
                    // waiting for it is gone
                    let (this, token) = (self.clone(), token.to_string());
                    let review = tokio::spawn(async move {
                        let r = this
                            .review_uncached(&client, key, &token)
                            .await
                            .map_err(Arc::new);
                        this.flights.lock().expect("flights").remove(&key);
                        r
                    });
                    async move {
                        review.await.unwrap_or_else(|e| {
                            Err(Arc::new(AuthnError::Config(format!(
                                "the review's task: {e}"
                            ))))
                        })
                    }
                    .boxed()
                    .shared()
                })
                .clone()
        };
        flight
            .await
            .map_err(|e| Arc::try_unwrap(e).unwrap_or_else(AuthnError::Shared))
    }

    /// Sends the TokenReview of `token` and caches its answer under `key`.
    async fn review_uncached(
        &self,
        client: &kube::Client,
        key: TokenKey,
        token: &str,
    ) -> Result<Option<Identity>, AuthnError> {
        let now = Instant::now();
        // a review that ended between the caller's look into the cache and this one
        if let Some(hit) = self.cache.lock().expect("cache").get(&key, now) {
            return Ok(hit);
        }
        let review = TokenReview {
            spec: TokenReviewSpec {
                token: Some(token.to_string()),
                audiences: None,
            },
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
        let identity = if status.authenticated.unwrap_or(false) {
            let u = status.user.unwrap_or_default();
            Some(Identity {
                user: u.username.unwrap_or_default(),
                uid: u.uid.unwrap_or_default(),
                groups: u.groups.unwrap_or_default(),
                extra: u.extra.unwrap_or_default(),
            })
        } else if let Some(e) = status.error.filter(|e| !e.is_empty()) {
            return Err(AuthnError::Rejected(e));
        } else {
            None
        };
        let ttl = self.config.webhook_cache_ttl;
        if !ttl.is_zero() {
            self.cache
                .lock()
                .expect("cache")
                .add(key, identity.clone(), ttl, now);
        }
        Ok(identity)
    }

    /// Who sent a request: the `certificate`'s identity (the client certificate's, verified in
    /// the TLS handshake; `None` without one or without a common name), else the bearer token's
    /// (the `Authorization` header is removed once it authenticated), else the WebSocket
    /// subprotocol token's (that subprotocol is removed), else `system:anonymous` when anonymous
    /// requests are on. `Ok(None)`: no credentials and anonymous off; `Err`: a token was refused
    /// or could not be reviewed, and nothing else authenticated (anonymous or not).
    pub async fn authenticate(
        &self,
        certificate: Option<&Identity>,
        headers: &mut HeaderMap,
    ) -> Result<Option<Identity>, AuthnError> {
        if let Some(id) = certificate {
            return Ok(Some(id.clone()));
        }
        // each way in turn; the first that authenticates wins, else the first error fails
        let mut error = None;
        if self.config.webhook {
            if let Some(token) = bearer_token(headers) {
                match self.review_token(&token).await {
                    Ok(Some(id)) => {
                        headers.remove(header::AUTHORIZATION);
                        return Ok(Some(id.with_authenticated_group()));
                    }
                    Ok(None) => error = Some(AuthnError::InvalidToken),
                    Err(e) => error = Some(e),
                }
            }
            match websocket_bearer_token(headers) {
                Ok(Some((token, others))) => match self.review_token(&token).await {
                    Ok(Some(id)) => {
                        if let Ok(v) = HeaderValue::from_str(&others.join(",")) {
                            headers.insert(header::SEC_WEBSOCKET_PROTOCOL, v);
                        }
                        return Ok(Some(id.with_authenticated_group()));
                    }
                    Ok(None) => {
                        error.get_or_insert(AuthnError::InvalidToken);
                    }
                    Err(e) => {
                        error.get_or_insert(e);
                    }
                },
                Ok(None) => {}
                Err(e) => {
                    error.get_or_insert(e);
                }
            }
        }
        match error {
            Some(e) => Err(e),
            None => Ok(self.config.anonymous.then(Identity::anonymous)),
        }
    }

    /// Authenticates a request ([`authenticate`](Self::authenticate)): its identity, else
    /// kubelet's answer, `401` `Unauthorized` (an error is logged).
    pub async fn check(
        &self,
        certificate: Option<&Identity>,
        headers: &mut HeaderMap,
    ) -> Result<Identity, Response> {
        match self.authenticate(certificate, headers).await {
            Ok(Some(id)) => Ok(id),
            Ok(None) => Err(unauthorized()),
            Err(e) => {
                tracing::error!(error = %e, "Unable to authenticate the request due to an error");
                Err(unauthorized())
            }
        }
    }
}

fn unauthorized() -> Response {
    (
        StatusCode::UNAUTHORIZED,
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        "Unauthorized",
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(authorization: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(header::AUTHORIZATION, authorization.parse().unwrap());
        h
    }

    #[test]
    fn bearer_tokens_are_read_as_the_api_server_reads_them() {
        let t = |v: &str| bearer_token(&headers(v));
        assert_eq!(t("Bearer abc").as_deref(), Some("abc"));
        assert_eq!(t("bearer abc").as_deref(), Some("abc"));
        assert_eq!(t("  Bearer abc  ").as_deref(), Some("abc"));
        assert_eq!(t("Bearer abc def").as_deref(), Some("abc"));
        // an empty token (also with two spaces), another scheme, no token
        assert_eq!(t("Bearer  abc"), None);
        assert_eq!(t("Basic dXNlcjpw"), None);
        assert_eq!(t("Bearer"), None);
        assert_eq!(bearer_token(&HeaderMap::new()), None);
    }

    #[test]
    fn websocket_tokens_are_read_from_the_subprotocols() {
        let ws = |protocols: &[&str]| {
            let mut h = HeaderMap::new();
            h.insert(header::UPGRADE, "websocket".parse().unwrap());
            h.insert(header::CONNECTION, "keep-alive, Upgrade".parse().unwrap());
            for p in protocols {
                h.append(header::SEC_WEBSOCKET_PROTOCOL, p.parse().unwrap());
            }
            h
        };
        // "t-dave" base64url without padding
        let dave = "base64url.bearer.authorization.k8s.io.dC1kYXZl";
        let got = websocket_bearer_token(&ws(&[&format!("v5.channel.k8s.io, {dave}")])).unwrap();
        assert_eq!(
            got,
            Some(("t-dave".to_string(), vec!["v5.channel.k8s.io".to_string()]))
        );
        // over two header lines too
        let got = websocket_bearer_token(&ws(&[dave, "v4.channel.k8s.io"])).unwrap();
        assert_eq!(got.unwrap().1, ["v4.channel.k8s.io"]);
        // no token subprotocol, or not a WebSocket upgrade
        assert_eq!(
            websocket_bearer_token(&ws(&["v5.channel.k8s.io"])).unwrap(),
            None
        );
        let mut plain = ws(&[dave, "v5.channel.k8s.io"]);
        plain.remove(header::UPGRADE);
        assert_eq!(websocket_bearer_token(&plain).unwrap(), None);
        // the API server's refusals
        for (protocols, words) in [
            (vec![dave], "missing additional subprotocol"),
            (vec![dave, dave, "v5.channel.k8s.io"], "multiple"),
            (
                vec![
                    "base64url.bearer.authorization.k8s.io.!!",
                    "v5.channel.k8s.io",
                ],
                "encoding",
            ),
            // 0xff is not UTF-8
            (
                vec![
                    "base64url.bearer.authorization.k8s.io._w",
                    "v5.channel.k8s.io",
                ],
                "invalid base64.bearer.authorization token",
            ),
        ] {
            let e = websocket_bearer_token(&ws(&protocols)).unwrap_err();
            assert!(e.to_string().contains(words), "{protocols:?}: {e}");
        }
    }

    #[test]
    fn the_authenticated_group_is_added_as_the_api_server_adds_it() {
        let id = |user: &str, groups: &[&str]| {
            Identity {
                user: user.into(),
                groups: groups.iter().map(|g| g.to_string()).collect(),
                ..Default::default()
            }
            .with_authenticated_group()
            .groups
        };
        assert_eq!(id("alice", &["dev"]), ["dev", "system:authenticated"]);
        assert_eq!(
            id("alice", &["system:authenticated", "dev"]),
            ["system:authenticated", "dev"]
        );
        assert_eq!(
            id("alice", &["system:unauthenticated"]),
            ["system:unauthenticated"]
        );
        assert_eq!(id("system:anonymous", &[]), Vec::<String>::new());
        assert_eq!(
            Identity::anonymous().groups,
            vec!["system:unauthenticated".to_string()]
        );
    }

    #[test]
    fn the_webhook_needs_a_client_and_keys_differ() {
        let e = Authenticator::new(
            AuthenticationConfig {
                webhook: true,
                ..Default::default()
            },
            None,
        )
        .unwrap_err();
        assert!(e.to_string().contains("needs an API server"), "{e}");
        let a = Authenticator::certificates_only();
        assert_eq!(a.cache_key("t"), a.cache_key("t"));
        assert_ne!(a.cache_key("t"), a.cache_key("u"));
        // another authenticator hashes with another key
        assert_ne!(
            a.cache_key("t"),
            Authenticator::certificates_only().cache_key("t")
        );
    }

    #[tokio::test]
    async fn without_the_webhook_a_token_is_not_looked_at() {
        let anonymous = Authenticator::new(AuthenticationConfig::default(), None).unwrap();
        let mut h = headers("Bearer abc");
        let id = anonymous.authenticate(None, &mut h).await.unwrap();
        assert_eq!(id, Some(Identity::anonymous()));
        assert!(h.contains_key(header::AUTHORIZATION));
        let none = Authenticator::certificates_only();
        assert_eq!(none.authenticate(None, &mut h).await.unwrap(), None);
        let cert = Identity {
            user: "bob".into(),
            ..Default::default()
        };
        assert_eq!(
            none.authenticate(Some(&cert), &mut h).await.unwrap(),
            Some(cert)
        );
    }
}
