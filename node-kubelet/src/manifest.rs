//! Pod manifests as text (YAML, multi-document YAML, JSON): decoding into `Pod`s with errors that
//! name the document and the field, unknown-field warnings, validation, and the deterministic UID
//! the kubelet gives a static pod.

use k8s_openapi::api::core::v1::Pod;
use serde_json::Value;
use sha2::{Digest, Sha256};

use node_core::SourceError;

use crate::node::quantity;

/// A problem found in a manifest: an error that rejects a document, or a warning (an unknown
/// field) that does not stop the pod.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ManifestIssue {
    /// The file or URL, with the document index (`/etc/manifests/web.yaml#0`).
    pub origin: String,
    /// The field at fault (`spec.containers[0].imagePullPolicyy`).
    pub field: String,
    /// What is suspicious.
    pub message: String,
}

impl std::fmt::Display for ManifestIssue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}: {}", self.origin, self.field, self.message)
    }
}

/// The outcome of decoding one manifest text.
#[derive(Debug, Default)]
pub struct Decoded {
    /// The valid pods, with the index of the document each came from.
    pub pods: Vec<(usize, Pod)>,
    /// The documents that are not valid pods (each an [`SourceError::InvalidManifest`]).
    pub errors: Vec<SourceError>,
    /// Unknown fields and other suspicious things in otherwise valid pods.
    pub warnings: Vec<ManifestIssue>,
    /// Documents of other kinds, skipped (`origin`, `kind`).
    pub ignored: Vec<(String, String)>,
}

fn invalid(origin: &str, field: impl Into<String>, message: impl Into<String>) -> SourceError {
    SourceError::InvalidManifest {
        origin: origin.to_string(),
        field: field.into(),
        message: message.into(),
    }
}

/// Split a YAML stream into its documents at `---` lines (the marker must start the line, as the
/// YAML spec says), so a broken document does not hide the others.
fn split_yaml_documents(text: &str) -> Vec<String> {
    // each document starts with as many empty lines as precede it in the file, so the parser's
    // line numbers are the file's
    let mut docs = vec![String::new()];
    for (index, line) in text.split_inclusive('\n').enumerate() {
        let is_marker =
            line.starts_with("---") && line[3..].chars().next().is_none_or(|c| c.is_whitespace());
        if is_marker {
            docs.push(format!("{}{}", "\n".repeat(index), &line[3..]));
        } else if line.starts_with("...") && line[3..].trim().is_empty() {
            docs.push("\n".repeat(index + 1));
        } else {
            docs.last_mut().expect("never empty").push_str(line);
        }
    }
    docs
}

fn is_blank_yaml(doc: &str) -> bool {
    doc.lines().all(|l| {
        let t = l.trim();
        t.is_empty() || t.starts_with('#') || t.starts_with('%')
    })
}

/// Decode a manifest text. `json` selects JSON decoding (one object); otherwise the text is a YAML
/// stream of any number of documents. `origin` names the file or URL in errors.
pub fn decode(origin: &str, text: &str, json: bool) -> Decoded {
    let mut out = Decoded::default();
    let docs: Vec<(usize, Result<Value, String>)> = if json {
        vec![(
            0,
            serde_json::from_str::<Value>(text).map_err(|e| e.to_string()),
        )]
    } else {
        split_yaml_documents(text)
            .into_iter()
            .filter(|d| !is_blank_yaml(d))
            .enumerate()
            .map(|(i, d)| {
                (
                    i,
                    parse_yaml_document(&d).map_err(|e| first_line(&e.to_string())),
                )
            })
            .collect()
    };
    for (index, doc) in docs {
        let doc_origin = format!("{origin}#{index}");
        match doc {
            Err(message) => out.errors.push(invalid(
                &doc_origin,
                "-",
                format!(
                    "not valid {}: {message}",
                    if json { "JSON" } else { "YAML" }
                ),
            )),
            Ok(Value::Null) => {}
            Ok(value) => decode_object(&doc_origin, index, value, &mut out),
        }
    }
    out
}

/// One YAML document as a JSON value. Integers written with a leading zero (`0600`, YAML 1.1
/// octal, which YAML 1.2 does not have) stay strings here; [`yaml11_octal_modes`] turns those of
/// the file mode fields into numbers as kubectl's YAML 1.1 reading does, and anywhere else they
/// fail to decode with the field named.
fn parse_yaml_document(doc: &str) -> Result<Value, serde_saphyr::Error> {
    let mut options = serde_saphyr::Options::default();
    options.leading_zero_numbers_as_strings = true;
    let mut value: Value = serde_saphyr::from_str_with_options(doc, options)?;
    yaml11_octal_modes(&mut value);
    Ok(value)
}

/// The file mode fields of a pod's volumes, which manifests write in octal: `defaultMode` of
/// configMap, secret, projected and downwardAPI volumes and `mode` of their items (projected
/// sources included).
fn yaml11_octal_modes(doc: &mut Value) {
    let pods: Vec<&mut Value> = match doc.get("kind").and_then(Value::as_str) {
        Some("Pod") => vec![doc],
        Some("PodList" | "List") => match doc.get_mut("items") {
            Some(Value::Array(items)) => items.iter_mut().collect(),
            _ => vec![],
        },
        _ => vec![],
    };
    let mode_fields = |source: &mut Value| {
        if let Some(m) = source.get_mut("defaultMode") {
            octal_mode(m);
        }
        if let Some(Value::Array(items)) = source.get_mut("items") {
            for m in items.iter_mut().filter_map(|i| i.get_mut("mode")) {
                octal_mode(m);
            }
        }
    };
    for pod in pods {
        let Some(Value::Array(volumes)) = pod.pointer_mut("/spec/volumes") else {
            continue;
        };
        for volume in volumes {
            for kind in ["configMap", "secret", "projected", "downwardAPI"] {
                if let Some(source) = volume.get_mut(kind) {
                    mode_fields(source);
                }
            }
            if let Some(Value::Array(sources)) = volume.pointer_mut("/projected/sources") {
                for projection in sources {
                    for kind in ["configMap", "secret", "downwardAPI"] {
                        if let Some(source) = projection.get_mut(kind) {
                            mode_fields(source);
                        }
                    }
                }
            }
        }
    }
}

/// A YAML 1.1 octal integer left as a string (`"0600"`) becomes its number (384); anything
/// else is left alone (`0800` stays a string and is reported as not a number).
fn octal_mode(v: &mut Value) {
    if let Value::String(s) = v
        && s.len() > 1
        && s.starts_with('0')
        && s.bytes().all(|b| (b'0'..=b'7').contains(&b))
        && let Ok(n) = i64::from_str_radix(&s[1..], 8)
    {
        *v = Value::from(n);
    }
}

fn first_line(s: &str) -> String {
    s.lines().next().unwrap_or(s).trim().to_string()
}

fn decode_object(origin: &str, index: usize, value: Value, out: &mut Decoded) {
    let Value::Object(map) = &value else {
        out.errors
            .push(invalid(origin, "-", "document is not a mapping"));
        return;
    };
    let kind = match map.get("kind") {
        Some(Value::String(k)) => k.clone(),
        Some(_) => return out.errors.push(invalid(origin, "kind", "must be a string")),
        None => {
            return out.errors.push(invalid(
                origin,
                "kind",
                "missing: only kind Pod (apiVersion v1) is accepted",
            ));
        }
    };
    let api_version = map.get("apiVersion").and_then(Value::as_str).unwrap_or("");
    match kind.as_str() {
        "Pod" => {}
        "PodList" | "List" => {
            let items = map
                .get("items")
                .and_then(Value::as_array)
                .cloned()
                .unwrap_or_default();
            for (i, item) in items.into_iter().enumerate() {
                let item_origin = format!("{origin}.items[{i}]");
                decode_object(&item_origin, index, item, out);
            }
            return;
        }
        other => {
            tracing::debug!(%origin, kind = other, "not a pod, ignored");
            out.ignored.push((origin.to_string(), other.to_string()));
            return;
        }
    }
    if api_version != "v1" {
        return out.errors.push(invalid(
            origin,
            "apiVersion",
            format!("{api_version:?} is not v1 (kind Pod is core/v1)"),
        ));
    }
    let mut value = value;
    normalise_quantities(&mut value);
    let pod: Pod = match serde_path_to_error::deserialize(&value) {
        Ok(pod) => pod,
        Err(e) => {
            let field = e.path().to_string();
            let field = if field == "." { "-".to_string() } else { field };
            return out
                .errors
                .push(invalid(origin, field, e.into_inner().to_string()));
        }
    };
    if let Err(e) = validate(origin, &pod) {
        return out.errors.push(e);
    }
    let known = serde_json::to_value(&pod).unwrap_or(Value::Null);
    for field in unknown_fields(&value, &known, "") {
        out.warnings.push(ManifestIssue {
            origin: origin.to_string(),
            field,
            message: "unknown field, ignored".into(),
        });
    }
    out.pods.push((index, pod));
}

/// Kubernetes accepts bare numbers for quantities (`cpu: 1`); k8s-openapi wants strings.
fn normalise_quantities(value: &mut Value) {
    match value {
        Value::Object(map) => {
            for (key, v) in map.iter_mut() {
                let quantity_map = matches!(
                    key.as_str(),
                    "limits" | "requests" | "overhead" | "capacity"
                );
                match v {
                    Value::Object(inner) if quantity_map => {
                        for q in inner.values_mut() {
                            if let Value::Number(n) = q {
                                *q = Value::String(n.to_string());
                            }
                        }
                    }
                    Value::Object(_) | Value::Array(_) => normalise_quantities(v),
                    Value::Number(n) if key == "sizeLimit" => *v = Value::String(n.to_string()),
                    _ => {}
                }
            }
        }
        Value::Array(items) => items.iter_mut().for_each(normalise_quantities),
        _ => {}
    }
}

/// The fields present in `given` (the manifest) that decoding dropped (absent from `known`).
fn unknown_fields(given: &Value, known: &Value, path: &str) -> Vec<String> {
    let join = |k: &str| {
        if path.is_empty() {
            k.to_string()
        } else {
            format!("{path}.{k}")
        }
    };
    match (given, known) {
        (Value::Object(g), Value::Object(k)) => g
            .iter()
            .filter(|(_, v)| !v.is_null())
            .flat_map(|(key, v)| match k.get(key) {
                Some(kv) => unknown_fields(v, kv, &join(key)),
                None if is_free_form(path) => vec![],
                None => vec![join(key)],
            })
            .collect(),
        (Value::Array(g), Value::Array(k)) => g
            .iter()
            .zip(k.iter())
            .enumerate()
            .flat_map(|(i, (gv, kv))| unknown_fields(gv, kv, &format!("{path}[{i}]")))
            .collect(),
        _ => vec![],
    }
}

/// Maps whose keys are data, not fields (labels, annotations, resources, node selector...).
fn is_free_form(path: &str) -> bool {
    let last = path.rsplit('.').next().unwrap_or(path);
    matches!(
        last,
        "labels" | "annotations" | "nodeSelector" | "limits" | "requests" | "overhead"
    )
}

fn is_dns_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

fn is_dns_subdomain(s: &str) -> bool {
    !s.is_empty() && s.len() <= 253 && s.split('.').all(is_dns_label)
}

/// Validate what the kubelet needs to run a pod; the error names the field.
pub fn validate(origin: &str, pod: &Pod) -> Result<(), SourceError> {
    let name = pod.metadata.name.as_deref().unwrap_or("");
    if name.is_empty() {
        return Err(invalid(origin, "metadata.name", "required"));
    }
    if !is_dns_subdomain(name) {
        return Err(invalid(
            origin,
            "metadata.name",
            format!("{name:?} is not a DNS subdomain (lowercase letters, digits, '-', '.')"),
        ));
    }
    if let Some(ns) = &pod.metadata.namespace
        && !is_dns_label(ns)
    {
        return Err(invalid(
            origin,
            "metadata.namespace",
            format!("{ns:?} is not a DNS label"),
        ));
    }
    let Some(spec) = &pod.spec else {
        return Err(invalid(origin, "spec", "required"));
    };
    if spec.containers.is_empty() {
        return Err(invalid(
            origin,
            "spec.containers",
            "at least one container is required",
        ));
    }
    if let Some(policy) = &spec.restart_policy
        && !matches!(policy.as_str(), "Always" | "OnFailure" | "Never")
    {
        return Err(invalid(
            origin,
            "spec.restartPolicy",
            format!("{policy:?} is not Always, OnFailure or Never"),
        ));
    }
    if let Some(policy) = &spec.dns_policy
        && !matches!(
            policy.as_str(),
            "ClusterFirst" | "ClusterFirstWithHostNet" | "Default" | "None"
        )
    {
        return Err(invalid(
            origin,
            "spec.dnsPolicy",
            format!("{policy:?} is not ClusterFirst, ClusterFirstWithHostNet, Default or None"),
        ));
    }
    validate_modes(origin, spec)?;
    let mut names = std::collections::BTreeSet::new();
    let all = spec
        .init_containers
        .iter()
        .flatten()
        .enumerate()
        .map(|(i, c)| (format!("spec.initContainers[{i}]"), c))
        .chain(
            spec.containers
                .iter()
                .enumerate()
                .map(|(i, c)| (format!("spec.containers[{i}]"), c)),
        );
    for (field, c) in all {
        if !is_dns_label(&c.name) {
            return Err(invalid(
                origin,
                format!("{field}.name"),
                format!("{:?} is not a DNS label", c.name),
            ));
        }
        if !names.insert(c.name.clone()) {
            return Err(invalid(
                origin,
                format!("{field}.name"),
                format!("duplicate container name {:?}", c.name),
            ));
        }
        if c.image.as_deref().unwrap_or("").is_empty() {
            return Err(invalid(origin, format!("{field}.image"), "required"));
        }
        if let Some(p) = &c.image_pull_policy
            && !matches!(p.as_str(), "Always" | "IfNotPresent" | "Never")
        {
            return Err(invalid(
                origin,
                format!("{field}.imagePullPolicy"),
                format!("{p:?} is not Always, IfNotPresent or Never"),
            ));
        }
        if let Some(r) = &c.resources {
            for (kind, list) in [("limits", &r.limits), ("requests", &r.requests)] {
                for (res, q) in list.iter().flatten() {
                    if let Err(e) = quantity::value(&q.0) {
                        return Err(invalid(
                            origin,
                            format!("{field}.resources.{kind}.{res}"),
                            e.to_string(),
                        ));
                    }
                    if q.0.starts_with('-') {
                        return Err(invalid(
                            origin,
                            format!("{field}.resources.{kind}.{res}"),
                            "must not be negative",
                        ));
                    }
                }
            }
        }
        for (i, p) in c.ports.iter().flatten().enumerate() {
            if !(1..=65535).contains(&p.container_port) {
                return Err(invalid(
                    origin,
                    format!("{field}.ports[{i}].containerPort"),
                    format!("{} is not in 1-65535", p.container_port),
                ));
            }
            if let Some(hp) = p.host_port
                && !(0..=65535).contains(&hp)
            {
                return Err(invalid(
                    origin,
                    format!("{field}.ports[{i}].hostPort"),
                    format!("{hp} is not in 0-65535"),
                ));
            }
        }
    }
    Ok(())
}

/// File modes of volumes must be within 0 and 0777, as the API server validates them.
fn validate_modes(
    origin: &str,
    spec: &k8s_openapi::api::core::v1::PodSpec,
) -> Result<(), SourceError> {
    let check = |field: String, mode: Option<i32>| match mode {
        Some(m) if !(0..=0o777).contains(&m) => Err(invalid(
            origin,
            field,
            format!("{m} (octal {m:o}) is not a file mode between 0 and 0777"),
        )),
        _ => Ok(()),
    };
    let items = |field: &str, items: Option<&Vec<k8s_openapi::api::core::v1::KeyToPath>>| {
        for (i, item) in items.into_iter().flatten().enumerate() {
            check(format!("{field}.items[{i}].mode"), item.mode)?;
        }
        Ok::<(), SourceError>(())
    };
    let downward =
        |field: &str, items: Option<&Vec<k8s_openapi::api::core::v1::DownwardAPIVolumeFile>>| {
            for (i, item) in items.into_iter().flatten().enumerate() {
                check(format!("{field}.items[{i}].mode"), item.mode)?;
            }
            Ok::<(), SourceError>(())
        };
    for (i, v) in spec.volumes.iter().flatten().enumerate() {
        let field = format!("spec.volumes[{i}]");
        if let Some(c) = &v.config_map {
            check(format!("{field}.configMap.defaultMode"), c.default_mode)?;
            items(&format!("{field}.configMap"), c.items.as_ref())?;
        }
        if let Some(s) = &v.secret {
            check(format!("{field}.secret.defaultMode"), s.default_mode)?;
            items(&format!("{field}.secret"), s.items.as_ref())?;
        }
        if let Some(d) = &v.downward_api {
            check(format!("{field}.downwardAPI.defaultMode"), d.default_mode)?;
            downward(&format!("{field}.downwardAPI"), d.items.as_ref())?;
        }
        if let Some(p) = &v.projected {
            check(format!("{field}.projected.defaultMode"), p.default_mode)?;
            for (j, s) in p.sources.iter().flatten().enumerate() {
                let field = format!("{field}.projected.sources[{j}]");
                if let Some(c) = &s.config_map {
                    items(&format!("{field}.configMap"), c.items.as_ref())?;
                }
                if let Some(c) = &s.secret {
                    items(&format!("{field}.secret"), c.items.as_ref())?;
                }
                if let Some(d) = &s.downward_api {
                    downward(&format!("{field}.downwardAPI"), d.items.as_ref())?;
                }
            }
        }
    }
    Ok(())
}

/// The UID the kubelet gives a pod from a file or URL that names none: a hash of the pod's content
/// (its canonical JSON), the node name and the source (`file:<path>` or `url:<url>`), so the same
/// manifest on the same node always yields the same UID, and an edit yields a new one.
pub fn static_pod_uid(pod: &Pod, node_name: &str, source: &str) -> String {
    let mut hasher = Sha256::new();
    hasher.update(serde_json::to_vec(pod).unwrap_or_default());
    hasher.update(format!("host:{node_name}"));
    hasher.update(source.as_bytes());
    let digest = hasher.finalize();
    hex::encode(&digest[..16])
}

/// The annotation naming where a static pod came from (`file` or `http`), as the kubelet sets it.
pub const CONFIG_SOURCE_ANNOTATION: &str = "kubernetes.io/config.source";
/// The annotation holding a static pod's content hash (its UID), as the kubelet sets it; the
/// mirror pod carries it as `kubernetes.io/config.mirror`.
pub const CONFIG_HASH_ANNOTATION: &str = "kubernetes.io/config.hash";

/// Give a static pod its defaults as the kubelet does: namespace `default`, the deterministic
/// UID (computed first, from the pod as written), then the name suffix `-<nodeName>` (the node
/// name lowercased; none when `node_name` is empty), `spec.nodeName`, and the annotations
/// [`CONFIG_SOURCE_ANNOTATION`] (`file` for a `file:` source, `http` for a `url:` one) and
/// [`CONFIG_HASH_ANNOTATION`] (the UID).
pub fn apply_static_defaults(pod: &mut Pod, node_name: &str, source: &str) {
    if pod.metadata.namespace.as_deref().unwrap_or("").is_empty() {
        pod.metadata.namespace = Some("default".into());
    }
    if pod.metadata.uid.as_deref().unwrap_or("").is_empty() {
        pod.metadata.uid = Some(static_pod_uid(pod, node_name, source));
    }
    let uid = pod.metadata.uid.clone().unwrap_or_default();
    if !node_name.is_empty() {
        let suffix = format!("-{}", node_name.to_lowercase());
        if let Some(name) = pod.metadata.name.as_mut()
            && !name.ends_with(&suffix)
        {
            name.push_str(&suffix);
        }
        if let Some(spec) = pod.spec.as_mut() {
            spec.node_name = Some(node_name.to_string());
        }
    }
    let kind = if source.starts_with("url:") {
        "http"
    } else {
        "file"
    };
    let annotations = pod
        .metadata
        .annotations
        .get_or_insert_with(Default::default);
    annotations.insert(CONFIG_SOURCE_ANNOTATION.into(), kind.into());
    annotations.insert(CONFIG_HASH_ANNOTATION.into(), uid);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn field_of(e: &SourceError) -> (&str, &str) {
        match e {
            SourceError::InvalidManifest { origin, field, .. } => (origin, field),
            other => panic!("unexpected {other}"),
        }
    }

    const GOOD: &str = "apiVersion: v1\nkind: Pod\nmetadata: {name: a}\nspec:\n  containers: [{name: c, image: busybox}]\n";

    #[test]
    fn multi_document_yaml_keeps_good_documents_around_a_broken_one() {
        let text = format!(
            "{GOOD}---\napiVersion: v1\nkind: Pod\nmetadata: {{name: [oops\n---\n{}",
            GOOD.replace("name: a", "name: b")
        );
        let d = decode("/m/x.yaml", &text, false);
        assert_eq!(d.pods.len(), 2);
        assert_eq!(d.pods[0].1.metadata.name.as_deref(), Some("a"));
        assert_eq!(d.pods[1].0, 2);
        assert_eq!(d.errors.len(), 1);
        assert_eq!(field_of(&d.errors[0]).0, "/m/x.yaml#1");
        let SourceError::InvalidManifest { message, .. } = &d.errors[0] else {
            unreachable!()
        };
        assert!(
            message.contains("line 9"),
            "line numbers are the file's: {message}"
        );
    }

    #[test]
    fn other_kinds_are_ignored_and_bad_api_version_is_an_error() {
        let text = "apiVersion: v1\nkind: Service\nmetadata: {name: s}\n---\napiVersion: v2\nkind: Pod\nmetadata: {name: p}\nspec: {containers: [{name: c, image: i}]}\n";
        let d = decode("f", text, false);
        assert!(d.pods.is_empty());
        assert_eq!(d.ignored, vec![("f#0".to_string(), "Service".to_string())]);
        assert_eq!(field_of(&d.errors[0]), ("f#1", "apiVersion"));
    }

    #[test]
    fn type_errors_name_the_field_path() {
        let text = "apiVersion: v1\nkind: Pod\nmetadata: {name: p}\nspec:\n  containers:\n  - name: c\n    image: i\n    ports: [{containerPort: eighty}]\n";
        let d = decode("f", text, false);
        assert_eq!(
            field_of(&d.errors[0]).1,
            "spec.containers[0].ports[0].containerPort"
        );
    }

    #[test]
    fn validation_names_the_field() {
        let cases = [
            (
                "metadata: {}\nspec: {containers: [{name: c, image: i}]}",
                "metadata.name",
            ),
            (
                "metadata: {name: Bad_Name}\nspec: {containers: [{name: c, image: i}]}",
                "metadata.name",
            ),
            (
                "metadata: {name: p}\nspec: {containers: []}",
                "spec.containers",
            ),
            (
                "metadata: {name: p}\nspec: {containers: [{name: c}]}",
                "spec.containers[0].image",
            ),
            (
                "metadata: {name: p}\nspec: {containers: [{name: c, image: i, resources: {limits: {memory: 12XB}}}]}",
                "spec.containers[0].resources.limits.memory",
            ),
            (
                "metadata: {name: p}\nspec: {restartPolicy: Sometimes, containers: [{name: c, image: i}]}",
                "spec.restartPolicy",
            ),
            (
                "metadata: {name: p}\nspec: {containers: [{name: c, image: i}, {name: c, image: j}]}",
                "spec.containers[1].name",
            ),
        ];
        for (body, field) in cases {
            let d = decode("f", &format!("apiVersion: v1\nkind: Pod\n{body}\n"), false);
            assert!(d.pods.is_empty(), "{body}");
            assert_eq!(field_of(&d.errors[0]).1, field, "{body}");
        }
    }

    #[test]
    fn unknown_fields_are_warnings_and_the_pod_stays() {
        let text = "apiVersion: v1\nkind: Pod\nmetadata: {name: p, labels: {anything: goes}}\nspec:\n  containers:\n  - {name: c, image: i, imagePullPolicyy: Always, resources: {limits: {cpu: 1}}}\n  bogus: 1\n";
        let d = decode("f", text, false);
        assert_eq!(d.pods.len(), 1, "{:?}", d.errors);
        let fields: Vec<_> = d.warnings.iter().map(|w| w.field.as_str()).collect();
        assert_eq!(
            fields,
            vec!["spec.bogus", "spec.containers[0].imagePullPolicyy"]
        );
        let limits = d.pods[0].1.spec.as_ref().unwrap().containers[0]
            .resources
            .as_ref()
            .unwrap()
            .limits
            .clone()
            .unwrap();
        assert_eq!(limits["cpu"].0, "1");
    }

    #[test]
    fn json_and_pod_lists() {
        let text = r#"{"apiVersion":"v1","kind":"PodList","items":[{"apiVersion":"v1","kind":"Pod","metadata":{"name":"a"},"spec":{"containers":[{"name":"c","image":"i"}]}},{"kind":"Pod","apiVersion":"v1","metadata":{}}]}"#;
        let d = decode("u", text, true);
        assert_eq!(d.pods.len(), 1);
        assert_eq!(field_of(&d.errors[0]), ("u#0.items[1]", "metadata.name"));
        let d = decode("u", "{not json", true);
        assert_eq!(field_of(&d.errors[0]), ("u#0", "-"));
    }

    #[test]
    fn static_uid_is_deterministic_and_content_sensitive() {
        let mut a = decode("f", GOOD, false).pods.remove(0).1;
        let mut b = a.clone();
        apply_static_defaults(&mut a, "node-1", "file:/m/a.yaml");
        apply_static_defaults(&mut b, "node-1", "file:/m/a.yaml");
        assert_eq!(a.metadata.uid, b.metadata.uid);
        assert_eq!(a.metadata.namespace.as_deref(), Some("default"));
        assert_eq!(a.metadata.uid.as_ref().unwrap().len(), 32);
        let mut c = decode("f", &GOOD.replace("busybox", "other"), false)
            .pods
            .remove(0)
            .1;
        apply_static_defaults(&mut c, "node-1", "file:/m/a.yaml");
        assert_ne!(a.metadata.uid, c.metadata.uid);
        let mut d = decode("f", GOOD, false).pods.remove(0).1;
        apply_static_defaults(&mut d, "node-2", "file:/m/a.yaml");
        assert_ne!(a.metadata.uid, d.metadata.uid);
    }

    #[test]
    fn yaml11_octal_file_modes_are_read_as_kubectl_does() {
        let pod = |volumes: &str| {
            format!(
                "apiVersion: v1\nkind: Pod\nmetadata: {{name: a}}\nspec:\n  containers: [{{name: c, image: busybox}}]\n  volumes:\n{volumes}"
            )
        };
        let good = pod(concat!(
            "  - name: cm\n    configMap:\n      name: x\n      defaultMode: 0600\n",
            "      items: [{key: k, path: p, mode: 0o440}, {key: l, path: q, mode: 0755}]\n",
            "  - name: s\n    secret: {secretName: sec, defaultMode: 0400}\n",
            "  - name: d\n    downwardAPI:\n      defaultMode: 0644\n",
            "      items: [{path: labels, fieldRef: {fieldPath: metadata.labels}, mode: 0600}]\n",
            "  - name: p\n    projected:\n      defaultMode: 0o640\n      sources:\n",
            "      - configMap: {name: x, items: [{key: k, path: p, mode: 0444}]}\n",
            "      - secret: {name: sec, items: [{key: k, path: s, mode: 0400}]}\n",
            "  - name: plain\n    configMap: {name: z, defaultMode: 420}\n",
        ));
        let d = decode("/m/modes.yaml", &good, false);
        assert!(d.errors.is_empty(), "{:?}", d.errors);
        let volumes = d.pods[0].1.spec.clone().unwrap().volumes.unwrap();
        let cm = volumes[0].config_map.as_ref().unwrap();
        assert_eq!(cm.default_mode, Some(0o600));
        let modes: Vec<_> = cm.items.iter().flatten().map(|i| i.mode).collect();
        assert_eq!(modes, [Some(0o440), Some(0o755)]);
        assert_eq!(
            volumes[1].secret.as_ref().unwrap().default_mode,
            Some(0o400)
        );
        let da = volumes[2].downward_api.as_ref().unwrap();
        assert_eq!(da.default_mode, Some(0o644));
        assert_eq!(da.items.as_ref().unwrap()[0].mode, Some(0o600));
        let pr = volumes[3].projected.as_ref().unwrap();
        assert_eq!(pr.default_mode, Some(0o640));
        let sources = pr.sources.as_ref().unwrap();
        let cm_items = sources[0]
            .config_map
            .as_ref()
            .unwrap()
            .items
            .as_ref()
            .unwrap();
        assert_eq!(cm_items[0].mode, Some(0o444));
        let s_items = sources[1].secret.as_ref().unwrap().items.as_ref().unwrap();
        assert_eq!(s_items[0].mode, Some(0o400));
        assert_eq!(
            volumes[4].config_map.as_ref().unwrap().default_mode,
            Some(420)
        );

        // garbage stays garbage, named by field
        for (volumes, field) in [
            (
                "  - name: cm\n    configMap: {name: x, defaultMode: 0800}\n",
                "spec.volumes[0].configMap.defaultMode",
            ),
            (
                "  - name: cm\n    configMap: {name: x, defaultMode: 01777}\n",
                "spec.volumes[0].configMap.defaultMode",
            ),
            (
                "  - name: s\n    secret: {secretName: sec, items: [{key: k, path: p, mode: rw}]}\n",
                "spec.volumes[0].secret.items[0].mode",
            ),
            (
                "  - name: s\n    secret: {secretName: sec, items: [{key: k, path: p, mode: 4096}]}\n",
                "spec.volumes[0].secret.items[0].mode",
            ),
        ] {
            let d = decode("/m/bad.yaml", &pod(volumes), false);
            assert!(d.pods.is_empty(), "{volumes}");
            assert_eq!(
                field_of(&d.errors[0]),
                ("/m/bad.yaml#0", field),
                "{volumes}"
            );
        }
        // a leading-zero number outside the mode fields is not silently read as octal
        let port = GOOD.replace(
            "image: busybox}",
            "image: busybox, ports: [{containerPort: 0080}]}",
        );
        let d = decode("/m/port.yaml", &port, false);
        assert!(d.pods.is_empty());
        assert_eq!(
            field_of(&d.errors[0]).1,
            "spec.containers[0].ports[0].containerPort"
        );
    }

    #[test]
    fn static_pods_get_the_node_suffix_node_name_and_config_annotations() {
        let pod = decode("f", GOOD, false).pods.remove(0).1;
        let mut from_file = pod.clone();
        apply_static_defaults(&mut from_file, "Node-1", "file:/m/a.yaml");
        assert_eq!(from_file.metadata.name.as_deref(), Some("a-node-1"));
        let uid = from_file.metadata.uid.clone().unwrap();
        // the UID is the hash of the pod as written: the suffix does not change it
        assert_eq!(
            uid,
            static_pod_uid(
                &{
                    let mut p = pod.clone();
                    p.metadata.namespace = Some("default".into());
                    p
                },
                "Node-1",
                "file:/m/a.yaml"
            )
        );
        let spec = from_file.spec.as_ref().unwrap();
        assert_eq!(spec.node_name.as_deref(), Some("Node-1"));
        let ann = from_file.metadata.annotations.clone().unwrap();
        assert_eq!(ann[CONFIG_SOURCE_ANNOTATION], "file");
        assert_eq!(ann[CONFIG_HASH_ANNOTATION], uid);
        // applying again (a re-read of an unchanged pod) does not stack suffixes
        apply_static_defaults(&mut from_file, "Node-1", "file:/m/a.yaml");
        assert_eq!(from_file.metadata.name.as_deref(), Some("a-node-1"));

        let mut from_url = pod.clone();
        apply_static_defaults(&mut from_url, "n2", "url:http://x/pods");
        assert_eq!(from_url.metadata.name.as_deref(), Some("a-n2"));
        assert_eq!(
            from_url.metadata.annotations.unwrap()[CONFIG_SOURCE_ANNOTATION],
            "http"
        );
        // no node name: nothing to suffix
        let mut anonymous = pod;
        apply_static_defaults(&mut anonymous, "", "file:/m/a.yaml");
        assert_eq!(anonymous.metadata.name.as_deref(), Some("a"));
    }
}
