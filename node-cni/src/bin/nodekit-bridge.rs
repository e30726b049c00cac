//! `nodekit-bridge`: the native bridge plugin as a CNI plugin binary, for containerd or CRI-O
//! from `/etc/cni/net.d` (`"type": "nodekit-bridge"`, with `bridge`, `subnets`, `gateways`,
//! `mtu`, `ipMasq`, `hairpinMode`, `dataDir`, `stateDir`; no `ipam`: it leases addresses itself).

fn main() {
    node_cni::skel::plugin_main(
        node_cni::skel::PLUGIN_VERSIONS,
        node_cni::skel::bridge_plugin,
    )
}
