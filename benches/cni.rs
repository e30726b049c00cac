//! CNI ADD/DEL latency: the native `BridgePlugin` against `ExecCni` running the reference
//! `bridge` + `host-local` plugins from /usr/lib/cni, in the same run; and 30 concurrent ADDs
//! against one, for both. Needs root: everything runs inside throwaway network namespaces (the node
//! is a namespace too). Run with `cargo bench --bench cni`.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::Criterion;
use node_cni::{BridgeConfig, BridgePlugin, ExecCni, ExecConfig};
use node_core::{Attachment, CniPlugin, PodRef};
use node_test_support::NetnsFixture;

fn attachment(pod: &NetnsFixture, id: &str) -> Attachment {
    Attachment {
        container_id: id.into(),
        netns: pod.path(),
        ifname: "eth0".into(),
        pod: PodRef::new("default", id, id),
        capabilities: Default::default(),
    }
}

/// CPU time (user + system) of this process and its reaped children so far.
fn cpu_time() -> Duration {
    let mut total = Duration::ZERO;
    for who in [libc::RUSAGE_SELF, libc::RUSAGE_CHILDREN] {
        // SAFETY: getrusage fills the zeroed struct we own.
        let u = unsafe {
            let mut u: libc::rusage = std::mem::zeroed();
            libc::getrusage(who, &mut u);
            u
        };
        for tv in [u.ru_utime, u.ru_stime] {
            total +=
                Duration::from_secs(tv.tv_sec as u64) + Duration::from_micros(tv.tv_usec as u64);
        }
    }
    total
}

/// 30 concurrent ADDs (then their DELs), three rounds: the median wall time of the ADDs and
/// the CPU time (ours and the plugins' processes) per ADD. On `cores` CPUs, 30 ADDs cannot take
/// less than `30 x cpu per ADD / cores` whatever the concurrency: printed as the floor.
fn cpu_probe(rt: &tokio::runtime::Runtime, name: &str, p: &Arc<dyn CniPlugin>, all: &[Attachment]) {
    let mut walls = Vec::new();
    let mut cpus = Vec::new();
    for _ in 0..3 {
        let (t, c) = (Instant::now(), cpu_time());
        rt.block_on(async {
            let tasks: Vec<_> = all
                .iter()
                .map(|a| {
                    let (p, a) = (p.clone(), a.clone());
                    tokio::spawn(async move { p.add(&a).await })
                })
                .collect();
            for t in tasks {
                t.await.expect("join").expect("ADD");
            }
        });
        walls.push(t.elapsed());
        cpus.push(cpu_time() - c);
        rt.block_on(async {
            for a in all {
                p.del(a).await.expect("DEL");
            }
        });
    }
    walls.sort();
    cpus.sort();
    let n = all.len() as u32;
    let cores = std::thread::available_parallelism().map_or(1, |c| c.get()) as u32;
    let per_add = cpus[1] / n;
    eprintln!(
        "{name}: {n} concurrent ADDs: wall {:.1} ms, cpu {:.2} ms per ADD, floor on {cores} cores {:.1} ms",
        walls[1].as_secs_f64() * 1e3,
        per_add.as_secs_f64() * 1e3,
        (per_add * n / cores).as_secs_f64() * 1e3
    );
}

fn main() -> anyhow::Result<()> {
    let me = "benches/cni.rs";
    if !(node_test_support::require_root(me)
        && node_test_support::require_path(me, "/usr/lib/cni/bridge"))
    {
        return Ok(());
    }
    let dir = std::env::temp_dir().join(format!("nodekit-bench-cni-{}", std::process::id()));
    std::fs::create_dir_all(dir.join("net.d"))?;
    std::fs::write(
        dir.join("net.d/10-ref.conflist"),
        format!(
            r#"{{"cniVersion":"1.0.0","name":"bench-ref","plugins":[{{"type":"bridge","bridge":"nkbref","isGateway":true,
               "ipam":{{"type":"host-local","ranges":[[{{"subnet":"10.201.0.0/16"}}]],"dataDir":"{}/ref-leases"}}}}]}}"#,
            dir.display()
        ),
    )?;
    let node = NetnsFixture::new("bnode")?;
    let pods: Vec<NetnsFixture> = (0..30)
        .map(|i| NetnsFixture::new(&format!("bp{i}")))
        .collect::<Result<_, _>>()?;
    let result = node.run_in(|| -> anyhow::Result<()> {
        // Worker threads are spawned from this thread: they are in the node's namespace too.
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()?;
        let native = Arc::new(BridgePlugin::new(BridgeConfig {
            network: "bench-native".into(),
            bridge: "nkbnat".into(),
            subnets: vec!["10.200.0.0/16".parse()?],
            lease_dir: dir.join("native-leases"),
            state_dir: dir.join("native-state"),
            ..Default::default()
        })?);
        let reference = Arc::new(ExecCni::new(
            ExecConfig::default()
                .conf_dir(dir.join("net.d"))
                .bin_dirs([PathBuf::from("/usr/lib/cni")])
                .cache_dir(dir.join("cache")),
        )?);
        let plugins: [(&str, Arc<dyn CniPlugin>); 2] =
            [("native", native.clone()), ("exec_reference", reference)];
        let mut c = Criterion::default()
            .configure_from_args()
            .sample_size(20)
            .warm_up_time(Duration::from_secs(1))
            .measurement_time(Duration::from_secs(5));

        let a = attachment(&pods[0], "bench-0");
        let mut g = c.benchmark_group("cni_add");
        for (name, p) in &plugins {
            g.bench_function(*name, |b| {
                b.iter_custom(|iters| {
                    let mut total = Duration::ZERO;
                    for _ in 0..iters {
                        let t = Instant::now();
                        rt.block_on(p.add(&a)).expect("ADD");
                        total += t.elapsed();
                        rt.block_on(p.del(&a)).expect("DEL");
                    }
                    total
                })
            });
        }
        g.finish();

        let mut g = c.benchmark_group("cni_add_del");
        for (name, p) in &plugins {
            g.bench_function(*name, |b| {
                b.iter(|| {
                    rt.block_on(async {
                        p.add(&a).await.expect("ADD");
                        p.del(&a).await.expect("DEL");
                    })
                })
            });
        }
        g.finish();

        let all: Vec<Attachment> = pods
            .iter()
            .enumerate()
            .map(|(i, p)| attachment(p, &format!("bench-{i}")))
            .collect();
        for (name, p) in &plugins {
            cpu_probe(&rt, name, p, &all);
        }
        let mut g = c.benchmark_group("cni_concurrent_add");
        g.sample_size(10);
        for (name, p) in &plugins {
            for n in [1usize, 30] {
                g.bench_function(format!("{name}/{n}"), |b| {
                    b.iter_custom(|iters| {
                        let mut total = Duration::ZERO;
                        for _ in 0..iters {
                            let t = Instant::now();
                            rt.block_on(async {
                                let tasks: Vec<_> = all[..n]
                                    .iter()
                                    .map(|a| {
                                        let (p, a) = (p.clone(), a.clone());
                                        tokio::spawn(async move { p.add(&a).await })
                                    })
                                    .collect();
                                for t in tasks {
                                    t.await.expect("join").expect("ADD");
                                }
                            });
                            total += t.elapsed();
                            rt.block_on(async {
                                for a in &all[..n] {
                                    p.del(a).await.expect("DEL");
                                }
                            });
                        }
                        total
                    })
                });
            }
        }
        g.finish();
        rt.block_on(native.teardown_node(true))?;
        c.final_summary();
        Ok(())
    });
    let _ = std::fs::remove_dir_all(&dir);
    result?
}
