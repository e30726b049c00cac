//! Writes the demo's image as an OCI layout: a tiny HTTP server on port 8080 built from
//! busybox-static (no network needed), answering `hello from <pod hostname>`.
//!
//! ```text
//! cargo run --example demo-image -- /tmp/nodekit-demo-image [nodekit.local/demo/web:1]
//! ```

use std::path::PathBuf;

use anyhow::Context;
use node_test_support::TestImage;

fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let dir = PathBuf::from(args.next().context("usage: demo-image DIR [REF]")?);
    let reference = args
        .next()
        .unwrap_or_else(|| "nodekit.local/demo/web:1".to_string());
    let image = TestImage::busybox()
        .file("/var/www/.keep", "", 0o644)
        .cmd(&[
            "sh",
            "-c",
            "echo \"hello from $(hostname)\" > /var/www/index.html; exec httpd -f -p 8080 -h /var/www",
        ])
        .build()
        .context("building the image from /bin/busybox (install busybox-static)")?;
    if dir.exists() {
        std::fs::remove_dir_all(&dir).with_context(|| format!("clearing {}", dir.display()))?;
    }
    image
        .write_oci_layout(&dir, &reference)
        .with_context(|| format!("writing the OCI layout to {}", dir.display()))?;
    println!("{}", dir.display());
    Ok(())
}
