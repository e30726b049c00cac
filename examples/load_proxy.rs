//! The nftables router under endpoint churn, inside throwaway namespaces (needs root and `nft`):
//! `--services` synthetic services (2 endpoints each) plus one stable Service (10.96.0.10:80 ->
//! two echo-server pods of a `ServiceTopology`); for `--seconds`, every sync moves the endpoints
//! of `--churn` random synthetic services while a client outside the node asks the stable
//! Service without pause. Prints syncs/s, sync latency p50/p99/max and the client's
//! answered/failed counts; exits non-zero when a request to the stable Service failed.
//!
//! ```text
//! cargo build -p nodekit --example load_proxy
//! sudo target/debug/examples/load_proxy --services 10000 --seconds 30 --churn 50
//! ```

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Parser;
use node_core::{Endpoint, Protocol, ServicePort, ServicePortName, ServiceRouter};
use node_proxy::NftablesRouter;
use node_test_support::proxy_state::synthetic;
use node_test_support::topology::POD_CIDR;
use node_test_support::{ServiceTopology, tcp_request};

#[derive(Debug, Parser)]
#[command(about = "nftables router syncs under endpoint churn, with traffic to a stable Service")]
struct Args {
    /// Synthetic services (2 endpoints each).
    #[arg(long, default_value_t = 10_000)]
    services: usize,
    /// How long to churn.
    #[arg(long, default_value_t = 30)]
    seconds: u64,
    /// Services whose endpoints move in each sync.
    #[arg(long, default_value_t = 50)]
    churn: usize,
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    sorted[(((sorted.len() - 1) as f64) * p).round() as usize]
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let mut topo = ServiceTopology::new(2).context("the namespaces")?;
    topo.serve_all(8080).context("the echo servers")?;
    // a default route in the node, as every node has (local replies to the ext client use ve0)
    let router = Arc::new(
        topo.node
            .run_in(NftablesRouter::new)
            .context("entering the node namespace")??,
    );
    let mut state = synthetic(args.services, 2);
    state.node.cluster_cidrs = vec![POD_CIDR.parse()?];
    let stable = ServicePortName::new("default", "stable", "http");
    state.services.insert(
        stable.clone(),
        ServicePort {
            cluster_ips: vec!["10.96.0.10".parse()?],
            port: 80,
            protocol: Protocol::Tcp,
            endpoints: topo
                .pods
                .iter()
                .map(|p| Endpoint::ready(p.ip, 8080))
                .collect(),
            ..Default::default()
        },
    );
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let t = Instant::now();
    rt.block_on(router.sync(&state))?;
    println!(
        "initial sync of {} services: {:?}",
        state.services.len(),
        t.elapsed()
    );

    // the client: asks the stable Service from outside the node, without pause
    let stop = Arc::new(AtomicBool::new(false));
    let (ok, failed) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let addr: SocketAddr = "10.96.0.10:80".parse()?;
    let first_error = Arc::new(std::sync::Mutex::new(None::<String>));
    let client = {
        let (stop, ok, failed, first_error) = (
            stop.clone(),
            ok.clone(),
            failed.clone(),
            first_error.clone(),
        );
        let ext = &topo.ext;
        let client_stop = stop.clone();
        std::thread::scope(|s| {
            let h = s.spawn(move || {
                let stop = client_stop;
                while !stop.load(Ordering::SeqCst) {
                    match tcp_request(ext, addr, Duration::from_secs(2)) {
                        Ok(a) if a.pod.starts_with("pod-") => {
                            ok.fetch_add(1, Ordering::SeqCst);
                        }
                        Ok(a) => {
                            failed.fetch_add(1, Ordering::SeqCst);
                            first_error
                                .lock()
                                .unwrap()
                                .get_or_insert(format!("answer from {}", a.pod));
                        }
                        Err(e) => {
                            failed.fetch_add(1, Ordering::SeqCst);
                            first_error.lock().unwrap().get_or_insert(e.to_string());
                        }
                    }
                }
            });
            // churn in this thread meanwhile
            let mut latencies = vec![];
            let mut x: u64 = 0x6e6b_9a11;
            let keys: Vec<ServicePortName> = state
                .services
                .keys()
                .filter(|k| **k != stable)
                .cloned()
                .collect();
            let started = Instant::now();
            let mut round: u32 = 0;
            let mut errors = 0;
            while started.elapsed() < Duration::from_secs(args.seconds) {
                round = round.wrapping_add(1);
                for _ in 0..args.churn.min(keys.len()) {
                    x = x
                        .wrapping_mul(6_364_136_223_846_793_005)
                        .wrapping_add(1_442_695_040_888_963_407);
                    let k = &keys[(x >> 33) as usize % keys.len()];
                    if let Some(sp) = state.services.get_mut(k)
                        && let Some(e) = sp.endpoints.first_mut()
                    {
                        // a new address in 10.200.0.0/16 each time
                        e.ip = format!("10.200.{}.{}", (round >> 8) % 256, round % 256)
                            .parse()
                            .expect("valid");
                    }
                }
                let t = Instant::now();
                match rt.block_on(router.sync(&state)) {
                    Ok(_) => latencies.push(t.elapsed()),
                    Err(e) => {
                        errors += 1;
                        eprintln!("sync failed: {e}");
                    }
                }
            }
            let elapsed = started.elapsed();
            stop.store(true, Ordering::SeqCst);
            h.join().expect("the client thread");
            (latencies, elapsed, errors)
        })
    };
    let (mut latencies, elapsed, sync_errors) = client;
    latencies.sort();
    let (ok, failed) = (ok.load(Ordering::SeqCst), failed.load(Ordering::SeqCst));
    println!(
        "services {} (+1 stable), churn {} services per sync, {:?}: {} syncs ({:.1}/s), sync \
         latency p50 {:?} p99 {:?} max {:?}, sync errors {}; stable Service: {} answered, {} failed",
        args.services,
        args.churn,
        elapsed,
        latencies.len(),
        latencies.len() as f64 / elapsed.as_secs_f64(),
        percentile(&latencies, 0.5),
        percentile(&latencies, 0.99),
        latencies.last().copied().unwrap_or_default(),
        sync_errors,
        ok,
        failed
    );
    if let Some(e) = first_error.lock().unwrap().clone() {
        eprintln!("first client error: {e}");
    }
    rt.block_on(router.cleanup())?;
    anyhow::ensure!(sync_errors == 0, "{sync_errors} syncs failed");
    anyhow::ensure!(
        failed == 0,
        "{failed} requests to the stable Service failed"
    );
    anyhow::ensure!(ok > 0, "no request to the stable Service was answered");
    Ok(())
}
