//! Crashes and concurrency: operations resumed by a new process, or run side
//! by side, converge without duplicates.

use std::sync::Arc;
use std::time::Instant;

use byoc_provider::Provider;

use super::*;
use crate::{ResourceRecord, ResourceStatus, list_resources};

/// Polls the state directory until `pred` holds for the listed resources.
async fn until(dir: &Path, pred: impl Fn(&[ResourceRecord]) -> bool) -> Vec<ResourceRecord> {
    let started = Instant::now();
    loop {
        let records = list_resources(dir).expect("list");
        if pred(&records) {
            return records;
        }
        assert!(started.elapsed() < ms(5000), "timed out; state: {records:?}");
        tokio::time::sleep(ms(5)).await;
    }
}

#[tokio::test]
async fn an_apply_interrupted_mid_create_is_resumed_by_a_new_instance_without_a_duplicate() {
    let dir = tempfile::tempdir().expect("tempdir");
    let first = Arc::new(open(dir.path(), 1000));
    let task = tokio::spawn({
        let first = Arc::clone(&first);
        async move {
            let hooks = Hooks::default();
            first.apply(&ctx(&hooks, "op-1"), &cluster("demo")).await
        }
    });
    let records = until(dir.path(), |r| r.len() == 1).await;
    assert_eq!(records[0].status, ResourceStatus::Creating);
    // The agent dies while waiting for the cluster; a new one starts.
    task.abort();
    assert!(task.await.expect_err("aborted").is_cancelled());
    drop(first);

    let second = open(dir.path(), 1000);
    let hooks = Hooks::default();
    let out = second
        .apply(&ctx(&hooks, "op-1"), &cluster("demo"))
        .await
        .expect("resume");
    assert_eq!(out.status, "active");
    assert_eq!(
        out.resource_id, records[0].id,
        "the resumed apply returns the cluster it created"
    );
    assert!(hooks.mutating().is_empty(), "no second create: {:?}", hooks.calls());
    assert_eq!(count(dir.path(), "sim:CreateCluster"), 1);
    let after = list_resources(dir.path()).expect("list");
    assert_eq!(after.len(), 1);
    assert_eq!(after[0].status, ResourceStatus::Active);
}

#[tokio::test]
async fn a_delete_interrupted_mid_way_is_resumed_by_a_new_instance() {
    let dir = tempfile::tempdir().expect("tempdir");
    let first = Arc::new(open(dir.path(), 0));
    let hooks = Hooks::default();
    let created = first
        .apply(&ctx(&hooks, "op-1"), &cluster("demo"))
        .await
        .expect("create");
    drop(first);

    let first = Arc::new(open(dir.path(), 1000));
    let task = tokio::spawn({
        let first = Arc::clone(&first);
        async move {
            let hooks = Hooks::default();
            first.delete(&ctx(&hooks, "op-2"), &cluster("demo")).await
        }
    });
    until(dir.path(), |r| {
        r.first().is_some_and(|r| r.status == ResourceStatus::Deleting)
    })
    .await;
    task.abort();
    let _ = task.await;
    drop(first);

    let second = open(dir.path(), 1000);
    let hooks = Hooks::default();
    let out = second
        .delete(&ctx(&hooks, "op-2"), &cluster("demo"))
        .await
        .expect("resume delete");
    assert_eq!(
        (out.status.as_str(), out.resource_id.as_str()),
        ("deleted", created.resource_id.as_str())
    );
    assert!(
        hooks.mutating().is_empty(),
        "the deletion under way is waited for: {:?}",
        hooks.calls()
    );
    assert_eq!(count(dir.path(), "sim:DeleteCluster"), 1);
    assert!(list_resources(dir.path()).expect("list").is_empty());
    assert_eq!(
        std::fs::read_dir(dir.path().join("resources")).expect("dir").count(),
        0,
        "record removed"
    );
}

#[tokio::test]
async fn applying_a_resource_being_deleted_is_a_conflict() {
    let dir = tempfile::tempdir().expect("tempdir");
    let sim = Arc::new(open(dir.path(), 1000));
    let hooks = Hooks::default();
    sim.apply(&ctx(&hooks, "op-1"), &cluster("demo")).await.expect("create");
    let deleting = tokio::spawn({
        let sim = Arc::clone(&sim);
        async move { sim.delete(&ctx(&Hooks::default(), "op-2"), &cluster("demo")).await }
    });
    until(dir.path(), |r| {
        r.first().is_some_and(|r| r.status == ResourceStatus::Deleting)
    })
    .await;

    let err = sim
        .apply(&ctx(&hooks, "op-3"), &cluster("demo"))
        .await
        .expect_err("being deleted");
    assert!(matches!(&err, byoc_provider::ProviderError::Conflict { message } if message.contains("being deleted")));
    // A node pool cannot be created in a cluster being deleted either.
    let err = sim
        .apply(&ctx(&hooks, "op-4"), &pool("gpu", "demo", 1, 2))
        .await
        .expect_err("cluster deleting");
    assert!(matches!(&err, byoc_provider::ProviderError::NotFound { what } if what.contains("being deleted")));

    deleting.await.expect("join").expect("delete");
    // Once it is gone, the name can be used again, for a new resource.
    let again = sim
        .apply(&ctx(&hooks, "op-5"), &cluster("demo"))
        .await
        .expect("recreate");
    let records = list_resources(dir.path()).expect("list");
    assert_eq!(records.len(), 1);
    assert_eq!(records[0].id, again.resource_id);
}

#[tokio::test]
async fn an_apply_while_another_creates_waits_for_that_create() {
    let dir = tempfile::tempdir().expect("tempdir");
    let sim = Arc::new(open(dir.path(), 200));
    let tasks: Vec<_> = (0..4)
        .map(|i| {
            let sim = Arc::clone(&sim);
            tokio::spawn(async move {
                let hooks = Hooks::default();
                let key = format!("op-{i}");
                sim.apply(&ctx(&hooks, &key), &cluster("demo")).await
            })
        })
        .collect();
    let mut ids = Vec::new();
    for task in tasks {
        ids.push(task.await.expect("join").expect("apply").resource_id);
    }
    ids.dedup();
    assert_eq!(ids.len(), 1, "one cluster for all: {ids:?}");
    assert_eq!(count(dir.path(), "sim:CreateCluster"), 1);
    assert_eq!(list_resources(dir.path()).expect("list").len(), 1);
}

#[tokio::test]
async fn a_second_instance_in_the_same_process_shares_the_state() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (a, b) = (open(dir.path(), 100), open(dir.path(), 100));
    let (ha, hb) = (Hooks::default(), Hooks::default());
    let (ctx_a, ctx_b, orders) = (ctx(&ha, "op-a"), ctx(&hb, "op-b"), database("orders", true));
    let (ra, rb) = tokio::join!(a.apply(&ctx_a, &orders), b.apply(&ctx_b, &orders));
    assert_eq!(ra.expect("a").resource_id, rb.expect("b").resource_id);
    assert_eq!(count(dir.path(), "sim:CreateDatabase"), 1);
    let mut mutating = ha.mutating();
    mutating.extend(hb.mutating());
    assert_eq!(mutating, ["sim:CreateDatabase"]);
}
