//! The pod sources against real peers: a watched directory (inotify) and an HTTP server on
//! 127.0.0.1. No root needed.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use futures::StreamExt;
use node_core::{PodEvent, PodSource, SourceError};
use node_kubelet::{FileSource, FileSourceConfig, HttpSource, HttpSourceConfig};

fn pod_yaml(name: &str, image: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Pod\nmetadata: {{name: {name}}}\nspec:\n  containers: [{{name: c, image: {image}}}]\n"
    )
}

async fn next(stream: &mut node_core::PodStream) -> Result<PodEvent, SourceError> {
    tokio::time::timeout(Duration::from_secs(10), stream.next())
        .await
        .expect("an event within 10 s")
        .expect("stream open")
}

fn name(e: &Result<PodEvent, SourceError>) -> String {
    match e {
        Ok(PodEvent::Apply(p)) => format!("apply {}", p.metadata.name.as_deref().unwrap()),
        Ok(PodEvent::Delete(p)) => format!("delete {}", p.metadata.name.as_deref().unwrap()),
        Ok(other) => format!("{other:?}"),
        Err(e) => format!("error {e}"),
    }
}

#[tokio::test]
async fn file_source_follows_edits_through_inotify() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("a.yaml"), pod_yaml("a", "img:1")).unwrap();
    // a rescan period far beyond the test: only inotify can deliver the changes
    let config = FileSourceConfig {
        rescan_period: Duration::from_secs(3600),
        ..Default::default()
    };
    let source = FileSource::with_config(dir.path(), config);
    let mut w = source.watch();
    assert_eq!(next(&mut w).await.unwrap(), PodEvent::Init);
    assert!(matches!(
        next(&mut w).await.unwrap(),
        PodEvent::InitApply(_)
    ));
    assert_eq!(next(&mut w).await.unwrap(), PodEvent::InitDone);

    std::fs::write(dir.path().join("b.json"), r#"{"apiVersion":"v1","kind":"Pod","metadata":{"name":"b"},"spec":{"containers":[{"name":"c","image":"i"}]}}"#).unwrap();
    assert_eq!(name(&next(&mut w).await), "apply b");

    std::fs::write(
        dir.path().join("a.yaml"),
        "kind: Pod\napiVersion: v1\nmetadata: {name: a}\nspec: {containers: [{name: c}]}\n",
    )
    .unwrap();
    let e = name(&next(&mut w).await);
    assert!(
        e.contains("a.yaml#0: spec.containers[0].image: required"),
        "{e}"
    );
    assert_eq!(source.diagnostics().errors.len(), 1);

    std::fs::remove_file(dir.path().join("b.json")).unwrap();
    assert_eq!(name(&next(&mut w).await), "delete b");
}

#[tokio::test]
async fn file_source_on_a_missing_directory_reports_and_recovers() {
    let dir = tempfile::tempdir().unwrap();
    let sub = dir.path().join("later");
    let config = FileSourceConfig {
        rescan_period: Duration::from_millis(100),
        ..Default::default()
    };
    let mut w = FileSource::with_config(&sub, config).watch();
    assert!(name(&next(&mut w).await).starts_with("error "));
    assert_eq!(next(&mut w).await.unwrap(), PodEvent::Init);
    assert_eq!(next(&mut w).await.unwrap(), PodEvent::InitDone);
    std::fs::create_dir(&sub).unwrap();
    std::fs::write(sub.join("a.yaml"), pod_yaml("a", "img:1")).unwrap();
    loop {
        let e = name(&next(&mut w).await);
        if e.starts_with("error") {
            continue;
        }
        assert_eq!(e, "apply a");
        break;
    }
}

#[tokio::test]
async fn http_source_polls_with_etag() {
    let hits = Arc::new(AtomicUsize::new(0));
    let not_modified = Arc::new(AtomicUsize::new(0));
    let body = Arc::new(std::sync::Mutex::new((
        String::from("\"v1\""),
        pod_yaml("a", "img:1"),
    )));
    let (h, nm, b) = (hits.clone(), not_modified.clone(), body.clone());
    let app = axum::Router::new().route(
        "/pods",
        axum::routing::get(move |headers: http::HeaderMap| {
            let (h, nm, b) = (h.clone(), nm.clone(), b.clone());
            async move {
                h.fetch_add(1, Ordering::SeqCst);
                let (etag, text) = b.lock().unwrap().clone();
                if headers.get("if-none-match").and_then(|v| v.to_str().ok()) == Some(etag.as_str())
                {
                    nm.fetch_add(1, Ordering::SeqCst);
                    return (
                        http::StatusCode::NOT_MODIFIED,
                        [(http::header::ETAG, etag)],
                        String::new(),
                    );
                }
                (http::StatusCode::OK, [(http::header::ETAG, etag)], text)
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });

    let config = HttpSourceConfig {
        period: Duration::from_millis(50),
        ..Default::default()
    };
    let mut w = HttpSource::with_config(format!("http://{addr}/pods"), config).watch();
    assert_eq!(next(&mut w).await.unwrap(), PodEvent::Init);
    assert!(matches!(
        next(&mut w).await.unwrap(),
        PodEvent::InitApply(_)
    ));
    assert_eq!(next(&mut w).await.unwrap(), PodEvent::InitDone);
    // unchanged: the server answers 304
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while not_modified.load(Ordering::SeqCst) < 2 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "no conditional request seen"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    *body.lock().unwrap() = (
        "\"v2\"".into(),
        format!("{}---\n{}", pod_yaml("a", "img:1"), pod_yaml("b", "img:1")),
    );
    assert_eq!(next(&mut w).await.unwrap(), PodEvent::Init);
    let mut names = vec![];
    loop {
        match next(&mut w).await.unwrap() {
            PodEvent::InitApply(p) => names.push(p.metadata.name.unwrap()),
            PodEvent::InitDone => break,
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(names, ["a", "b"]);
    // a broken answer is reported and changes nothing
    *body.lock().unwrap() = (
        "\"v3\"".into(),
        "kind: Pod\napiVersion: v1\nmetadata: {}\n".into(),
    );
    let e = name(&next(&mut w).await);
    assert!(e.contains("/pods#0: metadata.name: required"), "{e}");
    assert!(hits.load(Ordering::SeqCst) >= 4);
}

#[tokio::test]
async fn http_source_reports_an_unreachable_server() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    drop(listener);
    let mut w =
        HttpSource::with_config(format!("http://{addr}/pods"), HttpSourceConfig::default()).watch();
    let e = name(&next(&mut w).await);
    assert!(e.starts_with(&format!("error http://{addr}/pods: ")), "{e}");
}

#[tokio::test]
async fn api_server_source_lists_and_watches_the_pods_of_its_node() {
    use node_kubelet::ApiServerSource;
    let queries = Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let q = queries.clone();
    let pod = |name: &str| {
        serde_json::json!({"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "namespace": "default", "uid": format!("uid-{name}"), "resourceVersion": "2"},
            "spec": {"nodeName": "node-1", "containers": [{"name": "c", "image": "i"}]}})
    };
    let (a, b) = (pod("a"), pod("b"));
    // a minimal API server: the list answers pod a, the watch adds pod b then stays open
    let app = axum::Router::new().route(
        "/api/v1/pods",
        axum::routing::get(move |uri: http::Uri| {
            let (q, a, b) = (q.clone(), a.clone(), b.clone());
            async move {
                let query = uri.query().unwrap_or("").to_string();
                q.lock().unwrap().push(query.clone());
                if query.contains("watch=true") {
                    let first = format!("{}\n", serde_json::json!({"type": "ADDED", "object": b}));
                    let stream =
                        futures::stream::once(async move { Ok::<_, std::io::Error>(first) })
                            .chain(futures::stream::pending());
                    axum::response::Response::new(axum::body::Body::from_stream(stream))
                } else {
                    let list = serde_json::json!({"apiVersion": "v1", "kind": "PodList",
                        "metadata": {"resourceVersion": "5"}, "items": [a]});
                    axum::response::Response::new(axum::body::Body::from(list.to_string()))
                }
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });

    let config = kube::Config::new(format!("http://{addr}").parse().unwrap());
    let client = kube::Client::try_from(config).unwrap();
    let source = ApiServerSource::new(client, "node-1");
    assert_eq!(source.field_selector(), "spec.nodeName=node-1");
    let mut w = source.watch();
    assert_eq!(next(&mut w).await.unwrap(), PodEvent::Init);
    match next(&mut w).await.unwrap() {
        PodEvent::InitApply(p) => assert_eq!(p.metadata.name.as_deref(), Some("a")),
        other => panic!("{other:?}"),
    }
    assert_eq!(next(&mut w).await.unwrap(), PodEvent::InitDone);
    assert_eq!(name(&next(&mut w).await), "apply b");
    let queries = queries.lock().unwrap().clone();
    assert!(
        queries
            .iter()
            .all(|q| q.contains("fieldSelector=spec.nodeName%3Dnode-1")),
        "{queries:?}"
    );
    assert!(
        queries.iter().any(|q| q.contains("watch=true")),
        "{queries:?}"
    );
}
