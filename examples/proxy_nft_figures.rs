//! Prints the nftables router's figures next to the references, measured in the same run, in
//! throwaway network namespaces (needs root, `nft`, `python3`, `iptables-legacy-restore`,
//! `iptables-nft-restore` and the reference generators: `$NODEKIT_REFERENCE_DIR` or
//! `../shared/reference` from the workspace root).
//!
//! `cargo run --release --example proxy_nft_figures -- [--sizes 1000,10000] [--runs 3] [--kp-nft-max 2000]`

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use node_core::ServiceRouter;
use node_proxy::NftablesRouter;
use node_test_support::NetnsFixture;
use node_test_support::proxy_state::{
    synthetic, with_one_endpoint_changed, with_one_service_added,
};

/// The directory of the reference generators.
fn reference_dir() -> Result<PathBuf> {
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
    if !dir.join("gen_kp_nft.py").exists() {
        bail!(
            "reference generators not found in {} (set NODEKIT_REFERENCE_DIR to the directory holding gen_kp_nft.py, gen_kp_ipt.py, gen_flat_nft.py)",
            dir.display()
        );
    }
    Ok(dir)
}

fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1).and_then(|v| v.parse().ok()))
        })
        .unwrap_or(0)
}

fn children_cpu() -> Duration {
    // SAFETY: getrusage fills the struct we pass.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(libc::RUSAGE_CHILDREN, &mut ru) };
    let tv = |t: libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1000);
    tv(ru.ru_utime) + tv(ru.ru_stime)
}

/// Time `cmd < input` inside a fresh namespace (the command only): wall and CPU (user + system,
/// the kernel's work included).
fn time_load(program: &str, args: &[&str], input: &[u8]) -> Result<(Duration, Duration)> {
    let ns = NetnsFixture::new("ref")?;
    let mut c = ns.command(program);
    c.args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    let path = std::env::temp_dir().join(format!("nodekit-ref-{}.txt", std::process::id()));
    std::fs::write(&path, input)?;
    let file = std::fs::File::open(&path)?;
    c.stdin(file);
    let (start, cpu0) = (Instant::now(), children_cpu());
    let out = c.output()?;
    let took = (start.elapsed(), children_cpu() - cpu0);
    let _ = std::fs::remove_file(&path);
    if !out.status.success() {
        bail!("{program} failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(took)
}

fn generate(dir: &std::path::Path, script: &str, n: usize) -> Result<Vec<u8>> {
    let out = Command::new("python3")
        .arg(dir.join(script))
        .args([n.to_string(), "5".into()])
        .output()
        .with_context(|| format!("python3 {script}"))?;
    Ok(out.stdout)
}

/// CPU time of this thread (user + system: the kernel's work on our sendmsg included), so that
/// figures can be read apart from the machine's load.
fn thread_cpu() -> Duration {
    // SAFETY: getrusage fills the struct we pass.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(libc::RUSAGE_THREAD, &mut ru) };
    let tv = |t: libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1000);
    tv(ru.ru_utime) + tv(ru.ru_stime)
}

/// Run `f`, returning (wall, cpu).
fn timed<T>(f: impl FnOnce() -> T) -> (T, Duration, Duration) {
    let (w, c) = (Instant::now(), thread_cpu());
    let out = f();
    (out, w.elapsed(), thread_cpu() - c)
}

fn median2(v: Vec<(Duration, Duration)>) -> String {
    let (w, c): (Vec<Duration>, Vec<Duration>) = v.into_iter().unzip();
    format!("{} (cpu {})", ms(median(w)), ms(median(c)))
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn ms(d: Duration) -> String {
    format!("{:.2} ms", d.as_secs_f64() * 1000.0)
}

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let opt = |name: &str| {
        args.iter()
            .position(|a| a == name)
            .and_then(|i| args.get(i + 1))
            .cloned()
    };
    let sizes: Vec<usize> = opt("--sizes")
        .unwrap_or_else(|| "1000,10000".into())
        .split(',')
        .map(|s| s.parse().unwrap())
        .collect();
    let runs: usize = opt("--runs").map(|r| r.parse().unwrap()).unwrap_or(3);
    let kp_nft_max: usize = opt("--kp-nft-max")
        .map(|r| r.parse().unwrap())
        .unwrap_or(2000);
    if let Some(n) = opt("--dump") {
        // the ruleset of n x 5 as nft input, to compare with `nft -f` by hand
        print!(
            "{}",
            node_proxy::nftables::render_ruleset("nodekit", &synthetic(n.parse()?, 5))
        );
        return Ok(());
    }
    let dir = reference_dir()?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    println!("| size (services x 5) | measure | time (median of {runs}) |");
    println!("|---|---|---|");
    for &n in &sizes {
        let ns = NetnsFixture::new("bench")?;
        let a = synthetic(n, 5);
        let b = with_one_endpoint_changed(&a);
        let plus = with_one_service_added(&a, 5);
        let rss0 = rss_kib();
        let router: Arc<NftablesRouter> = Arc::new(ns.run_in(NftablesRouter::new)??);
        let (mut gw, mut gc) = (vec![], vec![]);
        for _ in 0..runs {
            let (_, w, c) = timed(|| router.generate(&a));
            gw.push(w);
            gc.push(c);
        }
        let (mut fw, mut fc) = (vec![], vec![]);
        for _ in 0..runs {
            router.force_full_sync();
            let (r, w, c) = timed(|| rt.block_on(router.sync(&a)));
            assert!(r?.full);
            fw.push(w);
            fc.push(c);
        }
        let rss1 = rss_kib();
        let (mut ow, mut oc) = (vec![], vec![]);
        for i in 0..runs.max(5) * 2 {
            let (r, w, c) = timed(|| rt.block_on(router.sync(if i % 2 == 0 { &b } else { &a })));
            let r = r?;
            assert!(!r.full && r.changes > 0);
            ow.push(w);
            oc.push(c);
        }
        rt.block_on(router.sync(&a))?;
        let (mut aw, mut ac) = (vec![], vec![]);
        for i in 0..runs.max(5) * 2 {
            let (r, w, c) = timed(|| rt.block_on(router.sync(if i % 2 == 0 { &plus } else { &a })));
            r?;
            aw.push(w);
            ac.push(c);
        }
        let both = |w: Vec<Duration>, c: Vec<Duration>| {
            format!("{} (cpu {})", ms(median(w)), ms(median(c)))
        };
        let elements = router.programmed_elements();
        println!(
            "| {n} | nodekit full sync (one transaction, {elements} elements) | {} |",
            both(fw, fc)
        );
        println!("| {n} | nodekit one endpoint changed | {} |", both(ow, oc));
        println!(
            "| {n} | nodekit one service added/removed | {} |",
            both(aw, ac)
        );
        println!(
            "| {n} | nodekit ruleset generation alone | {} |",
            both(gw, gc)
        );
        println!(
            "| {n} | router RSS delta after full sync | {:.1} MiB |",
            (rss1.saturating_sub(rss0)) as f64 / 1024.0
        );
        drop(router);
        drop(ns);
        let flat = generate(&dir, "gen_flat_nft.py", n)?;
        let t = median2(
            (0..runs)
                .map(|_| time_load("nft", &["-f", "-"], &flat))
                .collect::<Result<_>>()?,
        );
        println!("| {n} | reference: flat interval map, nft -f | {} |", t);
        let ipt = generate(&dir, "gen_kp_ipt.py", n)?;
        for tool in ["iptables-legacy-restore", "iptables-nft-restore"] {
            let t = median2(
                (0..runs)
                    .map(|_| time_load(tool, &[], &ipt))
                    .collect::<Result<_>>()?,
            );
            println!(
                "| {n} | reference: kube-proxy iptables layout, {tool} | {} |",
                t
            );
        }
        if n <= kp_nft_max {
            let kp = generate(&dir, "gen_kp_nft.py", n)?;
            let t = median2(
                (0..runs)
                    .map(|_| time_load("nft", &["-f", "-"], &kp))
                    .collect::<Result<_>>()?,
            );
            println!(
                "| {n} | reference: kube-proxy nftables layout, nft -f | {} |",
                t
            );
        } else {
            println!(
                "| {n} | reference: kube-proxy nftables layout, nft -f | not run (> --kp-nft-max {kp_nft_max}) |"
            );
        }
    }
    if kp_nft_max < 2000 || !sizes.contains(&2000) {
        let kp = generate(&dir, "gen_kp_nft.py", 2000)?;
        let t = median2(vec![time_load("nft", &["-f", "-"], &kp)?]);
        println!(
            "| 2000 | reference: kube-proxy nftables layout, nft -f (1 run) | {} |",
            t
        );
    }
    Ok(())
}
