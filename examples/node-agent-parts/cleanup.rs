//! Removing every pod the kubelet manages from a runtime, when an agent stops for good (a
//! stopped kubelet otherwise leaves its pods running for the next one to adopt). Shared by
//! `node-agent.rs` and `kubelet-containerd.rs`.

use std::collections::HashMap;
use std::time::Duration;

use node_core::{RuntimeBackend, cri};

/// Stops and removes every sandbox the kubelet manages (stopping kills the containers).
pub async fn remove_all_pods(rt: &dyn RuntimeBackend) {
    let filter = cri::PodSandboxFilter {
        label_selector: HashMap::from([(
            node_kubelet::labels::MANAGED.to_string(),
            "true".to_string(),
        )]),
        ..Default::default()
    };
    let sandboxes = match rt.list_pod_sandbox(Some(filter)).await {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!(error = %e, "listing the pods to remove");
            return;
        }
    };
    futures::future::join_all(sandboxes.into_iter().map(|s| remove_pod(rt, s))).await;
}

async fn remove_pod(rt: &dyn RuntimeBackend, s: cri::PodSandbox) {
    {
        let name = s
            .metadata
            .as_ref()
            .map(|m| format!("{}/{}", m.namespace, m.name))
            .unwrap_or_default();
        if let Ok(cs) = rt
            .list_containers(Some(cri::ContainerFilter {
                pod_sandbox_id: s.id.clone(),
                ..Default::default()
            }))
            .await
        {
            for c in cs {
                let _ = rt.stop_container(&c.id, Duration::from_secs(5)).await;
                let _ = rt.remove_container(&c.id).await;
            }
        }
        if let Err(e) = rt.stop_pod_sandbox(&s.id).await {
            tracing::warn!(pod = %name, error = %e, "stopping the pod");
        }
        match rt.remove_pod_sandbox(&s.id).await {
            Ok(()) => tracing::info!(pod = %name, "pod removed"),
            Err(e) => tracing::warn!(pod = %name, error = %e, "removing the pod"),
        }
    }
}
