//! CNI ADD/DEL latency: the native `BridgePlugin` against `ExecCni` running the reference
//! `bridge` + `host-local` plugins from /usr/lib/cni, in the same run; and 30 concurrent ADDs
//! against one, for both. ADD with one host port: the native plugin in-process and the
//! `nodekit-bridge` binary through `ExecCni` (the binary is `$NODEKIT_BRIDGE_BIN`, else
//! `target/debug/nodekit-bridge`: build it first, `cargo build -p node-cni --bin nodekit-bridge`).
//! ADD with 10 and 500 leases of other pods on disk; DEL alone. The kernel's share of an ADD
//! and of a DEL (bare veth pairs) is printed on stderr.
//! Needs root: everything runs inside throwaway network namespaces (the node is a namespace too).
//! Run with `cargo bench --bench cni`.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::Criterion;
use node_cni::{BridgeConfig, BridgePlugin, ExecCni, ExecConfig};
use node_core::{Attachment, CniPlugin, PodRef, PortMapping};
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

/// The attachment with one TCP host port `port` (to the pod's port 80).
fn with_host_port(mut a: Attachment, port: u16) -> Attachment {
    a.capabilities.port_mappings = vec![PortMapping {
        host_port: port,
        container_port: 80,
        protocol: "tcp".into(),
        host_ip: None,
    }];
    a
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

/// The kernel's share, without any plugin: bare veth pairs (host end in the node's namespace,
/// peer created directly in a pod's namespace) on one route-netlink socket, one alone and 30
/// sent back to back; five rounds, the medians. Each creation holds the rtnl lock, so 30 of them
/// take about 30 times one whatever the concurrency: the floor under "30 concurrent ADDs".
fn kernel_floor(rt: &tokio::runtime::Runtime, pods: &[NetnsFixture]) -> anyhow::Result<()> {
    use rtnetlink::packet_route::link::{InfoData, InfoKind, InfoVeth};
    use rtnetlink::{LinkMessageBuilder, LinkUnspec, LinkVeth};
    use std::os::fd::AsRawFd;

    let fds: Vec<std::fs::File> = pods
        .iter()
        .map(|p| std::fs::File::open(p.path()))
        .collect::<Result<_, _>>()?;
    rt.block_on(async {
        let (conn, handle, _) = rtnetlink::new_connection()?;
        let task = tokio::spawn(conn);
        let veth = |i: usize| {
            let peer = LinkUnspec::new_with_name("nkfloor0")
                .setns_by_fd(fds[i].as_raw_fd())
                .build();
            LinkMessageBuilder::<LinkVeth>::new_with_info_kind(InfoKind::Veth)
                .name(format!("nkfloor{i}"))
                .set_info_data(InfoData::Veth(InfoVeth::Peer(peer)))
                .build()
        };
        let mut one = Vec::new();
        let mut thirty = Vec::new();
        let mut del_one = Vec::new();
        for _ in 0..5 {
            for n in [1usize, 30] {
                let t = Instant::now();
                futures::future::try_join_all(
                    (0..n).map(|i| handle.link().add(veth(i)).execute()),
                )
                .await?;
                let took = t.elapsed();
                if n == 1 { one.push(took) } else { thirty.push(took) }
                let t = Instant::now();
                futures::future::try_join_all((0..n).map(|i| {
                    handle
                        .link()
                        .del_with_message(LinkUnspec::new_with_name(&format!("nkfloor{i}")).build())
                        .execute()
                }))
                .await?;
                if n == 1 {
                    del_one.push(t.elapsed());
                }
            }
        }
        task.abort();
        del_one.sort();
        one.sort();
        thirty.sort();
        eprintln!(
            "kernel floor: veth pair with its peer in a pod namespace: one {:.2} ms, 30 on one socket {:.1} ms ({:.1}x)",
            one[2].as_secs_f64() * 1e3,
            thirty[2].as_secs_f64() * 1e3,
            thirty[2].as_secs_f64() / one[2].as_secs_f64()
        );
        eprintln!(
            "kernel floor: deleting that veth pair (by its node end): {:.2} ms",
            del_one[2].as_secs_f64() * 1e3
        );
        anyhow::Ok(())
    })
}

/// Leave exactly `n` leases of other pods in `dir` (`10.200.200.0` on, host-local's layout).
fn fill_leases(dir: &std::path::Path, n: usize) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir)?;
    for i in 0..500u32 {
        let ip = std::net::Ipv4Addr::from(u32::from(std::net::Ipv4Addr::new(10, 200, 200, 0)) + i);
        let path = dir.join(ip.to_string());
        if (i as usize) < n {
            if !path.exists() {
                std::fs::write(&path, format!("filler-{i}\r\neth0"))?;
            }
        } else if path.exists() {
            std::fs::remove_file(&path)?;
        }
    }
    Ok(())
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
    let bridge_bin = std::env::var_os("NODEKIT_BRIDGE_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/debug/nodekit-bridge")
        });
    let bin_dir = dir.join("bin");
    std::fs::create_dir_all(dir.join("net-bin.d"))?;
    std::fs::create_dir_all(&bin_dir)?;
    let with_binary = std::fs::copy(&bridge_bin, bin_dir.join("nodekit-bridge")).is_ok();
    if !with_binary {
        eprintln!(
            "no plugin binary at {}: the exec_binary cases are left out",
            bridge_bin.display()
        );
    }
    std::fs::write(
        dir.join("net-bin.d/10-bin.conflist"),
        format!(
            r#"{{"cniVersion":"1.0.0","name":"bench-bin","plugins":[{{"type":"nodekit-bridge","bridge":"nkbbin",
               "subnets":["10.202.0.0/16"],"ipMasq":true,"dataDir":"{0}/bin-leases","stateDir":"{0}/bin-state",
               "capabilities":{{"portMappings":true}}}}]}}"#,
            dir.display()
        ),
    )?;
    // `cargo bench` passes `--bench`: then the figures on stderr (CPU per ADD, the kernel's floor)
    // are measured too. A test run (nextest, `cargo test`) runs each case once, usually one
    // case per process: it makes only the pod namespaces its cases need.
    let args: Vec<String> = std::env::args().skip(1).collect();
    let measuring = args.iter().any(|a| a == "--bench");
    let filters: Vec<&String> = args
        .iter()
        .filter(|a| !a.starts_with('-') && a.as_str() != "terse")
        .collect();
    let concurrent = measuring
        || filters.is_empty()
        || filters
            .iter()
            .any(|f| f.contains("cni_concurrent_add") || "cni_concurrent_add".contains(f.as_str()));
    let node = NetnsFixture::new("bnode")?;
    let pods: Vec<NetnsFixture> = (0..if concurrent { 30 } else { 1 })
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
        let binary: Arc<dyn CniPlugin> = Arc::new(ExecCni::new(
            ExecConfig::default()
                .conf_dir(dir.join("net-bin.d"))
                .bin_dirs([bin_dir.clone()])
                .cache_dir(dir.join("bin-cache")),
        )?);
        let plugins: [(&str, Arc<dyn CniPlugin>); 2] =
            [("native", native.clone()), ("exec_reference", reference)];
        let mut hostport: Vec<(&str, Arc<dyn CniPlugin>)> = vec![("native", native.clone())];
        if with_binary {
            hostport.push(("exec_binary", binary.clone()));
        }
        // DEL without host ports: the two above and the plugin binary
        let mut del_plain: Vec<(&str, Arc<dyn CniPlugin>)> = plugins.to_vec();
        if with_binary {
            del_plain.push(("exec_binary", binary));
        }
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

        // ADD with one host port (its DEL untimed); the one-time setup is done before
        let ah = with_host_port(a.clone(), 18080);
        let mut g = c.benchmark_group("cni_add_hostport");
        for (name, p) in &hostport {
            g.bench_function(*name, |b| {
                b.iter_custom(|iters| {
                    let mut total = Duration::ZERO;
                    for _ in 0..iters {
                        let t = Instant::now();
                        rt.block_on(p.add(&ah)).expect("ADD");
                        total += t.elapsed();
                        rt.block_on(p.del(&ah)).expect("DEL");
                    }
                    total
                })
            });
        }
        g.finish();

        // ADD with 10 and 500 leases of other pods on disk (host-local's layout, written
        // directly): the allocation's cost must not grow with the pod count.
        let lease_dir = dir.join("native-leases/bench-native");
        let mut g = c.benchmark_group("cni_add_leases");
        for n in [10usize, 500] {
            fill_leases(&lease_dir, n)?;
            g.bench_function(format!("native/{n}"), |b| {
                b.iter_custom(|iters| {
                    let mut total = Duration::ZERO;
                    for _ in 0..iters {
                        let t = Instant::now();
                        rt.block_on(native.add(&a)).expect("ADD");
                        total += t.elapsed();
                        rt.block_on(native.del(&a)).expect("DEL");
                    }
                    total
                })
            });
        }
        g.finish();
        fill_leases(&lease_dir, 0)?;

        // DEL alone (its ADD untimed), without and with a host port
        let mut g = c.benchmark_group("cni_del");
        for (name, p) in &del_plain {
            g.bench_function(*name, |b| {
                b.iter_custom(|iters| {
                    let mut total = Duration::ZERO;
                    for _ in 0..iters {
                        rt.block_on(p.add(&a)).expect("ADD");
                        let t = Instant::now();
                        rt.block_on(p.del(&a)).expect("DEL");
                        total += t.elapsed();
                    }
                    total
                })
            });
        }
        for (name, p) in &hostport {
            g.bench_function(format!("{name}_hostport"), |b| {
                b.iter_custom(|iters| {
                    let mut total = Duration::ZERO;
                    for _ in 0..iters {
                        rt.block_on(p.add(&ah)).expect("ADD");
                        let t = Instant::now();
                        rt.block_on(p.del(&ah)).expect("DEL");
                        total += t.elapsed();
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
        if measuring {
            for (name, p) in &plugins {
                cpu_probe(&rt, name, p, &all);
            }
            kernel_floor(&rt, &pods)?;
            let all_hp: Vec<Attachment> = all
                .iter()
                .enumerate()
                .map(|(i, a)| with_host_port(a.clone(), 20000 + i as u16))
                .collect();
            for (name, p) in &hostport {
                cpu_probe(&rt, &format!("{name} with a host port"), p, &all_hp);
            }
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
