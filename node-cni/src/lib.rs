//! Pod networking behind node-core's [`CniPlugin`](node_core::CniPlugin):
//!
//! - [`exec`]: [`ExecCni`], the CNI spec runtime that executes plugin binaries from conflists
//!   (chains, result cache, VERSION, CHECK, STATUS, GC), like libcni.
//! - [`version`]: CNI spec versions.

pub mod exec;
pub mod version;

pub use exec::{ExecCni, ExecConfig, NetworkConfigList};
