//! Container runtimes behind node-core's `RuntimeBackend` and `ImageBackend`: the CRI gRPC
//! client (containerd, CRI-O), the native namespaces runtime, and a CRI server for any backend.
//!
//! | module | what |
//! |---|---|
//! | [`client`] | [`CriClient`]: CRI `runtime.v1` over a unix socket, for containerd and CRI-O |
//! | [`native`] | the native namespaces runtime: images (content store, safe unpacking, pulls) and pods |
//! | [`server`] | [`CriServer`]: CRI `runtime.v1` served on a unix socket for any backend |
//! | [`streaming`] | the streaming server for Exec, Attach and PortForward (SPDY/3.1 and WebSocket) and its clients |

pub mod client;
pub mod native;
pub mod server;
pub mod streaming;

pub use client::{CriClient, CriClientConfig, RuntimeConditions};
pub use server::{CriServer, CriServerConfig};
