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
//! | pod volumes, the atomic writer and subPath | [`volumes`] |
//! | graceful node shutdown by pod priority | [`shutdown`] |
//! | `/healthz`, `/pods`, `/metrics` and the node's metric families | [`http`] |

pub mod allocatable;
pub mod api;
pub mod cgroups;
pub mod eviction;
pub mod http;
pub mod qos;
pub mod quantity;
pub mod shutdown;
pub mod status;
pub mod volumes;
