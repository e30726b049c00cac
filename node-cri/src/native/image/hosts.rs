//! Registry hosts configured the way containerd does: a `certs.d` directory with one
//! `<host>/hosts.toml` per registry (mirrors tried in order, then `server`), `skip_verify`, `ca`,
//! `capabilities`; without a file, `https://<host>` (`registry-1.docker.io` for `docker.io`), and
//! plain HTTP for loopback hosts and the configured insecure registries.

use std::path::{Path, PathBuf};

use super::ImageError;

/// One host to fetch an image from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RegistryHost {
    /// `http` or `https`.
    pub scheme: String,
    /// `host[:port]`.
    pub host: String,
    /// May fetch content by digest.
    pub pull: bool,
    /// May resolve a tag to a digest.
    pub resolve: bool,
    /// Accept any TLS certificate.
    pub skip_verify: bool,
    /// Extra CA certificates (PEM files).
    pub ca: Vec<PathBuf>,
}

impl RegistryHost {
    fn default_for(registry: &str, insecure: &[String]) -> Self {
        let host = if registry == "docker.io" {
            "registry-1.docker.io".to_string()
        } else {
            registry.to_string()
        };
        let scheme = if insecure.iter().any(|h| h == registry) || is_loopback(registry) {
            "http"
        } else {
            "https"
        };
        Self {
            scheme: scheme.into(),
            host,
            pull: true,
            resolve: true,
            skip_verify: false,
            ca: vec![],
        }
    }
}

fn is_loopback(registry: &str) -> bool {
    let host = match registry.rsplit_once(':') {
        Some((h, port)) if port.bytes().all(|b| b.is_ascii_digit()) => h,
        _ => registry,
    };
    let host = host.trim_start_matches('[').trim_end_matches(']');
    host == "localhost"
        || host
            .parse::<std::net::IpAddr>()
            .map(|ip| ip.is_loopback())
            .unwrap_or(false)
}

/// The hosts to try for `registry`, in order: the `[host]` entries of
/// `<config_dir>/<registry>/hosts.toml` (or `<config_dir>/_default/hosts.toml`), then its `server`
/// (or the registry's default host).
pub fn registry_hosts(
    config_dir: Option<&Path>,
    registry: &str,
    insecure: &[String],
) -> Result<Vec<RegistryHost>, ImageError> {
    let default = RegistryHost::default_for(registry, insecure);
    let Some(dir) = config_dir else {
        return Ok(vec![default]);
    };
    if registry.is_empty() || registry.contains('/') || registry.starts_with('.') {
        return Ok(vec![default]);
    }
    let mut host_dir = dir.join(registry);
    if !host_dir.is_dir() {
        host_dir = dir.join("_default");
    }
    if !host_dir.is_dir() {
        return Ok(vec![default]);
    }
    let file = host_dir.join("hosts.toml");
    if !file.is_file() {
        // Docker-style directory: CA certificates only.
        let mut h = default;
        h.ca = crt_files(&host_dir);
        return Ok(vec![h]);
    }
    let text = std::fs::read_to_string(&file).map_err(|e| ImageError::io(&file, e))?;
    parse_hosts_toml(&text, &file, registry, insecure)
}

fn crt_files(dir: &Path) -> Vec<PathBuf> {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return vec![];
    };
    let mut v: Vec<PathBuf> = rd
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "crt"))
        .collect();
    v.sort();
    v
}

/// Parse a `hosts.toml` (`file` is only used in errors and to resolve relative `ca` paths).
pub fn parse_hosts_toml(
    text: &str,
    file: &Path,
    registry: &str,
    insecure: &[String],
) -> Result<Vec<RegistryHost>, ImageError> {
    let bad = |message: String| ImageError::HostsConfig {
        path: file.to_path_buf(),
        message,
    };
    let table: toml::Table = text
        .parse()
        .map_err(|e: toml::de::Error| bad(e.to_string()))?;
    let base = file.parent().unwrap_or(Path::new("/"));
    let mut hosts = vec![];
    if let Some(h) = table.get("host") {
        let h = h
            .as_table()
            .ok_or_else(|| bad("`host` must be a table of host URLs".into()))?;
        for (url, cfg) in h {
            let cfg = cfg
                .as_table()
                .ok_or_else(|| bad(format!("host {url:?} must be a table")))?;
            let mut host = host_from_url(url).map_err(|m| bad(format!("host {url:?}: {m}")))?;
            host.pull = false;
            host.resolve = false;
            apply_host_options(&mut host, cfg, base)
                .map_err(|m| bad(format!("host {url:?}: {m}")))?;
            hosts.push(host);
        }
    }
    let mut server = match table.get("server") {
        Some(s) => {
            let s = s
                .as_str()
                .ok_or_else(|| bad("`server` must be a string".into()))?;
            host_from_url(s).map_err(|m| bad(format!("server {s:?}: {m}")))?
        }
        None => RegistryHost::default_for(registry, insecure),
    };
    apply_host_options(&mut server, &table, base).map_err(|m| bad(format!("server: {m}")))?;
    server.pull = true;
    server.resolve = true;
    hosts.push(server);
    Ok(hosts)
}

fn host_from_url(url: &str) -> Result<RegistryHost, String> {
    let (scheme, rest) = match url.split_once("://") {
        Some((s @ ("http" | "https"), rest)) => (s, rest),
        Some((s, _)) => return Err(format!("unsupported scheme {s:?}")),
        None => ("https", url),
    };
    let (host, path) = match rest.split_once('/') {
        Some((h, p)) => (h, format!("/{p}")),
        None => (rest, String::new()),
    };
    if host.is_empty() {
        return Err("no host".into());
    }
    let path = path.trim_end_matches('/');
    if !(path.is_empty() || path == "/v2") {
        return Err(format!("path prefix {path:?} is not supported (only /v2)"));
    }
    Ok(RegistryHost {
        scheme: scheme.into(),
        host: host.into(),
        pull: true,
        resolve: true,
        skip_verify: false,
        ca: vec![],
    })
}

fn apply_host_options(
    host: &mut RegistryHost,
    cfg: &toml::Table,
    base: &Path,
) -> Result<(), String> {
    if let Some(caps) = cfg.get("capabilities") {
        let caps = caps
            .as_array()
            .ok_or("`capabilities` must be an array of strings")?;
        host.pull = false;
        host.resolve = false;
        for c in caps {
            match c.as_str() {
                Some("pull") => host.pull = true,
                Some("resolve") => host.resolve = true,
                Some("push") => {}
                other => return Err(format!("unknown capability {other:?}")),
            }
        }
    } else {
        host.pull = true;
        host.resolve = true;
    }
    if let Some(v) = cfg.get("skip_verify") {
        host.skip_verify = v.as_bool().ok_or("`skip_verify` must be a boolean")?;
    }
    if let Some(ca) = cfg.get("ca") {
        let list: Vec<&str> = match ca {
            toml::Value::String(s) => vec![s.as_str()],
            toml::Value::Array(a) => a
                .iter()
                .map(|v| v.as_str().ok_or("`ca` entries must be strings"))
                .collect::<Result<_, _>>()?,
            _ => return Err("`ca` must be a string or an array of strings".into()),
        };
        host.ca = list.into_iter().map(|p| base.join(p)).collect();
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_mirrors_then_server() {
        let text = r#"
server = "https://registry.example.test"
[host."http://127.0.0.1:5000"]
  capabilities = ["pull", "resolve"]
[host."https://mirror.example.test"]
  capabilities = ["pull"]
  skip_verify = true
  ca = "ca.pem"
"#;
        let hosts = parse_hosts_toml(
            text,
            Path::new("/etc/certs.d/registry.example.test/hosts.toml"),
            "registry.example.test",
            &[],
        )
        .unwrap();
        assert_eq!(hosts.len(), 3);
        assert_eq!(
            (
                hosts[0].scheme.as_str(),
                hosts[0].host.as_str(),
                hosts[0].pull,
                hosts[0].resolve
            ),
            ("http", "127.0.0.1:5000", true, true)
        );
        assert_eq!(
            (
                hosts[1].host.as_str(),
                hosts[1].pull,
                hosts[1].resolve,
                hosts[1].skip_verify
            ),
            ("mirror.example.test", true, false, true)
        );
        assert_eq!(
            hosts[1].ca,
            vec![PathBuf::from("/etc/certs.d/registry.example.test/ca.pem")]
        );
        assert_eq!(
            (hosts[2].scheme.as_str(), hosts[2].host.as_str()),
            ("https", "registry.example.test")
        );
    }

    #[test]
    fn defaults_follow_containerd() {
        assert_eq!(
            registry_hosts(None, "docker.io", &[]).unwrap()[0].host,
            "registry-1.docker.io"
        );
        assert_eq!(
            registry_hosts(None, "127.0.0.1:5000", &[]).unwrap()[0].scheme,
            "http"
        );
        assert_eq!(
            registry_hosts(None, "quay.io", &[]).unwrap()[0].scheme,
            "https"
        );
        assert_eq!(
            registry_hosts(None, "reg.lan:5000", &["reg.lan:5000".into()]).unwrap()[0].scheme,
            "http"
        );
    }

    #[test]
    fn bad_files_name_the_problem() {
        let e = parse_hosts_toml("server = 3", Path::new("/x/hosts.toml"), "r", &[]).unwrap_err();
        assert!(
            e.to_string().contains("/x/hosts.toml") && e.to_string().contains("server"),
            "{e}"
        );
        let e = parse_hosts_toml("[host.\"ftp://x\"]", Path::new("/x/hosts.toml"), "r", &[])
            .unwrap_err();
        assert!(e.to_string().contains("ftp"), "{e}");
    }
}
