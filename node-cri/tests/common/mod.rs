//! Helpers shared by node-cri's integration tests, included by every test file with `mod common;`:
//! `native` (the native runtime's root-test fixture), `pod_fixture` (runtime-neutral CRI configs
//! and waits, also used against containerd) and `server` (a `CriServer` on a temporary socket).
#![allow(dead_code)] // every test file uses a part of it

pub mod native;
pub mod pod_fixture;
pub mod server;
