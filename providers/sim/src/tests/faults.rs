//! Injected faults: each produces the error the executor acts on, and counted
//! faults are consumed once.

use std::time::Instant;

use byoc_provider::{Provider, ProviderError};

use super::*;
use crate::faults::THROTTLE_RETRY_AFTER;
use crate::{Faults, list_resources, read_faults, write_faults};

#[tokio::test]
async fn throttling_fails_the_next_calls_then_is_used_up() {
    let dir = tempfile::tempdir().expect("tempdir");
    let sim = open(dir.path(), 0);
    sim.set_faults(&Faults {
        throttle_next: 2,
        ..Faults::default()
    })
    .expect("faults");
    let hooks = Hooks::default();
    for _ in 0..2 {
        let err = sim
            .apply(&ctx(&hooks, "op-1"), &cluster("demo"))
            .await
            .expect_err("throttled");
        assert_eq!(
            err,
            ProviderError::Throttled {
                retry_after: Some(THROTTLE_RETRY_AFTER)
            }
        );
        assert!(err.is_retryable());
    }
    assert_eq!(read_faults(dir.path()).expect("faults"), Faults::default(), "consumed");
    assert!(
        list_resources(dir.path()).expect("list").is_empty(),
        "a throttled call changes nothing"
    );
    sim.apply(&ctx(&hooks, "op-1"), &cluster("demo"))
        .await
        .expect("apply after throttling");
    assert_eq!(count(dir.path(), "sim:CreateCluster"), 1);
}

#[tokio::test]
async fn an_injected_failure_is_transient_and_the_retry_converges() {
    let dir = tempfile::tempdir().expect("tempdir");
    let sim = open(dir.path(), 0);
    let hooks = Hooks::default();
    // The first call, the describe, fails.
    write_faults(
        dir.path(),
        &Faults {
            fail_next: 1,
            ..Faults::default()
        },
    )
    .expect("faults");
    let err = sim
        .apply(&ctx(&hooks, "op-1"), &cluster("demo"))
        .await
        .expect_err("fails");
    assert!(
        matches!(&err, ProviderError::Transient { message } if message.contains("sim:DescribeCluster")),
        "{err:?}"
    );
    assert_eq!(read_faults(dir.path()).expect("faults").fail_next, 0);
    let out = sim.apply(&ctx(&hooks, "op-1"), &cluster("demo")).await.expect("retry");
    assert_eq!(out.status, "active");
}

#[tokio::test]
async fn a_denied_action_names_the_missing_permission() {
    let dir = tempfile::tempdir().expect("tempdir");
    let sim = open(dir.path(), 0);
    let deny = Faults {
        deny: vec!["sim:CreateDatabase".into()],
        ..Faults::default()
    };
    sim.set_faults(&deny).expect("faults");
    let hooks = Hooks::default();
    let err = sim
        .apply(&ctx(&hooks, "op-1"), &database("orders", true))
        .await
        .expect_err("denied");
    assert_eq!(
        err,
        ProviderError::PermissionDenied {
            permission: "sim:CreateDatabase".into()
        }
    );
    assert!(list_resources(dir.path()).expect("list").is_empty());
    assert_eq!(count(dir.path(), "sim:CreateDatabase"), 0, "a denied call is not made");
    // Denial is not consumed, and other actions are allowed.
    assert_eq!(read_faults(dir.path()).expect("faults"), deny);
    sim.apply(&ctx(&hooks, "op-2"), &cluster("demo"))
        .await
        .expect("clusters are allowed");
}

#[tokio::test]
async fn node_pools_and_sandboxes_share_the_node_quota() {
    let dir = tempfile::tempdir().expect("tempdir");
    let sim = open(dir.path(), 0);
    let hooks = Hooks::default();
    sim.apply(&ctx(&hooks, "op-1"), &cluster("demo"))
        .await
        .expect("cluster");
    sim.set_faults(&Faults {
        quota_max_nodes: Some(10),
        ..Faults::default()
    })
    .expect("faults");
    sim.apply(&ctx(&hooks, "op-2"), &pool("a", "demo", 1, 6))
        .await
        .expect("6 of 10");

    let sandbox = spec(
        byoc_provider::ResourceKind::Sandbox,
        r#"{"name":"sb","cluster":"demo","isolation":"gvisor","instance_type":"m6i.large",
            "min_size":0,"desired_size":1,"max_size":5}"#,
    );
    let err = sim.apply(&ctx(&hooks, "op-3"), &sandbox).await.expect_err("11 of 10");
    let ProviderError::QuotaExceeded { quota } = &err else {
        panic!("not a quota error: {err:?}")
    };
    assert!(quota.contains("11") && quota.contains("10"), "{quota}");

    // Growing a pool counts too; its own current size is not counted twice.
    sim.apply(&ctx(&hooks, "op-4"), &pool("a", "demo", 1, 10))
        .await
        .expect("10 of 10");
    let err = sim
        .apply(&ctx(&hooks, "op-5"), &pool("a", "demo", 1, 11))
        .await
        .expect_err("11 of 10");
    assert!(matches!(err, ProviderError::QuotaExceeded { .. }));
    let records = list_resources(dir.path()).expect("list");
    assert_eq!(records.len(), 2);
    assert!(records.iter().any(|r| r.name == "a" && r.spec["max_size"] == 10));
}

#[tokio::test]
async fn slow_calls_take_at_least_the_given_time() {
    let dir = tempfile::tempdir().expect("tempdir");
    let sim = open(dir.path(), 0);
    sim.set_faults(&Faults {
        slow_ms: 100,
        ..Faults::default()
    })
    .expect("faults");
    let hooks = Hooks::default();
    let started = Instant::now();
    sim.observe(&ctx(&hooks, "op-1"), &cluster("demo"))
        .await
        .expect("observe");
    assert!(started.elapsed() >= ms(100));
}

#[test]
fn the_faults_file_format() {
    let faults: Faults = serde_json::from_str(
        r#"{"throttle_next": 2, "fail_next": 1, "slow_ms": 200, "deny": ["sim:CreateDatabase"], "quota_max_nodes": 100}"#,
    )
    .expect("decode");
    assert_eq!(
        faults,
        Faults {
            throttle_next: 2,
            fail_next: 1,
            slow_ms: 200,
            deny: vec!["sim:CreateDatabase".into()],
            quota_max_nodes: Some(100)
        }
    );
    assert_eq!(serde_json::from_str::<Faults>("{}").expect("empty"), Faults::default());
    assert!(
        serde_json::from_str::<Faults>(r#"{"throttle": 1}"#).is_err(),
        "unknown fields are refused"
    );
}
