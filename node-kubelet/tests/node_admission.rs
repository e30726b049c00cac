//! Admission against this machine's real allocatable: a pod asking for more than the node has
//! is rejected with kubelet's reason and message, a pod that fits is admitted.

use k8s_openapi::api::core::v1::Pod;
use node_kubelet::node::allocatable::{
    AllocatableConfig, Reserved, admit, node_allocatable, node_capacity,
};

fn pod(name: &str, cpu: &str, memory: &str) -> Pod {
    serde_saphyr::from_str(&format!(
        "metadata: {{name: {name}, uid: {name}}}\nspec:\n  containers:\n  - {{name: c, image: i, resources: {{requests: {{cpu: '{cpu}', memory: '{memory}'}}}}}}\n"
    ))
    .unwrap()
}

#[test]
fn a_pod_over_allocatable_is_rejected() {
    let dir = tempfile::tempdir().unwrap();
    let config = AllocatableConfig {
        root_dir: dir.path().into(),
        system_reserved: Reserved {
            cpu_milli: 100,
            memory_bytes: 128 << 20,
            ephemeral_storage_bytes: 0,
        },
        ..Default::default()
    };
    let capacity = node_capacity(&config).unwrap();
    let allocatable = node_allocatable(&capacity, &config);
    assert_eq!(allocatable.cpu_milli, capacity.cpu_milli - 100);
    assert_eq!(
        allocatable.memory_bytes,
        capacity.memory_bytes - (128 << 20) - (100 << 20),
        "system-reserved and the default memory.available<100Mi"
    );

    let small = pod("small", "100m", "16Mi");
    assert_eq!(admit(&allocatable, &[], &small), Ok(()));

    let greedy = pod(
        "greedy",
        "100m",
        &(allocatable.memory_bytes - (16 << 20) + 1).to_string(),
    );
    let e = admit(&allocatable, std::slice::from_ref(&small), &greedy).unwrap_err();
    assert_eq!(e.reason, "OutOfmemory");
    assert_eq!(
        e.message,
        format!(
            "Node didn't have enough resource: memory, requested: {}, used: {}, capacity: {}",
            allocatable.memory_bytes - (16 << 20) + 1,
            16 << 20,
            allocatable.memory_bytes
        )
    );

    let cpu_hog = pod("hog", &format!("{}m", allocatable.cpu_milli), "1Mi");
    let e = admit(&allocatable, &[small], &cpu_hog).unwrap_err();
    assert_eq!(e.reason, "OutOfcpu");
}
