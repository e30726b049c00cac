//! The short fuzz run (stable, CI): every target body over its committed seed corpus
//! (`corpus/<target>/`), then seeded deterministic mutations of those seeds.
//!
//! `NODEKIT_FUZZ_MUTATIONS` (default 3000 per target) and `NODEKIT_FUZZ_SEED` change the run;
//! a failing input is written to `artifacts/<target>/` and its name printed, so that
//! `cargo +nightly fuzz run --features libfuzzer <target> artifacts/<target>/<file>` replays it.
//! `cargo test -p nodekit-fuzz -- --ignored write_seed_corpora` rewrites the
//! generated seeds.

use std::panic::AssertUnwindSafe;
use std::path::{Path, PathBuf};

use nodekit_fuzz::TARGETS;
use nodekit_fuzz::mutate::{Rng, mutate};

fn corpus_dir(target: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("corpus")
        .join(target)
}

fn seeds(target: &str) -> Vec<(String, Vec<u8>)> {
    let mut v: Vec<(String, Vec<u8>)> = std::fs::read_dir(corpus_dir(target))
        .unwrap_or_else(|e| panic!("corpus/{target}: {e}"))
        .flatten()
        .map(|e| {
            (
                e.file_name().to_string_lossy().into_owned(),
                std::fs::read(e.path()).unwrap(),
            )
        })
        .collect();
    v.sort();
    v
}

fn env_or(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Run `body` on `input`; on a panic, save the input and describe it.
fn try_one(target: &str, what: &str, body: fn(&[u8]), input: &[u8]) -> Option<String> {
    let r = std::panic::catch_unwind(AssertUnwindSafe(|| body(input)));
    let err = r.err()?;
    let msg = err
        .downcast_ref::<String>()
        .cloned()
        .or_else(|| err.downcast_ref::<&str>().map(|s| s.to_string()))
        .unwrap_or_default();
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("artifacts")
        .join(target);
    let _ = std::fs::create_dir_all(&dir);
    let file = dir.join(format!("crash-{what}"));
    let _ = std::fs::write(&file, input);
    Some(format!(
        "{target} {what}: {msg} (input saved as {})",
        file.display()
    ))
}

fn run_target(name: &str, body: fn(&[u8])) {
    let seeds = seeds(name);
    assert!(seeds.len() >= 3, "corpus/{name} has {} seeds", seeds.len());
    let mut failures = vec![];
    for (file, data) in &seeds {
        failures.extend(try_one(name, &format!("seed-{file}"), body, data));
    }
    let n = env_or("NODEKIT_FUZZ_MUTATIONS", 3000);
    let mut rng = Rng::new(env_or("NODEKIT_FUZZ_SEED", 0x6e6b_f022) ^ name.len() as u64);
    for i in 0..n {
        let a = &seeds[rng.below(seeds.len())].1;
        let b = &seeds[rng.below(seeds.len())].1;
        let input = mutate(a, b, &mut rng);
        failures.extend(try_one(name, &format!("mutation-{i}"), body, &input));
        if failures.len() >= 5 {
            break;
        }
    }
    eprintln!(
        "{name}: {} seeds + {n} mutations, {} failures",
        seeds.len(),
        failures.len()
    );
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn manifest_corpus_and_mutations() {
    run_target("manifest", TARGETS[0].1);
}

#[test]
fn layer_unpack_corpus_and_mutations() {
    run_target("layer_unpack", TARGETS[1].1);
}

#[test]
fn cni_parse_corpus_and_mutations() {
    run_target("cni_parse", TARGETS[2].1);
}

#[test]
fn cri_log_corpus_and_mutations() {
    run_target("cri_log", TARGETS[3].1);
}

#[test]
fn every_target_has_a_test_and_a_corpus() {
    let names: Vec<&str> = TARGETS.iter().map(|t| t.0).collect();
    assert_eq!(names, ["manifest", "layer_unpack", "cni_parse", "cri_log"]);
    for n in names {
        assert!(corpus_dir(n).is_dir(), "corpus/{n} missing");
    }
}

/// A body that panics is reported (the harness itself can fail).
#[test]
fn a_panicking_body_is_a_finding() {
    fn boom(d: &[u8]) {
        assert!(d.len() < 3, "too long");
    }
    assert!(try_one("selftest", "x", boom, b"ab").is_none());
    let f = try_one("selftest", "x", boom, b"abcd").expect("a finding");
    assert!(f.contains("too long"), "{f}");
    let _ =
        std::fs::remove_dir_all(Path::new(env!("CARGO_MANIFEST_DIR")).join("artifacts/selftest"));
}

// ---- the generated seeds ----

/// One tar entry of a generated seed: name, type, data, link target.
type SeedEntry<'a> = (&'a str, tar::EntryType, &'a [u8], Option<&'a str>);

fn tar_of(entries: &[SeedEntry<'_>]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for (name, kind, data, link) in entries {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(*kind);
        h.set_mode(if *kind == tar::EntryType::Directory {
            0o755
        } else {
            0o644
        });
        h.set_size(data.len() as u64);
        h.set_mtime(1_700_000_000);
        // raw names: the builder's own checks would refuse the hostile ones
        let raw = &mut h.as_old_mut().name;
        raw.fill(0);
        raw[..name.len()].copy_from_slice(name.as_bytes());
        if let Some(l) = link {
            let raw = &mut h.as_old_mut().linkname;
            raw.fill(0);
            raw[..l.len()].copy_from_slice(l.as_bytes());
        }
        h.set_cksum();
        b.append(&h, *data).unwrap();
    }
    b.into_inner().unwrap()
}

#[test]
#[ignore = "writes the generated seed corpora (run once, commit the files)"]
fn write_seed_corpora() {
    use tar::EntryType as T;
    let put = |target: &str, name: &str, data: &[u8]| {
        let d = corpus_dir(target);
        std::fs::create_dir_all(&d).unwrap();
        std::fs::write(d.join(name), data).unwrap();
    };
    let plain = tar_of(&[
        ("etc/", T::Directory, b"", None),
        ("etc/hostname", T::Regular, b"box\n", None),
        ("bin/", T::Directory, b"", None),
        ("bin/sh", T::Symlink, b"", Some("busybox")),
        ("bin/ls", T::Link, b"", Some("etc/hostname")),
    ]);
    put("layer_unpack", "plain.tar", &plain);
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    std::io::Write::write_all(&mut gz, &plain).unwrap();
    put("layer_unpack", "plain.tar.gz", &gz.finish().unwrap());
    put(
        "layer_unpack",
        "plain.tar.zst",
        &zstd::encode_all(plain.as_slice(), 1).unwrap(),
    );
    let hostile: &[(&str, &[SeedEntry<'_>])] = &[
        ("dotdot.tar", &[("../outside/evil", T::Regular, b"x", None)]),
        (
            "absolute.tar",
            &[("/tmp/nodekit-fuzz-abs", T::Regular, b"x", None)],
        ),
        (
            "symlink-escape.tar",
            &[
                ("up", T::Symlink, b"", Some("../outside")),
                ("up/evil", T::Regular, b"x", None),
            ],
        ),
        (
            "symlink-root.tar",
            &[
                ("root", T::Symlink, b"", Some("/")),
                ("root/tmp/nodekit-fuzz-root", T::Regular, b"x", None),
            ],
        ),
        (
            "hardlink-out.tar",
            &[("h", T::Link, b"", Some("../outside/sentinel"))],
        ),
        (
            "hardlink-abs.tar",
            &[("h", T::Link, b"", Some("/etc/passwd"))],
        ),
        (
            "whiteouts.tar",
            &[
                ("d/", T::Directory, b"", None),
                ("d/.wh..wh..opq", T::Regular, b"", None),
                ("d/.wh.gone", T::Regular, b"", None),
                (".wh...", T::Regular, b"", None),
            ],
        ),
        (
            "devices.tar",
            &[
                ("dev/", T::Directory, b"", None),
                ("dev/null", T::Char, b"", None),
                ("dev/sda", T::Block, b"", None),
                ("fifo", T::Fifo, b"", None),
            ],
        ),
        (
            "replace-dir-with-link.tar",
            &[
                ("a/", T::Directory, b"", None),
                ("a", T::Symlink, b"", Some("/")),
                ("a/etc", T::Regular, b"x", None),
            ],
        ),
        (
            "file-then-dir.tar",
            &[
                ("x", T::Regular, b"1", None),
                ("x/", T::Directory, b"", None),
                ("x/y", T::Regular, b"2", None),
            ],
        ),
    ];
    for (name, entries) in hostile {
        put("layer_unpack", name, &tar_of(entries));
    }
    // a header claiming more data than there is
    let mut short = tar_of(&[("big", T::Regular, &[7u8; 1024], None)]);
    short.truncate(700);
    put("layer_unpack", "truncated.tar", &short);

    // manifests: the repo's own examples and bad manifests
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    for dir in ["examples/manifests", "node-kubelet/tests/manifests/bad"] {
        for e in std::fs::read_dir(root.join(dir)).unwrap().flatten() {
            put(
                "manifest",
                &e.file_name().to_string_lossy(),
                &std::fs::read(e.path()).unwrap(),
            );
        }
    }
    put(
        "manifest",
        "multi-doc.yaml",
        b"apiVersion: v1\nkind: Pod\nmetadata: {name: a}\nspec:\n  containers: [{name: c, image: i}]\n---\n...\n---\napiVersion: v1\nkind: Pod\nmetadata: {name: b, namespace: x}\nspec:\n  containers: [{name: c, image: i, resources: {limits: {cpu: 500m, memory: 1Gi}}}]\n",
    );
    put(
        "manifest",
        "anchors.yaml",
        b"apiVersion: v1\nkind: Pod\nmetadata: &m {name: a, labels: {x: y}}\nspec:\n  containers:\n    - &c {name: c, image: i, args: [*m]}\n    - *c\n",
    );

    // CNI
    let cni: &[(&str, &str)] = &[
        (
            "list.json",
            r#"{"cniVersion":"1.1.0","name":"net","plugins":[{"type":"bridge","bridge":"cni0","ipam":{"type":"host-local","ranges":[[{"subnet":"10.88.0.0/16"}]]}},{"type":"portmap","capabilities":{"portMappings":true}}]}"#,
        ),
        (
            "conf.json",
            r#"{"cniVersion":"0.4.0","name":"net","type":"nodekit-bridge","subnet":"10.9.0.0/24"}"#,
        ),
        (
            "result-1.1.json",
            r#"{"cniVersion":"1.1.0","interfaces":[{"name":"eth0","mac":"02:00:00:00:00:01","sandbox":"/run/netns/x"}],"ips":[{"address":"10.88.0.5/16","gateway":"10.88.0.1","interface":0},{"address":"fd00::5/64"}],"routes":[{"dst":"0.0.0.0/0"}],"dns":{"nameservers":["10.96.0.10"]}}"#,
        ),
        (
            "result-0.3.json",
            r#"{"cniVersion":"0.3.1","interfaces":[{"name":"eth0"}],"ips":[{"version":"4","address":"10.1.2.3/24","interface":0}]}"#,
        ),
        (
            "disable.json",
            r#"{"cniVersion":"1.1.0","name":"n","disableCheck":true,"disableGC":"true","plugins":[{"type":"a"}]}"#,
        ),
        (
            "empty-plugins.json",
            r#"{"cniVersion":"1.0.0","name":"n","plugins":[]}"#,
        ),
        ("version.txt", "1.0.0"),
    ];
    for (name, text) in cni {
        put("cni_parse", name, text.as_bytes());
    }

    // CRI log: line limit byte, then (header, chunk) pairs
    let mut log = vec![8u8];
    for (stream, chunk) in [
        (0u8, &b"hello\nwor"[..]),
        (0x80, b"oops\n"),
        (0, b"ld\n0123456789abc\ntail"),
    ] {
        log.push(stream | chunk.len() as u8);
        log.extend_from_slice(chunk);
    }
    put("cri_log", "mixed.bin", &log);
    put("cri_log", "exact-limit.bin", b"\x07\x08abcdefgh\x01\n");
    put("cri_log", "spaces.bin", b"\x3f\x0a  P F \r\n \x00\n");
}
