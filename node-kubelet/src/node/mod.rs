//! The node-level parts of the kubelet, each usable on its own by the pod workers:
//!
//! | concern | module |
//! |---|---|
//! | resource quantities | [`quantity`] |
//! | QoS class, pod requests/limits, CPU shares and quota | [`qos`] |
//! | the pod cgroup hierarchy and the CRI `cgroup_parent` | [`cgroups`] |
//! | capacity, allocatable and pod admission | [`allocatable`] |
//! | the Node object, its conditions and the status reporter | [`status`] |
//! | registration, the node Lease and status to the API server | [`api`] |
//! | eviction signals, thresholds, ranking and decisions | [`eviction`] |
//! | image and dead-container garbage collection | [`gc`] |
//! | pod volumes, the atomic writer and subPath | [`volumes`] |
//! | the configMaps and secrets pods reference, watched one by one on the API server | [`objects`] |
//! | graceful node shutdown by pod priority | [`shutdown`] |
//! | the systemd-logind delay inhibitor that triggers it | [`logind`] |
//! | the seam the pod workers call, and the [`PodControl`] the node stops pods with | [`hooks`] |
//! | the real hooks: admission, cgroups, volumes, eviction and shutdown wired together | [`manager`] ([`NodeManager`]) |
//! | mirror pods of static pods | [`mirror`] |
//! | service-account tokens for projected volumes | [`tokens`] |
//! | `/healthz`, `/pods`, `/metrics` and the node's metric families (the read-only port) | [`http`] |
//! | the node's and pods' CPU and memory usage, `/stats/summary` | [`stats`] |
//! | `/metrics/resource`, what metrics-server scrapes | [`resource_metrics`] |
//! | container logs with kubelet's options, from the CRI log files | [`logs`] |
//! | container log rotation (kubelet's `ContainerLogManager`) | [`logrotate`] |
//! | the kubelet's server over TLS with client certificates: `/containerLogs`, `/exec`, `/attach`, `/portForward` | [`server`] |
//! | its authentication: client certificates, bearer tokens by TokenReview, anonymous requests | [`authn`] |
//! | its authorization: kubelet's `AlwaysAllow` and `Webhook` (SubjectAccessReview) modes | [`authz`] |
//!
//! Each module has its own error type and depends on nothing but node-core and the kernel, so a
//! pod worker can call them in the order kubelet does:
//!
//! ```no_run
//! use std::sync::Arc;
//! use node_kubelet::node::{allocatable, cgroups, volumes};
//! # fn sync(pod: &node_core::Pod, admitted: &[node_core::Pod]) -> Result<(), Box<dyn std::error::Error>> {
//! let config = allocatable::AllocatableConfig::default();
//! let capacity = allocatable::node_capacity(&config)?;
//! // 1. admission: a pod that does not fit is Failed with reason OutOfcpu, OutOfmemory, ...
//! allocatable::admit(&allocatable::node_allocatable(&capacity, &config), admitted, pod)?;
//! // 2. the pod cgroup; its cgroup_parent goes into the sandbox config for the runtime
//! let pod_cgroups = cgroups::PodCgroups::new(cgroups::CgroupConfig::default())?;
//! let cgroup_parent = pod_cgroups.ensure_pod(pod)?.cgroup_parent;
//! // 3. volumes, then each container's CRI mounts
//! let vm = volumes::VolumeManager::new(
//!     volumes::VolumeConfig::default(),
//!     Arc::new(volumes::MemoryObjectStore::default()),
//! );
//! let vols = vm.setup_pod(pod)?;
//! for c in &pod.spec.as_ref().unwrap().containers {
//!     let mounts = vm.container_mounts(pod, c, &vols)?;
//!     # let _ = (mounts, &cgroup_parent);
//! }
//! # Ok(()) }
//! ```

pub mod allocatable;
pub mod api;
pub mod authn;
pub mod authz;
pub mod cgroups;
pub mod eviction;
pub mod gc;
pub mod hooks;
pub mod http;
pub mod logind;
pub mod logrotate;
pub mod logs;
pub mod manager;
pub mod mirror;
pub mod objects;
pub mod qos;
pub mod quantity;
pub mod resource_metrics;
pub mod server;
pub mod shutdown;
pub mod stats;
pub mod status;
pub mod tokens;
pub mod volumes;

pub use hooks::{NoNodeHooks, NodeHooks, PodControl};
pub use manager::{NodeConfig, NodeManager};
