//! [`HttpSource`]: pods from a URL (a Pod, a PodList, or a multi-document YAML), polled with
//! `If-None-Match` so an unchanged answer costs a 304.

use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use k8s_openapi::api::core::v1::Pod;
use node_core::{PodEvent, PodSource, PodStream, SourceError};
use tokio::sync::mpsc;

use crate::manifest;

/// Settings of an [`HttpSource`].
#[derive(Debug, Clone)]
pub struct HttpSourceConfig {
    /// The node name, part of the pods' derived UIDs.
    pub node_name: String,
    /// How often the URL is fetched (the kubelet's `httpCheckFrequency`).
    pub period: Duration,
    /// The deadline of one fetch.
    pub timeout: Duration,
}

impl Default for HttpSourceConfig {
    fn default() -> Self {
        Self {
            node_name: String::new(),
            period: Duration::from_secs(20),
            timeout: Duration::from_secs(10),
        }
    }
}

/// Pods from an `http://` URL, fetched every [`period`](HttpSourceConfig::period).
///
/// The answer may be a Pod, a PodList (JSON or YAML) or several YAML documents. The server's
/// `ETag` is sent back as `If-None-Match`; a `304 Not Modified` changes nothing. A failed fetch or
/// a broken answer is reported and keeps the pods of the last good answer.
pub struct HttpSource {
    url: String,
    config: HttpSourceConfig,
}

impl HttpSource {
    /// Poll `url` with the default settings.
    pub fn new(url: impl Into<String>) -> Self {
        Self::with_config(url, HttpSourceConfig::default())
    }

    /// Poll `url` with these settings.
    pub fn with_config(url: impl Into<String>, config: HttpSourceConfig) -> Self {
        Self {
            url: url.into(),
            config,
        }
    }
}

/// One fetch: `Ok(None)` when unchanged (304).
async fn fetch(
    client: &Client<hyper_util::client::legacy::connect::HttpConnector, Empty<Bytes>>,
    url: &str,
    etag: Option<&str>,
    timeout: Duration,
) -> Result<Option<(Option<String>, Bytes)>, String> {
    let mut req = http::Request::get(url);
    if let Some(etag) = etag {
        req = req.header(http::header::IF_NONE_MATCH, etag);
    }
    let req = req.body(Empty::new()).map_err(|e| e.to_string())?;
    let work = async {
        let resp = client
            .request(req)
            .await
            .map_err(|e| format!("request failed: {e}"))?;
        let status = resp.status();
        if status == http::StatusCode::NOT_MODIFIED {
            return Ok(None);
        }
        if !status.is_success() {
            return Err(format!("answered {status}"));
        }
        let etag = resp
            .headers()
            .get(http::header::ETAG)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        let body = resp
            .into_body()
            .collect()
            .await
            .map_err(|e| format!("reading the body: {e}"))?
            .to_bytes();
        Ok(Some((etag, body)))
    };
    tokio::time::timeout(timeout, work)
        .await
        .map_err(|_| format!("no answer within {timeout:?}"))?
}

/// Decode an answer into pods with their defaults; errors name the URL and document.
pub(crate) fn decode_answer(
    url: &str,
    node_name: &str,
    body: &[u8],
) -> (Vec<Pod>, Vec<SourceError>) {
    let text = String::from_utf8_lossy(body);
    let json = text.trim_start().starts_with('{');
    let decoded = manifest::decode(url, &text, json);
    let source = format!("url:{url}");
    let pods = decoded
        .pods
        .into_iter()
        .map(|(_, mut p)| {
            manifest::apply_static_defaults(&mut p, node_name, &source);
            p
        })
        .collect();
    (pods, decoded.errors)
}

impl PodSource for HttpSource {
    fn name(&self) -> &str {
        "http"
    }

    fn watch(&self) -> PodStream {
        let (tx, rx) = mpsc::unbounded_channel();
        let url = self.url.clone();
        let config = self.config.clone();
        tokio::spawn(async move {
            let client = Client::builder(TokioExecutor::new()).build_http::<Empty<Bytes>>();
            let mut etag: Option<String> = None;
            let mut last: Option<Vec<Pod>> = None;
            let mut ticker = tokio::time::interval(config.period);
            ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = tx.closed() => return,
                    _ = ticker.tick() => {}
                }
                let mut out: Vec<Result<PodEvent, SourceError>> = Vec::new();
                match fetch(&client, &url, etag.as_deref(), config.timeout).await {
                    Ok(None) => {}
                    Ok(Some((new_etag, body))) => {
                        let (pods, errors) = decode_answer(&url, &config.node_name, &body);
                        let broken = !errors.is_empty();
                        out.extend(errors.into_iter().map(Err));
                        // a broken answer keeps the last good pods; the first answer gives what it can
                        if !(broken && last.is_some()) && last.as_ref() != Some(&pods) {
                            out.push(Ok(PodEvent::Init));
                            out.extend(pods.iter().cloned().map(|p| Ok(PodEvent::InitApply(p))));
                            out.push(Ok(PodEvent::InitDone));
                            last = Some(pods);
                        }
                        if !broken {
                            etag = new_etag;
                        }
                    }
                    Err(message) => out.push(Err(SourceError::Remote {
                        origin: url.clone(),
                        message,
                    })),
                }
                for e in out {
                    if tx.send(e).is_err() {
                        return;
                    }
                }
            }
        });
        tokio_stream::wrappers::UnboundedReceiverStream::new(rx).boxed()
    }
}
