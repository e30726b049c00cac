//! Shared helpers of the root traffic tests.
#![allow(dead_code)]

pub mod scenarios;
