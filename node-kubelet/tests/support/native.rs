//! The native-runtime fixture of the kubelet's root tests: a guard for a test's root directory
//! and cgroup root, the init binary, and the busybox test image as a layer directory.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use std::time::Duration;

use node_cri::native::runtime::{
    LayerDirImages, NativeConfig, NativeRuntime, ResolvedImage, RootfsProvider, default_init_binary,
};
use node_test_support::{FakeCni, FakeRuntime, TestImage};

static N: AtomicUsize = AtomicUsize::new(0);

/// A test's root directory and cgroup root (`nodekit-test/<pid>-<label>-<n>`); on drop every
/// process left in that cgroup tree is killed and every mount under the directory detached,
/// panics included (the directory itself goes with its `TempDir`).
pub struct Guard {
    /// The root directory.
    pub dir: tempfile::TempDir,
    /// The cgroup root, relative to the hierarchies' mount points.
    pub cgroup_top: String,
}

impl Guard {
    /// A fresh guard; `label` names the test file in the directory and cgroup names.
    pub fn new(label: &str) -> Self {
        let dir = tempfile::Builder::new()
            .prefix(&format!("nodekit-{label}-{}-", std::process::id()))
            .tempdir()
            .unwrap();
        let n = N.fetch_add(1, Ordering::SeqCst);
        Self {
            dir,
            cgroup_top: format!("nodekit-test/{}-{label}-{n}", std::process::id()),
        }
    }

    /// The kubelet's cgroup root under the guard's (`<top>/kubepods`).
    pub fn cgroup_root(&self) -> String {
        format!("{}/kubepods", self.cgroup_top)
    }
}

impl Drop for Guard {
    fn drop(&mut self) {
        for d in node_test_support::sweep::cgroup_dirs(&self.cgroup_top) {
            node_test_support::sweep::kill_cgroup_tree(&d);
        }
        node_test_support::sweep::detach_mounts_under(self.dir.path());
    }
}

/// `nodekit-init`: `NODEKIT_INIT`, else next to the test binaries, else built now (once).
pub fn init_binary() -> PathBuf {
    if let Some(p) = std::env::var_os("NODEKIT_INIT") {
        return PathBuf::from(p);
    }
    if let Some(p) = default_init_binary() {
        return p;
    }
    static BUILD: std::sync::Once = std::sync::Once::new();
    BUILD.call_once(|| {
        let workspace = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let st = std::process::Command::new(cargo)
            .args(["build", "-p", "node-cri", "--bin", "nodekit-init"])
            .current_dir(workspace)
            .status()
            .expect("running cargo");
        assert!(st.success(), "building nodekit-init failed");
    });
    default_init_binary().expect("nodekit-init was built next to the test binaries")
}

/// The busybox test image, unpacked under `dir`, as image `reference` of a layer-directory
/// image source for the native runtime.
pub fn busybox_images(dir: &Path, reference: &str) -> Arc<LayerDirImages> {
    let images = Arc::new(LayerDirImages::new());
    let img = TestImage::busybox().build().expect("busybox image");
    images.insert(
        reference,
        ResolvedImage {
            id: img.config.digest.clone(),
            layer_dirs: img.unpack_layers(dir).expect("unpack busybox"),
            config: img.parsed_config().expect("busybox image config"),
        },
    );
    images
}

/// The native runtime of a test under `g`: its state under `<dir>/rt`, its pods' cgroups under
/// `<top>/runtime`, root filesystems from `images`, a fake CNI and a 10 s kill wait.
pub fn runtime(g: &Guard, images: Arc<dyn RootfsProvider>) -> Arc<NativeRuntime> {
    Arc::new(
        NativeRuntime::new(NativeConfig {
            root: g.dir.path().join("rt"),
            cni: Arc::new(FakeCni::new()),
            images,
            init_binary: Some(init_binary()),
            cgroup_parent: format!("{}/runtime", g.cgroup_top),
            kill_wait: Duration::from_secs(10),
            ..Default::default()
        })
        .expect("native runtime"),
    )
}

/// [`runtime`] with the busybox test image as image `reference`, and an image service that
/// has it (pods with `imagePullPolicy: Never` run it); `<dir>/resolv.conf` is written for the
/// kubelet's pods.
pub fn busybox_runtime(g: &Guard, reference: &str) -> (Arc<NativeRuntime>, Arc<FakeRuntime>) {
    let root = g.dir.path();
    std::fs::write(root.join("resolv.conf"), "nameserver 10.96.0.10\n").unwrap();
    let runtime = runtime(g, busybox_images(root, reference));
    let images = FakeRuntime::new();
    images.add_image(reference);
    (runtime, Arc::new(images))
}
