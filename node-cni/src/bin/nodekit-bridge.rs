//! `nodekit-bridge`: the native bridge plugin as a CNI plugin binary, for containerd or CRI-O
//! from `/etc/cni/net.d` (`"type": "nodekit-bridge"`, with `bridge`, `subnets`, `gateways`,
//! `mtu`, `ipMasq`, `hairpinMode`, `dataDir`, `stateDir`; no `ipam`: it leases addresses itself).

use std::io::{Read, Write};

fn main() {
    let mut stdin = Vec::new();
    let _ = std::io::stdin().read_to_end(&mut stdin);
    let env = std::env::vars().collect();
    let outcome = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt.block_on(node_cni::skel::run_bridge(&env, &stdin)),
        Err(e) => node_cni::skel::Outcome {
            stdout: format!(
                r#"{{"cniVersion":"1.1.0","code":5,"msg":"cannot start a runtime: {e}"}}"#
            ),
            status: 1,
        },
    };
    let mut out = std::io::stdout();
    let _ = out.write_all(outcome.stdout.as_bytes());
    let _ = out.flush();
    std::process::exit(outcome.status);
}
