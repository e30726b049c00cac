//! Container runtimes behind node-core's `RuntimeBackend` and `ImageBackend`: the CRI gRPC
//! client (containerd, CRI-O), the native namespaces runtime, and a CRI server for any backend.

pub mod native;
