//! The all-in-one node agent: pods and services from a manifest directory, the native runtime,
//! the native bridge CNI plugin and the nftables router.
//!
//! Not assembled yet: this placeholder says which parts are still missing.

fn main() {
    println!("nodekit node-agent: not assembled yet.");
    println!(
        "The demo needs the native runtime, the native bridge plugin, the nftables router and the pod workers;"
    );
    println!("see CHANGELOG.md for what has landed.");
}
