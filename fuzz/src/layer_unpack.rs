//! Layer unpacking of the native image store (`node_cri::native::image::unpack_layer`) with
//! hostile tar streams (plain, gzip or zstd): whatever the entries say (`..`, absolute names,
//! symlinks and hard links pointing out, whiteouts, devices), nothing may be written outside the
//! layer directory, and a failed unpack leaves no layer directory behind.

use std::path::Path;

use node_cri::native::image::{UnpackOptions, unpack_layer};

fn names(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .map(|rd| {
            rd.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

/// One input: its bytes as a layer blob.
pub fn run(data: &[u8]) {
    let tmp = tempfile::tempdir().expect("a temporary directory");
    let base = tmp.path();
    let outside = base.join("outside");
    std::fs::create_dir(&outside).unwrap();
    std::fs::write(outside.join("sentinel"), "x").unwrap();
    let target = base.join("layer");
    let opts = UnpackOptions {
        allow_devices: false,
        preserve_ownership: false,
    };
    let res = unpack_layer(std::io::Cursor::new(data), "fuzz", &target, &opts);
    let top = names(base);
    let want: &[&str] = if res.is_ok() {
        &["layer", "outside"]
    } else {
        &["outside"]
    };
    assert_eq!(top, want, "after {res:?}: the base directory holds {top:?}");
    assert_eq!(
        names(&outside),
        ["sentinel"],
        "something was written next to the layer"
    );
    assert_eq!(
        std::fs::read_to_string(outside.join("sentinel")).unwrap(),
        "x",
        "a file outside the layer was changed"
    );
}
