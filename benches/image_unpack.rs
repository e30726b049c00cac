//! Native image store figures: unpacking the busybox test layer (gzip and zstd; GNU `tar -xzf` of
//! the same blob as the reference, measured in the same run) and a full pull from a local
//! docker-registry on 127.0.0.1 into an empty store.
//!
//! `cargo bench --bench image_unpack`. Needs busybox-static, GNU tar and docker-registry; run as
//! root to get ownership preserved like production (as another user it still measures).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use criterion::{Criterion, criterion_group, criterion_main};
use node_cri::native::image::{ImageStore, ImageStoreConfig, UnpackOptions, unpack_layer};
use node_test_support::{LocalRegistry, TestImage};

static N: AtomicU64 = AtomicU64::new(0);

/// A fresh directory path under a bench scratch dir (removed by the caller).
fn fresh(base: &Path) -> PathBuf {
    base.join(format!("t{}", N.fetch_add(1, Ordering::Relaxed)))
}

fn scratch() -> PathBuf {
    let p = std::env::temp_dir().join(format!("nodekit-bench-image-{}", std::process::id()));
    std::fs::create_dir_all(&p).unwrap();
    p
}

fn unpack(c: &mut Criterion) {
    let img = TestImage::busybox()
        .build()
        .expect("busybox-static is needed");
    let gz = img.layers[0].bytes.clone();
    let mut tar = Vec::new();
    std::io::copy(&mut flate2::read::GzDecoder::new(&gz[..]), &mut tar).unwrap();
    let zst = zstd::encode_all(&tar[..], 3).unwrap();
    let base = scratch();
    let gz_file = base.join("layer.tar.gz");
    std::fs::File::create(&gz_file)
        .unwrap()
        .write_all(&gz)
        .unwrap();
    let opts = UnpackOptions::default();

    let mut g = c.benchmark_group("image_unpack");
    g.sample_size(30).measurement_time(Duration::from_secs(8));
    for (name, blob) in [
        ("busybox_layer_gzip", &gz),
        ("busybox_layer_zstd", &zst),
        ("busybox_layer_plain", &tar),
    ] {
        g.bench_function(name, |b| {
            b.iter_custom(|iters| {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    let target = fresh(&base);
                    let t = Instant::now();
                    unpack_layer(&blob[..], "sha256:bench", &target, &opts).unwrap();
                    total += t.elapsed();
                    std::fs::remove_dir_all(&target).unwrap();
                }
                total
            })
        });
    }
    g.bench_function("reference_gnu_tar_xzf_gzip", |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                let target = fresh(&base);
                std::fs::create_dir(&target).unwrap();
                let t = Instant::now();
                let st = std::process::Command::new("tar")
                    .arg("-xzf")
                    .arg(&gz_file)
                    .arg("-C")
                    .arg(&target)
                    .status()
                    .unwrap();
                total += t.elapsed();
                assert!(st.success());
                std::fs::remove_dir_all(&target).unwrap();
            }
            total
        })
    });
    g.finish();
    let _ = std::fs::remove_dir_all(&base);
}

fn pull(c: &mut Criterion) {
    let reg = LocalRegistry::start().expect("docker-registry is needed");
    let img = TestImage::busybox().build().unwrap();
    let reference = reg.push(&img, "bench/busybox", "1").unwrap();
    let base = scratch();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let mut g = c.benchmark_group("image_pull");
    g.sample_size(20).measurement_time(Duration::from_secs(10));
    g.bench_function("busybox_from_local_registry_into_empty_store", |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                let root = fresh(&base);
                let store = ImageStore::new(ImageStoreConfig {
                    root: root.clone(),
                    ..Default::default()
                })
                .unwrap();
                let t = Instant::now();
                rt.block_on(store.pull(&reference, None)).unwrap();
                total += t.elapsed();
                drop(store);
                std::fs::remove_dir_all(&root).unwrap();
            }
            total
        })
    });
    let root = fresh(&base);
    let store = ImageStore::new(ImageStoreConfig {
        root: root.clone(),
        ..Default::default()
    })
    .unwrap();
    rt.block_on(store.pull(&reference, None)).unwrap();
    g.bench_function("busybox_again_already_present", |b| {
        b.iter(|| rt.block_on(store.pull(&reference, None)).unwrap())
    });
    g.finish();
    let _ = std::fs::remove_dir_all(&base);
}

criterion_group!(benches, unpack, pull);
criterion_main!(benches);
