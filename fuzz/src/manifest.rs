//! The pod manifest decoder of the file and HTTP sources (`node_kubelet::manifest::decode`), in
//! YAML-stream and JSON mode, then validation and static-pod defaulting of what it accepted.

use node_core::SourceError;
use node_kubelet::manifest;

/// One input: its bytes as manifest text.
pub fn run(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    for json in [false, true] {
        let d = manifest::decode("fuzz.yaml", &text, json);
        for e in &d.errors {
            // every error names the document it came from
            match e {
                SourceError::InvalidManifest { origin, .. } => {
                    assert!(origin.starts_with("fuzz.yaml"), "error origin {origin:?}")
                }
                other => panic!("decode returned a non-manifest error: {other:?}"),
            }
        }
        for (_, pod) in d.pods {
            let _ = manifest::validate("fuzz.yaml", &pod);
            let mut pod = pod;
            manifest::apply_static_defaults(&mut pod, "node-a", "file");
            let uid = manifest::static_pod_uid(&pod, "node-a", "file");
            assert!(!uid.is_empty());
        }
    }
}
