//! [`ApiServerSource`]: the pods bound to this node, watched on the API server with kube-runtime's
//! watcher (re-list on expiry, default exponential back-off on errors).

use futures::StreamExt;
use k8s_openapi::api::core::v1::Pod;
use kube::runtime::{WatchStreamExt, watcher};
use node_core::{PodEvent, PodSource, PodStream, SourceError};

/// Pods with `spec.nodeName == <node>` from the API server.
///
/// Every (re)list arrives as a snapshot, watch events as applies and deletes; errors are
/// reported as [`SourceError::Remote`] and the watcher retries with back-off.
pub struct ApiServerSource {
    client: kube::Client,
    node_name: String,
}

impl ApiServerSource {
    /// Watch the pods bound to `node_name` with this client.
    pub fn new(client: kube::Client, node_name: impl Into<String>) -> Self {
        Self {
            client,
            node_name: node_name.into(),
        }
    }

    /// The field selector used: `spec.nodeName=<node>`.
    pub fn field_selector(&self) -> String {
        format!("spec.nodeName={}", self.node_name)
    }
}

/// Translate one watcher item into a pod event.
pub(crate) fn map_event(
    item: Result<watcher::Event<Pod>, watcher::Error>,
    origin: &str,
) -> Result<PodEvent, SourceError> {
    match item {
        Ok(watcher::Event::Init) => Ok(PodEvent::Init),
        Ok(watcher::Event::InitApply(p)) => Ok(PodEvent::InitApply(p)),
        Ok(watcher::Event::InitDone) => Ok(PodEvent::InitDone),
        Ok(watcher::Event::Apply(p)) => Ok(PodEvent::Apply(p)),
        Ok(watcher::Event::Delete(p)) => Ok(PodEvent::Delete(p)),
        Err(e) => Err(SourceError::Remote {
            origin: origin.to_string(),
            message: e.to_string(),
        }),
    }
}

impl PodSource for ApiServerSource {
    fn name(&self) -> &str {
        "api"
    }

    fn watch(&self) -> PodStream {
        let api: kube::Api<Pod> = kube::Api::all(self.client.clone());
        let config = watcher::Config::default().fields(&self.field_selector());
        let origin = format!("api-server pods {}", self.field_selector());
        watcher(api, config)
            .default_backoff()
            .map(move |item| map_event(item, &origin))
            .boxed()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn watcher_events_map_one_to_one() {
        let p = Pod::default();
        assert_eq!(
            map_event(Ok(watcher::Event::Init), "o").unwrap(),
            PodEvent::Init
        );
        assert_eq!(
            map_event(Ok(watcher::Event::InitApply(p.clone())), "o").unwrap(),
            PodEvent::InitApply(p.clone())
        );
        assert_eq!(
            map_event(Ok(watcher::Event::InitDone), "o").unwrap(),
            PodEvent::InitDone
        );
        assert_eq!(
            map_event(Ok(watcher::Event::Apply(p.clone())), "o").unwrap(),
            PodEvent::Apply(p.clone())
        );
        assert_eq!(
            map_event(Ok(watcher::Event::Delete(p.clone())), "o").unwrap(),
            PodEvent::Delete(p)
        );
        let e = map_event(Err(watcher::Error::NoResourceVersion), "pods").unwrap_err();
        assert!(e.to_string().starts_with("pods: "), "{e}");
    }
}
