//! Create, update, delete and the checks the cloud makes on them.

use std::time::Instant;

use byoc_provider::{PlanSummary, Provider, ProviderError, ResourceSpec};

use super::*;
use crate::{ResourceStatus, list_resources};

#[tokio::test]
async fn create_waits_until_active_and_returns_outputs() {
    let dir = tempfile::tempdir().expect("tempdir");
    let sim = open(dir.path(), 300);
    let hooks = Hooks::default();
    assert_eq!(sim.cloud(), "sim");

    let started = Instant::now();
    let out = sim.apply(&ctx(&hooks, "op-1"), &cluster("demo")).await.expect("apply");
    assert!(
        started.elapsed() >= ms(300),
        "returned before the create delay: {:?}",
        started.elapsed()
    );

    assert_eq!(out.status, "active");
    assert!(out.resource_id.starts_with("sim-cluster-") && out.resource_id.len() == "sim-cluster-".len() + 12);
    assert_eq!(out.endpoints["api"], format!("https://{}.sim.invalid", out.resource_id));
    assert_eq!(out.attributes["kubernetes_version"], "1.31");
    assert_eq!(out.attributes["kind"], "cluster");

    let actions: Vec<String> = hooks.calls().into_iter().map(|c| c.action).collect();
    assert_eq!(actions[..2], ["sim:DescribeCluster", "sim:CreateCluster"]);
    assert!(actions[2..].iter().all(|a| a == "sim:DescribeCluster"), "{actions:?}");
    assert_eq!(hooks.mutating(), ["sim:CreateCluster"]);
    let progress = hooks.progress();
    assert!(
        progress
            .iter()
            .any(|(phase, p)| phase == "creating" && p.is_some_and(|p| p < 100)),
        "{progress:?}"
    );
    assert_eq!(progress.last(), Some(&("active".to_string(), Some(100))));

    let records = list_resources(dir.path()).expect("list");
    assert_eq!(records.len(), 1);
    assert_eq!(
        (records[0].id.as_str(), records[0].status),
        (out.resource_id.as_str(), ResourceStatus::Active)
    );
    assert_eq!(records[0].client_token, "op-1");

    // What observe returns is the stored spec and the same outputs.
    let observed = sim
        .observe(&ctx(&hooks, "op-2"), &cluster("demo"))
        .await
        .expect("observe")
        .expect("exists");
    assert_eq!(observed.spec, cluster("demo"));
    assert_eq!(observed.outputs, out);
}

#[tokio::test]
async fn reapplying_an_unchanged_spec_makes_no_mutating_call() {
    let dir = tempfile::tempdir().expect("tempdir");
    let sim = open(dir.path(), 50);
    let hooks = Hooks::default();
    let first = sim.apply(&ctx(&hooks, "op-1"), &cluster("demo")).await.expect("apply");
    let before = counts(dir.path());
    assert_eq!(before.values().sum::<u64>(), 1, "{before:?}");

    let hooks = Hooks::default();
    let plan = sim
        .plan(&ctx(&hooks, "op-2"), &cluster("demo"), false)
        .await
        .expect("plan");
    assert_eq!(plan.summary, PlanSummary::NoChange);
    let again = sim
        .apply(&ctx(&hooks, "op-2"), &cluster("demo"))
        .await
        .expect("apply again");
    assert_eq!(again, first);
    assert_eq!(counts(dir.path()), before);
    assert!(hooks.mutating().is_empty(), "{:?}", hooks.calls());
}

#[tokio::test]
async fn scaling_a_node_pool_is_an_update_in_place() {
    let dir = tempfile::tempdir().expect("tempdir");
    let sim = open(dir.path(), 250);
    let hooks = Hooks::default();
    sim.apply(&ctx(&hooks, "op-1"), &cluster("demo"))
        .await
        .expect("cluster");
    let created = sim
        .apply(&ctx(&hooks, "op-2"), &pool("gpu", "demo", 2, 10))
        .await
        .expect("pool");
    assert!(created.resource_id.starts_with("sim-node-pool-"));
    assert_eq!(created.attributes["desired_size"], "2");

    let hooks = Hooks::default();
    let scaled = pool("gpu", "demo", 5, 10);
    let plan = sim.plan(&ctx(&hooks, "op-3"), &scaled, false).await.expect("plan");
    assert_eq!(plan.summary, PlanSummary::Update);
    assert_eq!(plan.changes.len(), 1);
    assert_eq!(plan.changes[0].path, "desired_size");

    let started = Instant::now();
    let out = sim.apply(&ctx(&hooks, "op-3"), &scaled).await.expect("scale");
    assert!(started.elapsed() >= ms(250));
    assert_eq!(out.resource_id, created.resource_id, "an update keeps the resource");
    assert_eq!(out.attributes["desired_size"], "5");
    assert_eq!(hooks.mutating(), ["sim:UpdateNodePool"]);
    assert!(hooks.progress().iter().any(|(phase, _)| phase == "updating"));
    assert_eq!(count(dir.path(), "sim:UpdateNodePool"), 1);

    let records = list_resources(dir.path()).expect("list");
    let record = records.iter().find(|r| r.name == "gpu").expect("pool record");
    assert_eq!(record.spec["desired_size"], 5);
    assert!(record.updated_at.is_some());
}

#[tokio::test]
async fn a_change_that_needs_replacement_is_a_conflict() {
    let dir = tempfile::tempdir().expect("tempdir");
    let sim = open(dir.path(), 0);
    let hooks = Hooks::default();
    sim.apply(&ctx(&hooks, "op-1"), &cluster("demo"))
        .await
        .expect("cluster");
    sim.apply(&ctx(&hooks, "op-2"), &pool("gpu", "demo", 2, 10))
        .await
        .expect("pool");

    let mut bigger = pool("gpu", "demo", 2, 10);
    if let ResourceSpec::NodePool(p) = &mut bigger {
        p.instance_type = "m6i.xlarge".into();
    }
    let hooks = Hooks::default();
    let err = sim
        .apply(&ctx(&hooks, "op-3"), &bigger)
        .await
        .expect_err("needs replacement");
    let ProviderError::Conflict { message } = &err else {
        panic!("not a conflict: {err:?}")
    };
    assert!(
        message.contains("instance_type") && message.contains("replac"),
        "{message}"
    );
    assert!(message.contains("does not replace"), "{message}");
    assert!(hooks.mutating().is_empty());
    let records = list_resources(dir.path()).expect("list");
    assert!(
        records
            .iter()
            .any(|r| r.name == "gpu" && r.spec["instance_type"] == "m6i.large")
    );
}

#[tokio::test]
async fn children_need_their_cluster_and_keep_it_from_being_deleted() {
    let dir = tempfile::tempdir().expect("tempdir");
    let sim = open(dir.path(), 0);
    let hooks = Hooks::default();
    let err = sim
        .apply(&ctx(&hooks, "op-1"), &pool("gpu", "demo", 1, 3))
        .await
        .expect_err("no cluster");
    assert!(
        matches!(&err, ProviderError::NotFound { what } if what.contains("cluster \"demo\"")),
        "{err:?}"
    );
    assert!(list_resources(dir.path()).expect("list").is_empty());

    sim.apply(&ctx(&hooks, "op-2"), &cluster("demo"))
        .await
        .expect("cluster");
    sim.apply(&ctx(&hooks, "op-3"), &pool("gpu", "demo", 1, 3))
        .await
        .expect("pool");
    let err = sim
        .delete(&ctx(&hooks, "op-4"), &cluster("demo"))
        .await
        .expect_err("has a pool");
    assert!(
        matches!(&err, ProviderError::Conflict { message } if message.contains("node_pool \"demo/gpu\"")),
        "{err:?}"
    );

    sim.delete(&ctx(&hooks, "op-5"), &pool("gpu", "demo", 1, 3))
        .await
        .expect("delete pool");
    let out = sim
        .delete(&ctx(&hooks, "op-6"), &cluster("demo"))
        .await
        .expect("delete cluster");
    assert_eq!(out.status, "deleted");
    assert!(list_resources(dir.path()).expect("list").is_empty());
}

#[tokio::test]
async fn deleting_a_missing_resource_succeeds_without_a_mutating_call() {
    let dir = tempfile::tempdir().expect("tempdir");
    let sim = open(dir.path(), 0);
    let hooks = Hooks::default();
    let out = sim
        .delete(&ctx(&hooks, "op-1"), &database("nope", true))
        .await
        .expect("delete");
    assert_eq!(out.status, "deleted");
    assert!(out.resource_id.is_empty());
    assert!(hooks.mutating().is_empty());
    assert!(
        sim.observe(&ctx(&hooks, "op-2"), &cluster("nope"))
            .await
            .expect("observe")
            .is_none()
    );
}

#[tokio::test]
async fn database_deletion_protection_must_be_turned_off_by_an_apply_first() {
    let dir = tempfile::tempdir().expect("tempdir");
    let sim = open(dir.path(), 50);
    let hooks = Hooks::default();
    let out = sim
        .apply(&ctx(&hooks, "op-1"), &database("orders", true))
        .await
        .expect("create");
    assert_eq!(
        out.endpoints["host"],
        format!("orders.{}.db.sim.invalid", out.resource_id)
    );
    assert_eq!(out.endpoints["port"], "5432");

    let err = sim
        .delete(&ctx(&hooks, "op-2"), &database("orders", true))
        .await
        .expect_err("protected");
    let ProviderError::Conflict { message } = &err else {
        panic!("not a conflict: {err:?}")
    };
    assert!(message.contains("deletion protection") && message.contains("\"deletion_protection\": false"));
    assert_eq!(
        list_resources(dir.path()).expect("list")[0].status,
        ResourceStatus::Active
    );

    // The spec given to delete does not matter: the stored one does.
    let err = sim
        .delete(&ctx(&hooks, "op-3"), &database("orders", false))
        .await
        .expect_err("still protected");
    assert!(matches!(err, ProviderError::Conflict { .. }));

    sim.apply(&ctx(&hooks, "op-4"), &database("orders", false))
        .await
        .expect("turn protection off");
    assert_eq!(count(dir.path(), "sim:UpdateDatabase"), 1);
    let deleted = sim
        .delete(&ctx(&hooks, "op-5"), &database("orders", false))
        .await
        .expect("delete");
    assert_eq!(
        (deleted.status.as_str(), deleted.resource_id.as_str()),
        ("deleted", out.resource_id.as_str())
    );
    assert!(list_resources(dir.path()).expect("list").is_empty());
    assert!(
        !dir.path().join("secrets").join(&out.resource_id).exists(),
        "the secret goes with the database"
    );
}

#[tokio::test]
async fn the_database_password_stays_in_the_state_directory() {
    let dir = tempfile::tempdir().expect("tempdir");
    let sim = open(dir.path(), 0);
    let hooks = Hooks::default();
    let out = sim
        .apply(&ctx(&hooks, "op-1"), &database("orders", true))
        .await
        .expect("create");
    let id = &out.resource_id;
    assert_eq!(
        out.secret_refs["master_password"],
        format!("sim://secrets/{id}/master-password")
    );

    let secret_file = dir.path().join("secrets").join(id);
    let password = std::fs::read_to_string(&secret_file).expect("secret");
    assert!(password.len() >= 32, "a strong password");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&secret_file).expect("stat").permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }
    let observed = sim
        .observe(&ctx(&hooks, "op-2"), &database("orders", true))
        .await
        .expect("observe");
    let outputs_json = serde_json::to_string(&(out.clone(), observed.map(|o| o.outputs))).expect("json");
    assert!(!outputs_json.contains(&password));
    for entry in std::fs::read_dir(dir.path().join("resources")).expect("resources") {
        let text = std::fs::read_to_string(entry.expect("entry").path()).expect("read");
        assert!(!text.contains(&password), "password in a resource file");
    }
    let records = format!("{:?}", list_resources(dir.path()).expect("list"));
    assert!(!records.contains(&password));
}

#[tokio::test]
async fn a_corrupt_resource_file_is_an_error_naming_it() {
    let dir = tempfile::tempdir().expect("tempdir");
    let sim = open(dir.path(), 0);
    let hooks = Hooks::default();
    sim.apply(&ctx(&hooks, "op-1"), &cluster("demo")).await.expect("create");
    let file = dir.path().join("resources").join("cluster.demo.json");
    std::fs::write(&file, "{\"id\": \"sim-clu").expect("corrupt it");

    let err = sim
        .observe(&ctx(&hooks, "op-2"), &cluster("demo"))
        .await
        .expect_err("corrupt");
    assert!(
        matches!(&err, ProviderError::Conflict { message } if message.contains("cluster.demo.json")),
        "{err:?}"
    );
    let err = list_resources(dir.path()).expect_err("corrupt");
    assert!(
        matches!(&err, crate::SimError::Corrupt { path, .. } if path.ends_with("cluster.demo.json")),
        "{err}"
    );
}

#[tokio::test]
async fn a_refused_call_is_not_made() {
    let dir = tempfile::tempdir().expect("tempdir");
    let sim = open(dir.path(), 0);
    let hooks = Hooks::default();
    hooks.refuse("audit log unavailable");
    let err = sim
        .apply(&ctx(&hooks, "op-1"), &cluster("demo"))
        .await
        .expect_err("refused");
    assert!(matches!(&err, ProviderError::Aborted { message } if message.contains("audit log unavailable")));
    assert!(list_resources(dir.path()).expect("list").is_empty());
    assert!(counts(dir.path()).is_empty());
}

#[test]
fn config_decodes_durations_with_defaults_and_rejects_unknown_fields() {
    let config: crate::SimConfig =
        serde_json::from_str(r#"{"state_dir":"/tmp/sim","create_delay":"2s","delete_delay":"150ms"}"#).expect("decode");
    assert_eq!(config.create_delay, ms(2000));
    assert_eq!(config.update_delay, ms(0));
    assert_eq!(config.delete_delay, ms(150));
    assert_eq!(config.poll_interval, ms(50));
    assert!(serde_json::from_str::<crate::SimConfig>(r#"{"state_dir":"/x","delay":"1s"}"#).is_err());
}

#[cfg(unix)]
#[test]
fn open_creates_a_private_state_directory() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().expect("tempdir");
    let state = dir.path().join("a").join("sim");
    let sim = SimCloud::open(SimConfig::new(&state)).expect("open");
    assert_eq!(
        std::fs::metadata(&state).expect("stat").permissions().mode() & 0o777,
        0o700
    );
    assert_eq!(sim.state_dir(), state.canonicalize().expect("canonical"));
}
