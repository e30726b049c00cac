//! Rule programming with the `IptablesRouter` (iptables-nft and iptables-legacy), each run in a
//! throwaway network namespace, for N services x 5 endpoints (N = 1,000 and 10,000):
//! - full sync into an empty namespace, and the reference measured in the same run: kube-proxy's
//!   own iptables layout (`gen_kp_ipt.py N 5`) loaded by `iptables-restore --noflush`;
//! - one endpoint changed (a partial sync);
//! - ruleset generation alone (no kernel).
//!
//! Needs root (skips otherwise). The reference generator is found through
//! `NODEKIT_REFERENCE_DIR`, else `shared/reference` next to the workspace or one of its parents.
//! `NODEKIT_BENCH_SIZES=1000` limits the sizes. Without `--bench` (as `cargo test` runs it)
//! only 1,000 services are measured, once.
//!
//! iptables-nft 1.8.9's userspace is superlinear in the number of chains for any layout
//! (measured here: kube-proxy's layout 1k 0.4 s, 2k 1.8 s, 4k 16 s of CPU; ours alike), so the
//! iptables-nft groups run at 1,000 services unless `NODEKIT_BENCH_NFT_SIZES` asks for more.

use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use criterion::{BenchmarkId, Criterion, SamplingMode, criterion_group, criterion_main};
use node_core::{Endpoint, NodeInfo, ProxyState, ServicePort, ServicePortName, ServiceRouter};
use node_proxy::{IpFamily, IptablesConfig, IptablesRouter, IptablesVariant};
use node_test_support::NetnsFixture;

const ENDPOINTS: usize = 5;

fn sizes_for(variant: IptablesVariant) -> Vec<usize> {
    if variant == IptablesVariant::Nft {
        if let Ok(s) = std::env::var("NODEKIT_BENCH_NFT_SIZES") {
            return parse_sizes(&s);
        }
        return sizes().into_iter().filter(|n| *n <= 1000).collect();
    }
    sizes()
}

fn parse_sizes(s: &str) -> Vec<usize> {
    s.split(',')
        .map(|n| n.trim().parse().expect("sizes: comma-separated numbers"))
        .collect()
}

fn sizes() -> Vec<usize> {
    if let Ok(s) = std::env::var("NODEKIT_BENCH_SIZES") {
        return parse_sizes(&s);
    }
    if bench_mode() {
        vec![1000, 10_000]
    } else {
        vec![1000]
    }
}

/// The same addresses as gen_kp_ipt.py: VIPs 172.16.x.y:80, endpoints 10.100.x.y:8080.
fn state(n: usize) -> ProxyState {
    let mut s = ProxyState {
        node: NodeInfo {
            name: "bench".into(),
            cluster_cidrs: vec!["10.0.0.0/8".parse().expect("cidr")],
            ..Default::default()
        },
        ..Default::default()
    };
    for i in 0..n {
        let vip = format!("172.{}.{}.{}", 16 + i / 65536, (i / 256) % 256, i % 256);
        let endpoints = (0..ENDPOINTS)
            .map(|e| {
                let k = i * ENDPOINTS + e;
                let ip = format!("10.{}.{}.{}", 100 + k / 65536, (k / 256) % 256, k % 256);
                Endpoint::ready(ip.parse().expect("ip"), 8080)
            })
            .collect();
        s.services.insert(
            ServicePortName::new("ns", format!("svc-{i}"), "http"),
            ServicePort {
                cluster_ips: vec![vip.parse().expect("vip")],
                port: 80,
                endpoints,
                ..Default::default()
            },
        );
    }
    s
}

fn config(variant: IptablesVariant) -> IptablesConfig {
    // IPv4 only, as the reference; no UDP services, so no conntrack work either
    IptablesConfig::default()
        .with_variant(variant)
        .with_families(&[IpFamily::V4])
}

fn block<F: std::future::Future>(f: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
        .block_on(f)
}

fn bench_mode() -> bool {
    std::env::args().any(|a| a == "--bench")
}

/// The directory of the reference generators. Absent: a clear failure under `--bench`; in test
/// mode (`cargo test --all-targets`) the reference is left out with a note.
fn reference_dir() -> Option<PathBuf> {
    if let Ok(d) = std::env::var("NODEKIT_REFERENCE_DIR") {
        let d = PathBuf::from(d);
        assert!(
            d.join("gen_kp_ipt.py").is_file(),
            "NODEKIT_REFERENCE_DIR={} has no gen_kp_ipt.py",
            d.display()
        );
        return Some(d);
    }
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let found = root
        .ancestors()
        .map(|a| a.join("shared/reference"))
        .find(|d| d.join("gen_kp_ipt.py").is_file());
    if found.is_none() {
        let why = format!(
            "gen_kp_ipt.py not found in shared/reference next to {} or its parents: set NODEKIT_REFERENCE_DIR",
            root.display()
        );
        if bench_mode() {
            panic!("{why}");
        }
        eprintln!("reference left out in test mode: {why}");
    }
    found
}

fn kube_proxy_layout(dir: &std::path::Path, n: usize) -> String {
    let script = dir.join("gen_kp_ipt.py");
    let out = Command::new("python3")
        .arg(&script)
        .args([n.to_string(), ENDPOINTS.to_string()])
        .output()
        .unwrap_or_else(|e| panic!("python3 {}: {e}", script.display()));
    assert!(
        out.status.success(),
        "{} failed: {}",
        script.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("utf-8")
}

fn restore_into(ns: &NetnsFixture, program: &str, text: &str) -> Duration {
    let start = Instant::now();
    let mut child = ns
        .command(program)
        .args(["-w", "5", "--noflush"])
        .stdin(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn restore");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(text.as_bytes())
        .expect("write");
    let out = child.wait_with_output().expect("wait");
    let took = start.elapsed();
    assert!(
        out.status.success(),
        "{program}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    took
}

fn bench(c: &mut Criterion) {
    if !node_test_support::require_root("proxy_iptables") {
        return;
    }
    let sizes = sizes();

    let mut g = c.benchmark_group("iptables/generate");
    g.sample_size(10);
    for &n in &sizes {
        let s = state(n);
        let r = IptablesRouter::new(config(IptablesVariant::Nft));
        g.bench_with_input(BenchmarkId::from_parameter(n), &n, |b, _| {
            b.iter(|| r.render(&s, IpFamily::V4).len())
        });
    }
    g.finish();

    for variant in [IptablesVariant::Nft, IptablesVariant::Legacy] {
        let vname = match variant {
            IptablesVariant::Nft => "nft",
            IptablesVariant::Legacy => "legacy",
        };
        let sizes = sizes_for(variant);
        let mut g = c.benchmark_group(format!("iptables-{vname}/full-sync"));
        g.sample_size(10)
            .sampling_mode(SamplingMode::Flat)
            .warm_up_time(Duration::from_millis(1))
            .measurement_time(Duration::from_secs(1));
        for &n in &sizes {
            let s = state(n);
            g.bench_with_input(BenchmarkId::new("nodekit", n), &n, |b, _| {
                b.iter_custom(|iters| {
                    let mut total = Duration::ZERO;
                    for _ in 0..iters {
                        let ns = NetnsFixture::new("bench").expect("netns");
                        let r = IptablesRouter::new(config(variant));
                        let start = Instant::now();
                        let report = ns.run_in(|| block(r.sync(&s))).expect("thread");
                        total += start.elapsed();
                        let report = report.expect("sync");
                        assert!(report.full && report.endpoints == n * ENDPOINTS);
                    }
                    total
                })
            });
            let Some(dir) = reference_dir() else { continue };
            let text = kube_proxy_layout(&dir, n);
            let program = variant.program(IpFamily::V4, "restore");
            g.bench_with_input(BenchmarkId::new("kube-proxy-layout", n), &n, |b, _| {
                b.iter_custom(|iters| {
                    let mut total = Duration::ZERO;
                    for _ in 0..iters {
                        let ns = NetnsFixture::new("benchref").expect("netns");
                        total += restore_into(&ns, &program, &text);
                    }
                    total
                })
            });
        }
        g.finish();

        let mut g = c.benchmark_group(format!("iptables-{vname}/one-endpoint-changed"));
        g.sample_size(10)
            .sampling_mode(SamplingMode::Flat)
            .warm_up_time(Duration::from_millis(200))
            .measurement_time(Duration::from_secs(2));
        for &n in &sizes {
            let ns = NetnsFixture::new("benchpart").expect("netns");
            let r = IptablesRouter::new(config(variant));
            let full = state(n);
            let mut less = full.clone();
            less.services
                .values_mut()
                .next()
                .expect("a service")
                .endpoints
                .pop();
            ns.run_in(|| block(r.sync(&full)))
                .expect("thread")
                .expect("sync");
            let mut flip = false;
            g.bench_with_input(BenchmarkId::from_parameter(n), &n, |b, _| {
                b.iter_custom(|iters| {
                    ns.run_in(|| {
                        block(async {
                            let start = Instant::now();
                            for _ in 0..iters {
                                flip = !flip;
                                let report = r
                                    .sync(if flip { &less } else { &full })
                                    .await
                                    .expect("sync");
                                assert!(!report.full && report.changes > 0);
                            }
                            start.elapsed()
                        })
                    })
                    .expect("thread")
                })
            });
        }
        g.finish();
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);
