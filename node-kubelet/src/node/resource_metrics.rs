//! `/metrics/resource`: kubelet's resource metrics collector, the Prometheus text that
//! metrics-server scrapes (and so `kubectl top` and the HorizontalPodAutoscaler read).
//!
//! From the [`Summary`] of [`super::stats`], with kubelet's names, `[STABLE]` help texts and
//! label sets: `node_cpu_usage_seconds_total`, `node_memory_working_set_bytes`,
//! `node_swap_usage_bytes` (with swap), `container_cpu_usage_seconds_total`,
//! `container_memory_working_set_bytes`, `container_start_time_seconds`
//! (`{container,namespace,pod}`), `pod_cpu_usage_seconds_total`, `pod_memory_working_set_bytes`
//! (`{namespace,pod}`) and `resource_scrape_error`. The usage samples carry the time they were
//! measured (milliseconds since the epoch), the start time none. When the stats cannot be
//! gathered the scrape is `resource_scrape_error 1` alone, as kubelet answers. Families are
//! sorted by name and samples by labels, values formatted as Go's Prometheus client does
//! (`4.194304e+08`).

use std::fmt::Write;

use k8s_openapi::jiff::Timestamp;

use super::stats::{StatsProvider, Summary};

/// The content type of the text format kubelet serves.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// A float as Go's `strconv.FormatFloat(v, 'g', -1, 64)`: the shortest digits that round-trip,
/// in exponent form when the exponent is below -4 or at least 6 (`1e+06`, `1.5e-05`).
pub fn go_float(v: f64) -> String {
    if v.is_nan() {
        return "NaN".into();
    }
    if v.is_infinite() {
        return if v > 0.0 { "+Inf" } else { "-Inf" }.into();
    }
    if v == 0.0 {
        return "0".into();
    }
    let sci = format!("{v:e}");
    let (mantissa, exp) = sci.split_once('e').unwrap_or((&sci, "0"));
    let exp: i32 = exp.parse().unwrap_or(0);
    if !(-4..6).contains(&exp) {
        let sign = if exp < 0 { '-' } else { '+' };
        format!("{mantissa}e{sign}{:02}", exp.abs())
    } else {
        format!("{v}")
    }
}

fn ms(t: &Timestamp) -> i64 {
    t.as_millisecond()
}

fn escape(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

struct Family {
    name: &'static str,
    help: &'static str,
    kind: &'static str,
    samples: Vec<(String, String)>,
}

impl Family {
    fn new(name: &'static str, kind: &'static str, help: &'static str) -> Self {
        Self {
            name,
            help,
            kind,
            samples: vec![],
        }
    }

    fn push(&mut self, labels: &[(&str, &str)], value: f64, at: Option<&Timestamp>) {
        let mut l = String::new();
        if !labels.is_empty() {
            let mut sorted = labels.to_vec();
            sorted.sort_by_key(|(k, _)| *k);
            let pairs: Vec<String> = sorted
                .iter()
                .map(|(k, v)| format!("{k}=\"{}\"", escape(v)))
                .collect();
            l = format!("{{{}}}", pairs.join(","));
        }
        let mut line = format!("{}{l} {}", self.name, go_float(value));
        if let Some(t) = at {
            let _ = write!(line, " {}", ms(t));
        }
        self.samples.push((l, line));
    }

    fn write(mut self, out: &mut String) {
        if self.samples.is_empty() {
            return;
        }
        self.samples.sort();
        let _ = writeln!(out, "# HELP {} {}", self.name, self.help);
        let _ = writeln!(out, "# TYPE {} {}", self.name, self.kind);
        for (_, line) in self.samples {
            out.push_str(&line);
            out.push('\n');
        }
    }
}

/// The resource metrics of `summary`; `None` (the stats could not be gathered) gives
/// `resource_scrape_error 1` and nothing else.
pub fn render(summary: Option<&Summary>) -> String {
    let mut node_cpu = Family::new(
        "node_cpu_usage_seconds_total",
        "counter",
        "[STABLE] Cumulative cpu time consumed by the node in core-seconds",
    );
    let mut node_mem = Family::new(
        "node_memory_working_set_bytes",
        "gauge",
        "[STABLE] Current working set of the node in bytes",
    );
    let mut node_swap = Family::new(
        "node_swap_usage_bytes",
        "gauge",
        "[ALPHA] Current swap usage of the node in bytes. Reported only on non-windows systems",
    );
    let mut c_cpu = Family::new(
        "container_cpu_usage_seconds_total",
        "counter",
        "[STABLE] Cumulative cpu time consumed by the container in core-seconds",
    );
    let mut c_mem = Family::new(
        "container_memory_working_set_bytes",
        "gauge",
        "[STABLE] Current working set of the container in bytes",
    );
    let mut c_start = Family::new(
        "container_start_time_seconds",
        "gauge",
        "[STABLE] Start time of the container since unix epoch in seconds",
    );
    let mut p_cpu = Family::new(
        "pod_cpu_usage_seconds_total",
        "counter",
        "[STABLE] Cumulative cpu time consumed by the pod in core-seconds",
    );
    let mut p_mem = Family::new(
        "pod_memory_working_set_bytes",
        "gauge",
        "[STABLE] Current working set of the pod in bytes",
    );
    let mut scrape = Family::new(
        "resource_scrape_error",
        "gauge",
        "[STABLE] 1 if there was an error while getting container metrics, 0 otherwise",
    );
    scrape.push(&[], if summary.is_some() { 0.0 } else { 1.0 }, None);
    if let Some(s) = summary {
        let n = &s.node;
        if let Some((c, v)) = n
            .cpu
            .as_ref()
            .and_then(|c| Some((c, c.usage_core_nano_seconds?)))
        {
            node_cpu.push(&[], v as f64 / 1e9, Some(&c.time));
        }
        if let Some((m, v)) = n
            .memory
            .as_ref()
            .and_then(|m| Some((m, m.working_set_bytes?)))
        {
            node_mem.push(&[], v as f64, Some(&m.time));
            // kubelet stamps the node's swap with the memory sample's time
            if let Some(used) = n.swap.as_ref().and_then(|w| w.swap_usage_bytes) {
                node_swap.push(&[], used as f64, Some(&m.time));
            }
        }
        for pod in &s.pods {
            let (name, ns) = (pod.pod_ref.name.as_str(), pod.pod_ref.namespace.as_str());
            for c in &pod.containers {
                let labels = [
                    ("container", c.name.as_str()),
                    ("pod", name),
                    ("namespace", ns),
                ];
                if c.start_time.as_second() > 0 {
                    c_start.push(&labels, c.start_time.as_nanosecond() as f64 / 1e9, None);
                }
                if let Some((u, v)) = c
                    .cpu
                    .as_ref()
                    .and_then(|u| Some((u, u.usage_core_nano_seconds?)))
                {
                    c_cpu.push(&labels, v as f64 / 1e9, Some(&u.time));
                }
                if let Some((m, v)) = c
                    .memory
                    .as_ref()
                    .and_then(|m| Some((m, m.working_set_bytes?)))
                {
                    c_mem.push(&labels, v as f64, Some(&m.time));
                }
            }
            let labels = [("pod", name), ("namespace", ns)];
            if let Some((u, v)) = pod
                .cpu
                .as_ref()
                .and_then(|u| Some((u, u.usage_core_nano_seconds?)))
            {
                p_cpu.push(&labels, v as f64 / 1e9, Some(&u.time));
            }
            if let Some((m, v)) = pod
                .memory
                .as_ref()
                .and_then(|m| Some((m, m.working_set_bytes?)))
            {
                p_mem.push(&labels, v as f64, Some(&m.time));
            }
        }
    }
    let mut out = String::new();
    // sorted by name, as the Prometheus registry gathers them
    for f in [
        c_cpu, c_mem, c_start, node_cpu, node_mem, node_swap, p_cpu, p_mem, scrape,
    ] {
        f.write(&mut out);
    }
    out
}

/// Gathers the stats and renders them ([`render`]); a failure is logged and scraped as
/// `resource_scrape_error 1`.
pub async fn scrape(provider: &StatsProvider) -> String {
    match provider.cpu_and_memory().await {
        Ok(s) => render(Some(&s)),
        Err(e) => {
            tracing::error!(error = %e, "error getting summary for the resource metrics endpoint");
            render(None)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn floats_as_go_formats_them() {
        assert_eq!(go_float(0.0), "0");
        assert_eq!(go_float(2.0), "2");
        assert_eq!(go_float(1.5), "1.5");
        assert_eq!(go_float(123456.0), "123456");
        assert_eq!(go_float(1_000_000.0), "1e+06");
        assert_eq!(go_float(419_430_400.0), "4.194304e+08");
        assert_eq!(go_float(1_767_225_601.0), "1.767225601e+09");
        assert_eq!(go_float(0.0001), "0.0001");
        assert_eq!(go_float(0.000015), "1.5e-05");
    }
}
