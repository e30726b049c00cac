//! The CRI `List*` filters, applied by the server to whatever the backend answered, so that a
//! backend that ignores a filter (or applies part of it) still gives CRI clients what they asked.
//!
//! Ids match exactly or, as containerd's truncated-id index does, by a prefix that names exactly
//! one object; label selectors need every key with an equal value; states compare as numbers.

use std::collections::{HashMap, HashSet};

use node_core::cri;

/// Whether `have` holds every `key=value` of `want`.
pub fn labels_match(have: &HashMap<String, String>, want: &HashMap<String, String>) -> bool {
    want.iter().all(|(k, v)| have.get(k) == Some(v))
}

/// Keep the items whose id is `want` or, when none is, the one item whose id starts with `want`
/// (an ambiguous prefix matches nothing). An empty `want` keeps everything.
fn by_id<T>(items: Vec<T>, want: &str, id: impl Fn(&T) -> &str) -> Vec<T> {
    if want.is_empty() {
        return items;
    }
    if items.iter().any(|i| id(i) == want) {
        return items.into_iter().filter(|i| id(i) == want).collect();
    }
    let prefixed: Vec<T> = items
        .into_iter()
        .filter(|i| id(i).starts_with(want))
        .collect();
    if prefixed.len() == 1 {
        prefixed
    } else {
        Vec::new()
    }
}

/// `ListPodSandbox`'s filter: id, state, labels.
pub fn pod_sandboxes(
    items: Vec<cri::PodSandbox>,
    filter: Option<&cri::PodSandboxFilter>,
) -> Vec<cri::PodSandbox> {
    let Some(f) = filter else { return items };
    let items = by_id(items, &f.id, |s| &s.id);
    items
        .into_iter()
        .filter(|s| f.state.as_ref().is_none_or(|st| st.state == s.state))
        .filter(|s| labels_match(&s.labels, &f.label_selector))
        .collect()
}

/// `ListContainers`' filter: id, pod sandbox id, state, labels.
pub fn containers(
    items: Vec<cri::Container>,
    filter: Option<&cri::ContainerFilter>,
) -> Vec<cri::Container> {
    let Some(f) = filter else { return items };
    let items = by_id(items, &f.id, |c| &c.id);
    items
        .into_iter()
        .filter(|c| {
            f.pod_sandbox_id.is_empty() || sandbox_matches(&c.pod_sandbox_id, &f.pod_sandbox_id)
        })
        .filter(|c| f.state.as_ref().is_none_or(|st| st.state == c.state))
        .filter(|c| labels_match(&c.labels, &f.label_selector))
        .collect()
}

/// A sandbox id matches a filter's exactly or by prefix (the filter may be truncated).
fn sandbox_matches(id: &str, want: &str) -> bool {
    id == want || id.starts_with(want)
}

/// The id and labels of a stats item, from its attributes.
fn attributes_of<'a>(
    attrs: Option<(&'a str, &'a HashMap<String, String>)>,
) -> (&'a str, Option<&'a HashMap<String, String>>) {
    match attrs {
        Some((id, labels)) => (id, Some(labels)),
        None => ("", None),
    }
}

/// Keep the stats items matching an id (exact or unique prefix) and a label selector.
fn stats_by_id_and_labels<T>(
    items: Vec<T>,
    id: &str,
    want: &HashMap<String, String>,
    attrs: impl Fn(&T) -> Option<(&str, &HashMap<String, String>)>,
) -> Vec<T> {
    let empty = HashMap::new();
    by_id(items, id, |s| attributes_of(attrs(s)).0)
        .into_iter()
        .filter(|s| labels_match(attributes_of(attrs(s)).1.unwrap_or(&empty), want))
        .collect()
}

fn container_attrs(s: &cri::ContainerStats) -> Option<(&str, &HashMap<String, String>)> {
    s.attributes.as_ref().map(|a| (a.id.as_str(), &a.labels))
}

fn sandbox_attrs(s: &cri::PodSandboxStats) -> Option<(&str, &HashMap<String, String>)> {
    s.attributes.as_ref().map(|a| (a.id.as_str(), &a.labels))
}

/// `ListContainerStats`' filter: id, labels, and the pod sandbox through `in_sandbox`, the ids of
/// the containers of the filter's sandbox (`None`: no sandbox in the filter).
pub fn container_stats(
    items: Vec<cri::ContainerStats>,
    filter: Option<&cri::ContainerStatsFilter>,
    in_sandbox: Option<&HashSet<String>>,
) -> Vec<cri::ContainerStats> {
    let Some(f) = filter else { return items };
    stats_by_id_and_labels(items, &f.id, &f.label_selector, container_attrs)
        .into_iter()
        .filter(|s| in_sandbox.is_none_or(|set| set.contains(attributes_of(container_attrs(s)).0)))
        .collect()
}

/// `ListPodSandboxStats`' filter: id, labels.
pub fn pod_sandbox_stats(
    items: Vec<cri::PodSandboxStats>,
    filter: Option<&cri::PodSandboxStatsFilter>,
) -> Vec<cri::PodSandboxStats> {
    let Some(f) = filter else { return items };
    stats_by_id_and_labels(items, &f.id, &f.label_selector, sandbox_attrs)
}

/// A reference in its fully qualified form: `busybox` is `docker.io/library/busybox:latest`.
pub fn normalize_reference(r: &str) -> String {
    let (name, digest) = match r.split_once('@') {
        Some((n, d)) => (n, Some(d)),
        None => (r, None),
    };
    let first = name.split('/').next().unwrap_or("");
    let has_domain =
        name.contains('/') && (first.contains('.') || first.contains(':') || first == "localhost");
    let mut full = if has_domain {
        name.to_string()
    } else if name.contains('/') {
        format!("docker.io/{name}")
    } else {
        format!("docker.io/library/{name}")
    };
    let last = full.rsplit('/').next().unwrap_or("");
    if digest.is_none() && !last.contains(':') {
        full.push_str(":latest");
    }
    if let Some(d) = digest {
        full.push('@');
        full.push_str(d);
    }
    full
}

/// Whether an image is the one a reference or id names: its id, one of its tags or digests, or
/// the same after normalising (`busybox` names `docker.io/library/busybox:latest`).
pub fn image_matches(image: &cri::Image, want: &str) -> bool {
    if want.is_empty() {
        return true;
    }
    let names = || image.repo_tags.iter().chain(image.repo_digests.iter());
    if image.id == want
        || image.id.strip_prefix("sha256:") == Some(want)
        || names().any(|n| n == want)
    {
        return true;
    }
    let norm = normalize_reference(want);
    names().any(|n| normalize_reference(n) == norm)
}

/// `ListImages`' filter: the image spec's reference or id.
pub fn images(items: Vec<cri::Image>, filter: Option<&cri::ImageFilter>) -> Vec<cri::Image> {
    let want = filter
        .and_then(|f| f.image.as_ref())
        .map(|i| i.image.as_str())
        .unwrap_or("");
    items
        .into_iter()
        .filter(|i| image_matches(i, want))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sandbox(id: &str, state: cri::PodSandboxState, app: &str) -> cri::PodSandbox {
        cri::PodSandbox {
            id: id.into(),
            state: state as i32,
            labels: HashMap::from([("app".into(), app.into())]),
            ..Default::default()
        }
    }

    fn ids<T>(v: &[T], id: impl Fn(&T) -> &str) -> Vec<String> {
        v.iter().map(|x| id(x).to_string()).collect()
    }

    #[test]
    fn sandbox_filters_by_id_prefix_state_and_labels() {
        use cri::PodSandboxState::{SandboxNotready as NotReady, SandboxReady as Ready};
        let all = vec![
            sandbox("aaa111", Ready, "web"),
            sandbox("aab222", NotReady, "web"),
            sandbox("bbb333", Ready, "db"),
        ];
        let f = |id: &str, state: Option<cri::PodSandboxState>, app: Option<&str>| {
            cri::PodSandboxFilter {
                id: id.into(),
                state: state.map(|s| cri::PodSandboxStateValue { state: s as i32 }),
                label_selector: app
                    .map(|a| HashMap::from([("app".to_string(), a.to_string())]))
                    .unwrap_or_default(),
            }
        };
        let run = |filter: cri::PodSandboxFilter| {
            ids(&pod_sandboxes(all.clone(), Some(&filter)), |s| &s.id)
        };
        assert_eq!(pod_sandboxes(all.clone(), None).len(), 3);
        assert_eq!(run(f("aaa111", None, None)), ["aaa111"]);
        assert_eq!(run(f("bbb", None, None)), ["bbb333"], "unique prefix");
        assert!(run(f("aa", None, None)).is_empty(), "ambiguous prefix");
        assert!(run(f("zzz", None, None)).is_empty());
        assert_eq!(run(f("", Some(Ready), None)), ["aaa111", "bbb333"]);
        assert_eq!(run(f("", Some(NotReady), Some("web"))), ["aab222"]);
        assert_eq!(run(f("", None, Some("web"))), ["aaa111", "aab222"]);
        assert!(run(f("", None, Some("cache"))).is_empty());
        assert!(run(f("bbb", None, Some("web"))).is_empty());
    }

    #[test]
    fn container_filters_by_sandbox_state_and_labels() {
        let c = |id: &str, pod: &str, state: cri::ContainerState, tier: &str| cri::Container {
            id: id.into(),
            pod_sandbox_id: pod.into(),
            state: state as i32,
            labels: HashMap::from([("tier".into(), tier.into())]),
            ..Default::default()
        };
        use cri::ContainerState::{ContainerExited as Exited, ContainerRunning as Running};
        let all = vec![
            c("c1", "pod-a", Running, "front"),
            c("c2", "pod-a", Exited, "back"),
            c("c3", "pod-b", Running, "back"),
        ];
        let run = |f: cri::ContainerFilter| ids(&containers(all.clone(), Some(&f)), |c| &c.id);
        assert_eq!(
            run(cri::ContainerFilter {
                pod_sandbox_id: "pod-a".into(),
                ..Default::default()
            }),
            ["c1", "c2"]
        );
        assert_eq!(
            run(cri::ContainerFilter {
                state: Some(cri::ContainerStateValue {
                    state: Running as i32
                }),
                label_selector: HashMap::from([("tier".into(), "back".into())]),
                ..Default::default()
            }),
            ["c3"]
        );
        assert_eq!(
            run(cri::ContainerFilter {
                id: "c2".into(),
                pod_sandbox_id: "pod-b".into(),
                ..Default::default()
            }),
            Vec::<String>::new()
        );
    }

    #[test]
    fn stats_filters_use_attributes_and_sandbox_membership() {
        let s = |id: &str, app: &str| cri::ContainerStats {
            attributes: Some(cri::ContainerAttributes {
                id: id.into(),
                labels: HashMap::from([("app".into(), app.into())]),
                ..Default::default()
            }),
            ..Default::default()
        };
        let all = vec![s("c1", "web"), s("c2", "web"), s("c3", "db")];
        let members: HashSet<String> = ["c2".to_string(), "c3".to_string()].into();
        let f = cri::ContainerStatsFilter {
            label_selector: HashMap::from([("app".into(), "web".into())]),
            ..Default::default()
        };
        let got = container_stats(all.clone(), Some(&f), Some(&members));
        assert_eq!(ids(&got, |s| &s.attributes.as_ref().unwrap().id), ["c2"]);
        let p = |id: &str| cri::PodSandboxStats {
            attributes: Some(cri::PodSandboxAttributes {
                id: id.into(),
                ..Default::default()
            }),
            ..Default::default()
        };
        let got = pod_sandbox_stats(
            vec![p("pod-a"), p("pod-b")],
            Some(&cri::PodSandboxStatsFilter {
                id: "pod-b".into(),
                ..Default::default()
            }),
        );
        assert_eq!(got.len(), 1);
    }

    #[test]
    fn images_match_by_id_tag_digest_and_normalised_name() {
        let img = cri::Image {
            id: "sha256:abcd".into(),
            repo_tags: vec!["docker.io/library/busybox:latest".into()],
            repo_digests: vec!["docker.io/library/busybox@sha256:ffff".into()],
            ..Default::default()
        };
        for yes in [
            "sha256:abcd",
            "abcd",
            "busybox",
            "busybox:latest",
            "library/busybox",
            "docker.io/library/busybox:latest",
            "busybox@sha256:ffff",
        ] {
            assert!(image_matches(&img, yes), "{yes}");
        }
        for no in ["busybox:1.36", "nginx", "127.0.0.1:5000/busybox"] {
            assert!(!image_matches(&img, no), "{no}");
        }
        assert_eq!(
            normalize_reference("127.0.0.1:5000/app"),
            "127.0.0.1:5000/app:latest"
        );
        assert_eq!(normalize_reference("localhost/app:2"), "localhost/app:2");
    }
}
