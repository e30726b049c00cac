//! The bodies of nodekit's fuzz targets, as plain functions: libFuzzer calls them in the long run
//! (`fuzz_targets/*.rs`, nightly + cargo-fuzz) and `tests/corpus.rs` drives them on stable over
//! the seed corpora in `corpus/<target>/` plus seeded deterministic mutations ([`mutate`]).
//!
//! Each body panics on a finding: a panic inside the code under test, or a broken invariant
//! checked here (a layer that wrote outside its directory, a log entry that does not parse).

#![deny(missing_docs)]

pub mod cni_parse;
pub mod cri_log;
pub mod layer_unpack;
pub mod manifest;
pub mod mutate;

/// A target's body.
pub type Body = fn(&[u8]);

/// The fuzz targets by name (as the `corpus/` directories are named).
pub const TARGETS: &[(&str, Body)] = &[
    ("manifest", manifest::run),
    ("layer_unpack", layer_unpack::run),
    ("cni_parse", cni_parse::run),
    ("cri_log", cri_log::run),
];
