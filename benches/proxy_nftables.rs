//! Criterion benchmarks of rule programming by `NftablesRouter`, in a throwaway network
//! namespace (needs root), next to the references measured in the same run: `nft -f` of
//! kube-proxy's nftables layout (1k and 2k only: 10k takes ~2 minutes per load), `nft -f` of the
//! flat interval map, and `iptables-restore` (legacy and nft) of kube-proxy's iptables layout.
//! The generators are found in `$NODEKIT_REFERENCE_DIR` or `../shared/reference`.
//! `NODEKIT_BENCH_SIZES=1000` limits the sizes; `NODEKIT_BENCH_REFERENCES=0` skips references.

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use node_core::ServiceRouter;
use node_proxy::NftablesRouter;
use node_test_support::proxy_state::{
    synthetic, with_one_endpoint_changed, with_one_service_added,
};
use node_test_support::{NetnsFixture, require_root};

fn sizes() -> Vec<usize> {
    std::env::var("NODEKIT_BENCH_SIZES")
        .unwrap_or_else(|_| "1000,10000".into())
        .split(',')
        .map(|s| s.trim().parse().expect("NODEKIT_BENCH_SIZES: numbers"))
        .collect()
}

fn reference_dir() -> PathBuf {
    let dir = std::env::var_os("NODEKIT_REFERENCE_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            // the workspace's sibling `shared/` (also from a worktree one level deeper)
            let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
            let near = root.join("../shared/reference");
            if near.exists() {
                near
            } else {
                root.join("../../shared/reference")
            }
        });
    assert!(
        dir.join("gen_kp_nft.py").exists(),
        "reference generators not found in {}: set NODEKIT_REFERENCE_DIR to the directory of gen_kp_nft.py, gen_kp_ipt.py and gen_flat_nft.py",
        dir.display()
    );
    dir
}

fn router_bench(c: &mut Criterion) {
    if !require_root("proxy_nftables bench") {
        return;
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let mut g = c.benchmark_group("nftables");
    g.sample_size(10)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(5));
    for n in sizes() {
        let ns = NetnsFixture::new("bench").unwrap();
        let router: Arc<NftablesRouter> =
            Arc::new(ns.run_in(NftablesRouter::new).unwrap().unwrap());
        let a = synthetic(n, 5);
        let b = with_one_endpoint_changed(&a);
        let plus = with_one_service_added(&a, 5);
        g.bench_function(BenchmarkId::new("ruleset_generation", n), |bench| {
            bench.iter(|| router.generate(&a))
        });
        g.bench_function(BenchmarkId::new("full_sync", n), |bench| {
            bench.iter_custom(|iters| {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    router.force_full_sync();
                    let t = Instant::now();
                    let r = rt.block_on(router.sync(&a)).unwrap();
                    total += t.elapsed();
                    assert!(r.full);
                }
                total
            })
        });
        rt.block_on(router.sync(&a)).unwrap();
        let mut flip = false;
        g.bench_function(BenchmarkId::new("one_endpoint_changed", n), |bench| {
            bench.iter(|| {
                flip = !flip;
                let r = rt
                    .block_on(router.sync(if flip { &b } else { &a }))
                    .unwrap();
                assert!(!r.full && r.changes > 0);
            })
        });
        rt.block_on(router.sync(&a)).unwrap();
        let mut flip = false;
        g.bench_function(
            BenchmarkId::new("one_service_added_or_removed", n),
            |bench| {
                bench.iter(|| {
                    flip = !flip;
                    let r = rt
                        .block_on(router.sync(if flip { &plus } else { &a }))
                        .unwrap();
                    assert!(!r.full && r.changes > 0);
                })
            },
        );
        rt.block_on(router.cleanup()).unwrap();
    }
    g.finish();
}

fn generate(script: &str, n: usize) -> Vec<u8> {
    let out = Command::new("python3")
        .arg(reference_dir().join(script))
        .args([n.to_string(), "5".to_string()])
        .output()
        .expect("python3");
    assert!(out.status.success(), "{script} failed");
    out.stdout
}

/// Time loading `input` with `program` in a fresh namespace, per iteration.
fn load(program: &str, args: &[&str], input: &[u8], iters: u64) -> Duration {
    let path = std::env::temp_dir().join(format!("nodekit-bench-{}-{program}", std::process::id()));
    std::fs::write(&path, input).unwrap();
    let mut total = Duration::ZERO;
    for _ in 0..iters {
        let ns = NetnsFixture::new("ref").unwrap();
        let mut cmd = ns.command(program);
        cmd.args(args)
            .stdin(std::fs::File::open(&path).unwrap())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        let t = Instant::now();
        let out = cmd.output().unwrap();
        total += t.elapsed();
        assert!(
            out.status.success(),
            "{program}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let _ = std::fs::remove_file(&path);
    total
}

fn reference_bench(c: &mut Criterion) {
    if std::env::var("NODEKIT_BENCH_REFERENCES").as_deref() == Ok("0")
        || !require_root("proxy_nftables references")
    {
        return;
    }
    let mut g = c.benchmark_group("reference");
    g.sample_size(10)
        .warm_up_time(Duration::from_millis(1))
        .measurement_time(Duration::from_secs(1));
    for n in sizes() {
        let flat = generate("gen_flat_nft.py", n);
        g.bench_function(BenchmarkId::new("flat_interval_map_nft_f", n), |b| {
            b.iter_custom(|iters| load("nft", &["-f", "-"], &flat, iters))
        });
        let ipt = generate("gen_kp_ipt.py", n);
        for tool in ["iptables-legacy-restore", "iptables-nft-restore"] {
            g.bench_function(
                BenchmarkId::new(format!("kube_proxy_iptables_{tool}"), n),
                |b| b.iter_custom(|iters| load(tool, &[], &ipt, iters)),
            );
        }
    }
    for n in [1000, 2000] {
        let kp = generate("gen_kp_nft.py", n);
        g.bench_function(BenchmarkId::new("kube_proxy_nftables_nft_f", n), |b| {
            b.iter_custom(|iters| load("nft", &["-f", "-"], &kp, iters))
        });
    }
    g.finish();
}

criterion_group!(benches, router_bench, reference_bench);
criterion_main!(benches);
