//! The private containerd of the kubelet's root tests (node-test-support's `ContainerdFixture`)
//! as the kubelet's runtime: a CRI client of it, the client with the fixture's cgroup parent,
//! and test bodies inside the fixture's network namespace.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use node_core::RuntimeBackend;
use node_cri::{CriClient, CriClientConfig};
use node_test_support::{ContainerdFixture, HookedRuntime};

/// A CRI client of the fixture's containerd (a failure shows the daemon's log tail).
pub async fn connect(f: &ContainerdFixture) -> Arc<CriClient> {
    Arc::new(
        CriClient::connect(CriClientConfig {
            endpoint: f.endpoint(),
            connect_timeout: Duration::from_secs(5),
            call_timeout: Duration::from_secs(60),
            image_pull_timeout: Duration::from_secs(120),
        })
        .await
        .unwrap_or_else(|e| panic!("connect to containerd: {e}\n{}", f.log_tail(30))),
    )
}

/// `client` as the kubelet's runtime: every pod sandbox under the fixture's cgroup parent.
pub fn runtime(f: &ContainerdFixture, client: Arc<CriClient>) -> Arc<dyn RuntimeBackend> {
    let cgroup_parent = f.cgroup_parent().to_string();
    Arc::new(HookedRuntime::new(client).adjusting_sandboxes(move |c| {
        c.linux.get_or_insert_with(Default::default).cgroup_parent = cgroup_parent.clone();
    }))
}

/// Run an async test body on a thread inside the fixture's network namespace.
pub fn in_netns<F: Future<Output = ()>>(f: &ContainerdFixture, body: impl FnOnce() -> F + Send) {
    f.netns()
        .run_in(move || super::block_on(body()))
        .expect("run in the fixture's namespace");
}
