//! Helpers shared by node-cri's integration tests.
#![allow(dead_code)]

pub mod env;
pub mod native;
pub mod server;
