//! The kubelet's pod agent as a library: pod sources and their merger, pod workers and the sync
//! loop, probes, restart back-off, status, termination.
pub mod node;
