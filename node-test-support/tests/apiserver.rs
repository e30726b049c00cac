//! The fake API server's semantics, through kube's own client: create/replace/delete answers,
//! optimistic concurrency, status subresource patches, selectors, watches from a
//! resourceVersion, the outage switch, and the same store over TCP.

use std::time::Duration;

use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{
    Api, DeleteParams, ListParams, Patch, PatchParams, PostParams, WatchEvent, WatchParams,
};
use node_test_support::FakeApiServer;
use serde_json::json;

fn pod(name: &str, node: &str, app: &str) -> Pod {
    serde_json::from_value(json!({
        "metadata": {"name": name, "namespace": "default", "labels": {"app": app}},
        "spec": {"nodeName": node, "containers": [{"name": "c", "image": "img"}]},
    }))
    .unwrap()
}

fn code(e: kube::Error) -> u16 {
    match e {
        kube::Error::Api(s) => s.code,
        other => panic!("not an API error: {other}"),
    }
}

#[tokio::test]
async fn objects_conflicts_and_status_patches() {
    let api = FakeApiServer::new();
    let pods: Api<Pod> = Api::default_namespaced(api.client());
    let created = pods
        .create(&PostParams::default(), &pod("a", "n1", "web"))
        .await
        .unwrap();
    let uid = created.metadata.uid.clone().unwrap();
    assert_eq!(
        code(
            pods.create(&PostParams::default(), &pod("a", "n1", "web"))
                .await
                .unwrap_err()
        ),
        409
    );
    assert_eq!(code(pods.get("missing").await.unwrap_err()), 404);
    // a status patch changes only the status
    let patch = json!({"status": {"phase": "Running"}, "spec": {"nodeName": "elsewhere"}});
    let p = pods
        .patch_status("a", &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .unwrap();
    assert_eq!(p.status.unwrap().phase.as_deref(), Some("Running"));
    assert_eq!(p.spec.unwrap().node_name.as_deref(), Some("n1"));
    // a replace with a stale resourceVersion is refused; the uid stays
    let leases: Api<Lease> = Api::namespaced(api.client(), "kube-node-lease");
    let mut l: Lease = serde_json::from_value(json!({"metadata": {"name": "n1"}})).unwrap();
    let first = leases.create(&PostParams::default(), &l).await.unwrap();
    l.metadata.resource_version = first.metadata.resource_version.clone();
    let second = leases
        .replace("n1", &PostParams::default(), &l)
        .await
        .unwrap();
    assert_eq!(second.metadata.uid, first.metadata.uid);
    assert_eq!(
        code(
            leases
                .replace("n1", &PostParams::default(), &l)
                .await
                .unwrap_err()
        ),
        409
    );
    // delete: a uid precondition must match
    let dp = DeleteParams {
        preconditions: Some(kube::api::Preconditions {
            uid: Some("other".into()),
            resource_version: None,
        }),
        ..Default::default()
    };
    assert_eq!(code(pods.delete("a", &dp).await.unwrap_err()), 409);
    let dp = DeleteParams {
        preconditions: Some(kube::api::Preconditions {
            uid: Some(uid),
            resource_version: None,
        }),
        ..Default::default()
    };
    pods.delete("a", &dp).await.unwrap();
    assert_eq!(
        code(
            pods.delete("a", &DeleteParams::default())
                .await
                .unwrap_err()
        ),
        404
    );
    // a recreated object gets a new uid
    let again = pods
        .create(&PostParams::default(), &pod("a", "n1", "web"))
        .await
        .unwrap();
    assert_ne!(again.metadata.uid, created.metadata.uid);
    assert_eq!(api.count("DELETE", "/api/v1/namespaces/default/pods/a"), 3);
}

#[tokio::test]
async fn selectors_and_watches_from_a_resource_version() {
    let api = FakeApiServer::new();
    api.apply("pods", serde_json::to_value(pod("a", "n1", "web")).unwrap());
    api.apply("pods", serde_json::to_value(pod("b", "n2", "web")).unwrap());
    api.apply("pods", serde_json::to_value(pod("c", "n1", "db")).unwrap());
    let pods: Api<Pod> = Api::all(api.client());
    let names = |l: kube::core::ObjectList<Pod>| -> Vec<String> {
        l.items
            .into_iter()
            .map(|p| p.metadata.name.unwrap())
            .collect()
    };
    let on_n1 = pods
        .list(&ListParams::default().fields("spec.nodeName=n1"))
        .await
        .unwrap();
    let rv = on_n1.metadata.resource_version.clone().unwrap();
    assert_eq!(names(on_n1), ["a", "c"]);
    let web = pods
        .list(&ListParams::default().labels("app=web,app!=db"))
        .await
        .unwrap();
    assert_eq!(names(web), ["a", "b"]);
    let bad = pods
        .list(&ListParams::default().labels("app in (web)"))
        .await
        .unwrap_err();
    assert_eq!(code(bad), 400);

    // from the list's version: only what came after, filtered, live
    let mut events = pods
        .watch(&WatchParams::default().fields("spec.nodeName=n1"), &rv)
        .await
        .unwrap()
        .boxed();
    api.apply("pods", serde_json::to_value(pod("d", "n2", "web")).unwrap());
    api.apply("pods", serde_json::to_value(pod("e", "n1", "web")).unwrap());
    assert!(api.delete("pods", "default", "a"));
    let mut seen = Vec::new();
    while seen.len() < 2 {
        let e = tokio::time::timeout(Duration::from_secs(10), events.try_next())
            .await
            .expect("a watch event")
            .unwrap()
            .unwrap();
        seen.push(match e {
            WatchEvent::Added(p) => format!("added {}", p.metadata.name.unwrap()),
            WatchEvent::Deleted(p) => format!("deleted {}", p.metadata.name.unwrap()),
            other => format!("{other:?}"),
        });
    }
    assert_eq!(seen, ["added e", "deleted a"]);

    // an outage ends the watch with an error and refuses requests until it is over
    api.set_down(true);
    let end = tokio::time::timeout(Duration::from_secs(10), events.next())
        .await
        .unwrap();
    assert!(matches!(end, Some(Err(_)) | None), "{end:?}");
    assert!(pods.list(&ListParams::default()).await.is_err());
    api.set_down(false);
    assert_eq!(
        pods.list(&ListParams::default()).await.unwrap().items.len(),
        4
    );
    let refused = api.requests().iter().filter(|r| !r.answered).count();
    assert_eq!(refused, 1);
}

#[tokio::test]
async fn the_same_store_over_tcp() {
    let api = FakeApiServer::start().await;
    let pods: Api<Pod> = Api::default_namespaced(api.http_client());
    pods.create(&PostParams::default(), &pod("a", "n1", "web"))
        .await
        .unwrap();
    assert!(api.get("pods", "default", "a").is_some());
    assert!(api.kubeconfig().contains(&api.url()));
    api.set_down(true);
    assert!(pods.get("a").await.is_err());
    api.set_down(false);
    assert_eq!(
        pods.get("a").await.unwrap().metadata.name.as_deref(),
        Some("a")
    );
}
