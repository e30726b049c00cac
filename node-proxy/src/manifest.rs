//! Parsing `Service` and `EndpointSlice` manifests: YAML or JSON, several documents per file,
//! other kinds ignored.

use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use node_core::SourceError;

/// The services and slices found in manifests.
#[derive(Debug, Clone, Default)]
pub struct Manifests {
    /// Every `Service`.
    pub services: Vec<Service>,
    /// Every `EndpointSlice`.
    pub slices: Vec<EndpointSlice>,
}

/// Parse one file's text (`origin` names it in errors). A document that is not a valid Service or
/// EndpointSlice fails the call with the document's index; other kinds are ignored.
pub fn parse_manifests(text: &str, origin: &str) -> Result<Manifests, SourceError> {
    let docs: Vec<serde_json::Value> =
        serde_saphyr::from_multiple(text).map_err(|e| SourceError::InvalidManifest {
            origin: origin.to_string(),
            field: "-".into(),
            message: e.to_string(),
        })?;
    let mut out = Manifests::default();
    for (i, doc) in docs.into_iter().enumerate() {
        if doc.is_null() {
            continue;
        }
        let kind = doc.get("kind").and_then(|k| k.as_str()).unwrap_or("");
        let bad = |field: &str, e: String| SourceError::InvalidManifest {
            origin: format!("{origin}[{i}]"),
            field: field.into(),
            message: e,
        };
        match kind {
            "Service" => out
                .services
                .push(serde_json::from_value(doc).map_err(|e| bad("Service", e.to_string()))?),
            "EndpointSlice" => out.slices.push(
                serde_json::from_value(doc).map_err(|e| bad("EndpointSlice", e.to_string()))?,
            ),
            _ => {}
        }
    }
    Ok(out)
}
