//! The AWS provider through the real agent and control plane, against moto in
//! server mode (a real, independent emulator), checked with boto3's own
//! describe calls rather than the agent's code.

#![allow(clippy::expect_used)]

use std::time::Duration;

use byoc_tests::moto::{FaultProxy, Moto};
use byoc_tests::{Agent, ControlPlane, World, wait_for};
use serde_json::{Value, json};

const CREDS: &[(&str, &str)] = &[
    ("AWS_ACCESS_KEY_ID", "test"),
    ("AWS_SECRET_ACCESS_KEY", "test"),
    ("AWS_EC2_METADATA_DISABLED", "true"),
];

fn aws_op(action: &str, kind: &str, spec: Value) -> Value {
    json!({
        "target": {"cloud": "aws", "account": "123456789012", "region": "us-east-1"},
        "action": action, "kind": kind, "spec": spec,
    })
}

/// An enrolled, running agent whose AWS endpoint is `endpoint` (moto, or the
/// fault proxy in front of it), with the network the install module would
/// have made (a VPC, two subnets, the cluster's security group) in moto.
fn start_at(w: &World, cp: &ControlPlane, moto: &Moto, endpoint: &str) -> (Agent, Value) {
    let net = moto.aws(&["setup-network"]);
    let mut a = w.aws_agent_config("agent", endpoint, &net);
    let out = a.enroll(&cp.token("15m"), &cp.url);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    a.start_with_env(CREDS);
    a.wait_connected(cp);
    (a, net)
}

fn start(w: &World, cp: &ControlPlane, moto: &Moto) -> Agent {
    start_at(w, cp, moto, &moto.url()).0
}

/// A database delete, which the default policy holds for a local approval:
/// approved on the agent host, then run; returns its result.
fn approved_delete(cp: &ControlPlane, agent: &Agent, spec: Value, ok: bool) -> (String, Value) {
    let id = cp.submit_json(&aws_op("delete", "database", spec));
    wait_for("the delete to await approval", Duration::from_secs(30), || {
        (cp.get(&id)["progress"]["phase"] == "awaiting_approval").then_some(())
    });
    let out = agent
        .cli()
        .args(["approve", &id, "--reason", "test", "--config"])
        .arg(&agent.config)
        .output()
        .expect("approve");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let watched = cp.watch(&id);
    assert_eq!(watched.success, ok, "{watched:?}\n{}", agent.log());
    let r = cp.get(&id)["results"][0].clone();
    (id, r)
}

/// Submits, waits, and returns the operation's first result (asserting its outcome).
fn run(cp: &ControlPlane, agent: &Agent, doc: Value, ok: bool) -> (String, Value) {
    let id = cp.submit_json(&doc);
    let watched = cp.watch(&id);
    assert_eq!(watched.success, ok, "{doc}\n{watched:?}\n{}", agent.log());
    let r = cp.get(&id)["results"][0].clone();
    (id, r)
}

fn mutating_calls(agent: &Agent, op: &str) -> Vec<String> {
    agent
        .audit()
        .iter()
        .filter(|e| e["op"] == op && e["kind"] == "provider.call" && e["detail"]["mutating"] == true)
        .map(|e| e["detail"]["action"].as_str().unwrap_or_default().to_string())
        .collect()
}

#[test]
fn an_eks_cluster_is_created_planned_left_alone_when_unchanged_and_deleted() {
    let w = World::new();
    let moto = Moto::start(&w.path("."));
    moto.reset();
    let cp = w.control_plane();
    let (agent, net) = start_at(&w, &cp, &moto, &moto.url());
    let key = "arn:aws:kms:us-east-1:123456789012:key/0a1b2c3d-4e5f-6a7b-8c9d-0e1f2a3b4c5d";
    let spec = json!({
        "name": "prod", "kubernetes_version": "1.31", "endpoint_access": "public_and_private",
        "control_plane_logs": ["api", "audit"], "secrets_encryption_key": key, "tags": {"team": "platform"},
    });

    let id = cp.submit_json(&aws_op("apply", "cluster", spec.clone()));
    let watched = cp.watch(&id);
    assert!(watched.success, "{watched:?}\n{}", agent.log());
    let r = &cp.get(&id)["results"][0];
    assert!(
        r["outputs"]["resource_id"]
            .as_str()
            .is_some_and(|a| a.starts_with("arn:aws:eks:us-east-1:")),
        "{r}"
    );

    // Seen by boto3, not by the agent.
    let c = moto.aws(&["describe-cluster", "prod"]);
    assert_eq!(c["status"], "ACTIVE", "{c}");
    assert_eq!(c["version"], "1.31");
    assert_eq!(c["roleArn"], "arn:aws:iam::123456789012:role/byoc-eks-cluster");
    assert_eq!(c["resourcesVpcConfig"]["endpointPublicAccess"], true);
    assert_eq!(c["resourcesVpcConfig"]["endpointPrivateAccess"], true);
    assert_eq!(c["resourcesVpcConfig"]["subnetIds"], net["subnets"]);
    assert_eq!(c["tags"]["team"], "platform");
    assert_eq!(c["encryptionConfig"][0]["provider"]["keyArn"], key, "{c}");
    assert_eq!(enabled_logs(&c), vec!["api", "audit"], "{c}");
    assert_eq!(mutating_calls(&agent, &id), vec!["eks:CreateCluster"]);

    // The audit log has the AWS request id of the create, to match with CloudTrail.
    let finished = agent
        .audit()
        .into_iter()
        .find(|e| e["op"] == id.as_str() && e["kind"] == "operation.finished")
        .expect("finished");
    let create = finished["detail"]["calls"]["made"]
        .as_array()
        .and_then(|m| m.iter().find(|c| c["action"] == "eks:CreateCluster").cloned())
        .expect("the create call");
    assert!(
        create["request_id"].as_str().is_some_and(|r| r.len() > 8 && r != "-"),
        "{create}"
    );

    // Unchanged: no mutating call.
    let again = cp.submit_json(&aws_op("apply", "cluster", spec.clone()));
    assert!(cp.watch(&again).success);
    assert!(
        mutating_calls(&agent, &again).is_empty(),
        "{:?}",
        mutating_calls(&agent, &again)
    );

    // A plan shows the exact diff.
    let mut changed = spec.clone();
    changed["endpoint_access"] = json!("private");
    let plan = cp.submit_json(&aws_op("plan", "cluster", changed.clone()));
    assert!(cp.watch(&plan).success);
    let p = &cp.get(&plan)["results"][0]["plan"];
    assert_eq!(p[0]["path"], "endpoint_access", "{p}");
    assert_eq!(p[0]["from"], "\"public_and_private\"");
    assert_eq!(p[0]["to"], "\"private\"");

    // Applied in place.
    let upd = cp.submit_json(&aws_op("apply", "cluster", changed));
    assert!(cp.watch(&upd).success);
    assert_eq!(mutating_calls(&agent, &upd), vec!["eks:UpdateClusterConfig"]);
    let c = moto.aws(&["describe-cluster", "prod"]);
    assert_eq!(c["resourcesVpcConfig"]["endpointPublicAccess"], false);
    assert_eq!(
        c["resourcesVpcConfig"]["subnetIds"], net["subnets"],
        "the rest of the VPC config is kept"
    );

    // Control-plane logs change in place; the secrets key cannot.
    let mut logs = spec.clone();
    logs["endpoint_access"] = json!("private");
    logs["control_plane_logs"] = json!(["audit", "scheduler"]);
    logs["tags"] = json!({"env": "prod"});
    let (id, _) = run(&cp, &agent, aws_op("apply", "cluster", logs.clone()), true);
    assert_eq!(
        mutating_calls(&agent, &id),
        vec!["eks:UpdateClusterConfig", "eks:TagResource", "eks:UntagResource"]
    );
    let c = moto.aws(&["describe-cluster", "prod"]);
    assert_eq!(enabled_logs(&c), vec!["audit", "scheduler"], "{c}");
    assert_eq!(c["tags"], json!({"env": "prod"}), "{c}");
    let mut rekeyed = logs.clone();
    rekeyed["secrets_encryption_key"] = json!("arn:aws:kms:us-east-1:123456789012:key/another");
    let (id, r) = run(&cp, &agent, aws_op("apply", "cluster", rekeyed), false);
    assert_eq!(r["problem"]["code"], "conflict", "{r}");
    assert!(
        r["problem"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("secrets_encryption_key")),
        "{r}"
    );
    assert!(mutating_calls(&agent, &id).is_empty());

    // Deleted.
    let del = cp.submit_json(&aws_op("delete", "cluster", spec));
    assert!(cp.watch(&del).success);
    assert_eq!(moto.aws(&["describe-cluster", "prod"])["absent"], true);
    let v = agent.audit_verify();
    assert!(v.status.success(), "{}", String::from_utf8_lossy(&v.stdout));
}

#[test]
fn deleting_a_cluster_with_node_groups_is_a_clear_conflict() {
    let w = World::new();
    let moto = Moto::start(&w.path("."));
    let cp = w.control_plane();
    let agent = start(&w, &cp, &moto);
    let spec = json!({"name": "busy", "kubernetes_version": "1.31"});
    assert!(
        cp.watch(&cp.submit_json(&aws_op("apply", "cluster", spec.clone())))
            .success
    );
    moto.aws(&["create-nodegroup", "busy", "workers"]);
    let del = cp.submit_json(&aws_op("delete", "cluster", spec));
    assert!(!cp.watch(&del).success);
    let r = &cp.get(&del)["results"][0];
    assert_eq!(r["problem"]["code"], "conflict", "{r}");
    assert!(
        r["problem"]["message"].as_str().is_some_and(|m| m.contains("workers")),
        "the message names the node group: {r}"
    );
    assert_eq!(moto.aws(&["describe-cluster", "busy"])["status"], "ACTIVE");
    assert!(mutating_calls(&agent, &del).is_empty());
}

/// The generated policy is enough, and without one of its actions the
/// operation fails naming that action: moto enforcing IAM.
#[test]
fn the_generated_iam_policy_is_enough_and_a_missing_action_is_named() {
    let w = World::new();
    let moto = Moto::start(&w.path("."));
    let cp = w.control_plane();
    let mut agent = start(&w, &cp, &moto);
    agent.stop();
    let out = agent
        .cli()
        .args(["iam-policy", "--cloud", "aws"])
        .output()
        .expect("iam-policy");
    assert!(out.status.success());
    let policy: Value = serde_json::from_slice(&out.stdout).expect("policy json");
    let full = moto.aws(&["create-user", "agent-full", &policy.to_string()]);
    let mut less = policy.clone();
    let actions = less["Statement"][0]["Action"].as_array_mut().expect("actions");
    actions.retain(|a| a != "eks:CreateNodegroup");
    let less_user = moto.aws(&["create-user", "agent-less", &less.to_string()]);

    let creds = |u: &Value| -> Vec<(String, String)> {
        vec![
            ("AWS_ACCESS_KEY_ID".into(), u["key"].as_str().expect("key").into()),
            (
                "AWS_SECRET_ACCESS_KEY".into(),
                u["secret"].as_str().expect("secret").into(),
            ),
            ("AWS_EC2_METADATA_DISABLED".into(), "true".into()),
        ]
    };
    let run_with = |agent: &mut Agent, c: &[(String, String)]| {
        let env: Vec<(&str, &str)> = c.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        agent.start_with_env(&env);
        agent.wait_connected(&cp);
    };

    // The whole flow, every kind, applied and deleted, as that user.
    moto.enforce_iam(true);
    run_with(&mut agent, &creds(&full));
    let mut pool = pool_spec();
    pool["cluster"] = json!("least");
    let sandbox = json!({
        "name": "sandboxed", "cluster": "least", "isolation": "gvisor", "instance_type": "m6i.large",
        "min_size": 1, "max_size": 2, "desired_size": 1,
    });
    let mut db = db_spec();
    db["deletion_protection"] = json!(false);
    let flow = [
        ("cluster", cluster_spec("least")),
        ("node_pool", pool.clone()),
        ("sandbox", sandbox.clone()),
        ("database", db.clone()),
    ];
    for (kind, spec) in &flow {
        run(&cp, &agent, aws_op("apply", kind, spec.clone()), true);
    }
    for (kind, spec) in flow.iter().rev() {
        if *kind == "database" {
            approved_delete(&cp, &agent, spec.clone(), true);
        } else {
            run(&cp, &agent, aws_op("delete", kind, spec.clone()), true);
        }
    }
    agent.stop();

    run_with(&mut agent, &creds(&less_user));
    run(&cp, &agent, aws_op("apply", "cluster", cluster_spec("least")), true);
    let (_, r) = run(&cp, &agent, aws_op("apply", "node_pool", pool), false);
    assert_eq!(r["problem"]["code"], "permission_denied", "{r}");
    assert!(
        r["problem"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("eks:CreateNodegroup")),
        "the missing action is named: {r}"
    );
    moto.enforce_iam(false);
    assert_eq!(
        moto.aws(&["describe-nodegroup", "least", "spot-workers"])["absent"],
        true
    );
    assert_eq!(moto.aws(&["describe-db", "orders"])["absent"], true);
}

/// The control-plane log types a described EKS cluster has on.
fn enabled_logs(c: &Value) -> Vec<String> {
    let mut on: Vec<String> = c["logging"]["clusterLogging"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|s| s["enabled"] == true)
        .flat_map(|s| s["types"].as_array().cloned().unwrap_or_default())
        .filter_map(|t| t.as_str().map(str::to_string))
        .collect();
    on.sort();
    on
}

fn cluster_spec(name: &str) -> Value {
    json!({"name": name, "kubernetes_version": "1.31"})
}

fn pool_spec() -> Value {
    json!({
        "name": "spot-workers", "cluster": "apps", "instance_type": "m6i.large",
        "min_size": 1, "max_size": 6, "desired_size": 2, "capacity": "spot", "disk_gb": 80,
        "labels": {"team": "a", "tier": "batch"},
        "taints": [{"key": "spot", "value": "true", "effect": "NoSchedule"}],
        "tags": {"cost-center": "42"},
    })
}

fn db_spec() -> Value {
    json!({
        "name": "orders", "engine": "postgres", "version": "16.4", "size": "medium",
        "storage_gb": 50, "max_storage_gb": 200, "high_availability": true,
        "backups": {"retention_days": 14}, "tags": {"data": "pii"},
    })
}

/// The whole flow through the real agent and control plane: a cluster, a
/// spot node pool with labels and taints, a gVisor sandbox pool and a
/// PostgreSQL database, each checked with boto3's own describe calls; plans,
/// in-place changes, refusals, and deletes in order.
#[test]
fn node_pools_sandboxes_and_databases_are_applied_changed_and_deleted_in_order() {
    let w = World::new();
    let moto = Moto::start(&w.path("."));
    let cp = w.control_plane();
    let (agent, net) = start_at(&w, &cp, &moto, &moto.url());
    run(&cp, &agent, aws_op("apply", "cluster", cluster_spec("apps")), true);

    // A spot node pool with labels and taints.
    let pool = pool_spec();
    let (id, r) = run(&cp, &agent, aws_op("apply", "node_pool", pool.clone()), true);
    assert_eq!(mutating_calls(&agent, &id), vec!["eks:CreateNodegroup"]);
    assert!(
        r["outputs"]["resource_id"]
            .as_str()
            .is_some_and(|a| a.starts_with("arn:aws:eks:us-east-1:") && a.contains("nodegroup/apps/spot-workers")),
        "{r}"
    );
    let ng = moto.aws(&["describe-nodegroup", "apps", "spot-workers"]);
    assert_eq!(ng["status"], "ACTIVE", "{ng}");
    assert_eq!(ng["capacityType"], "SPOT");
    assert_eq!(ng["instanceTypes"], json!(["m6i.large"]));
    assert_eq!(
        ng["scalingConfig"],
        json!({"minSize": 1, "maxSize": 6, "desiredSize": 2})
    );
    assert_eq!(ng["diskSize"], 80);
    assert_eq!(ng["amiType"], "AL2023_x86_64_STANDARD");
    assert_eq!(ng["version"], "1.31", "the group runs the cluster's version");
    assert_eq!(ng["nodeRole"], "arn:aws:iam::123456789012:role/byoc-eks-node");
    assert_eq!(ng["subnets"], net["subnets"]);
    assert_eq!(ng["labels"], json!({"team": "a", "tier": "batch"}));
    assert_eq!(
        ng["taints"],
        json!([{"key": "spot", "value": "true", "effect": "NO_SCHEDULE"}])
    );
    assert_eq!(ng["tags"]["cost-center"], "42");

    // Unchanged: no mutating call.
    let (again, _) = run(&cp, &agent, aws_op("apply", "node_pool", pool.clone()), true);
    assert!(
        mutating_calls(&agent, &again).is_empty(),
        "{:?}",
        mutating_calls(&agent, &again)
    );

    // Scale and relabel: the plan is the exact diff, applied in place in one call.
    let mut scaled = pool.clone();
    scaled["desired_size"] = json!(4);
    scaled["labels"] = json!({"team": "b", "tier": "batch"});
    let (_, r) = run(&cp, &agent, aws_op("plan", "node_pool", scaled.clone()), true);
    let paths: Vec<(&str, String, String)> = r["plan"]
        .as_array()
        .expect("plan")
        .iter()
        .map(|c| {
            (
                c["path"].as_str().unwrap_or(""),
                c["from"].as_str().unwrap_or("").to_string(),
                c["to"].as_str().unwrap_or("").to_string(),
            )
        })
        .collect();
    assert_eq!(
        paths,
        vec![
            ("desired_size", "2".into(), "4".into()),
            ("labels.team", "\"a\"".into(), "\"b\"".into())
        ],
        "{r}"
    );
    let (upd, _) = run(&cp, &agent, aws_op("apply", "node_pool", scaled.clone()), true);
    assert_eq!(mutating_calls(&agent, &upd), vec!["eks:UpdateNodegroupConfig"]);
    let ng = moto.aws(&["describe-nodegroup", "apps", "spot-workers"]);
    assert_eq!(ng["scalingConfig"]["desiredSize"], 4);
    assert_eq!(ng["labels"], json!({"team": "b", "tier": "batch"}));

    // A change that needs a new group is refused, naming the field; nothing is called.
    let mut bigger = scaled.clone();
    bigger["instance_type"] = json!("m6i.xlarge");
    let (refused, r) = run(&cp, &agent, aws_op("apply", "node_pool", bigger), false);
    assert_eq!(r["problem"]["code"], "conflict", "{r}");
    assert!(
        r["problem"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("instance_type")),
        "{r}"
    );
    assert!(mutating_calls(&agent, &refused).is_empty());
    assert_eq!(
        moto.aws(&["describe-nodegroup", "apps", "spot-workers"])["instanceTypes"],
        json!(["m6i.large"])
    );

    // A gVisor sandbox pool: its own node group on a launch template that installs the runtime.
    let sandbox = json!({
        "name": "sandboxed", "cluster": "apps", "isolation": "gvisor", "instance_type": "m6i.large",
        "min_size": 1, "max_size": 3, "desired_size": 1, "labels": {"purpose": "untrusted"},
    });
    let (id, r) = run(&cp, &agent, aws_op("apply", "sandbox", sandbox.clone()), true);
    assert_eq!(
        mutating_calls(&agent, &id),
        vec!["ec2:CreateLaunchTemplate", "eks:CreateNodegroup"]
    );
    let rc: Value = serde_json::from_str(
        r["outputs"]["attributes"]["runtime_class"]
            .as_str()
            .expect("runtime_class"),
    )
    .expect("runtime class json");
    assert_eq!(rc["kind"], "RuntimeClass");
    assert_eq!(rc["handler"], "runsc");
    assert_eq!(rc["metadata"]["name"], "sandboxed");
    let ng = moto.aws(&["describe-nodegroup", "apps", "sandboxed"]);
    assert_eq!(ng["launchTemplate"]["name"], "byoc-sandbox-apps-sandboxed", "{ng}");
    assert_eq!(
        ng["labels"],
        json!({"purpose": "untrusted", "sandbox.byoc.dev/isolation": "gvisor", "sandbox.byoc.dev/pool": "sandboxed"})
    );
    assert_eq!(
        ng["taints"],
        json!([{"key": "sandbox.byoc.dev/isolation", "value": "gvisor", "effect": "NO_SCHEDULE"}])
    );
    assert_eq!(rc["scheduling"]["nodeSelector"]["sandbox.byoc.dev/pool"], "sandboxed");
    let lt = moto.aws(&["describe-launch-template", "byoc-sandbox-apps-sandboxed"]);
    let user_data = lt["data"]["UserData"].as_str().expect("user data");
    assert!(user_data.contains("containerd.runtimes.runsc]"), "{user_data}");
    assert!(user_data.contains("sha512sum -c"), "{user_data}");
    assert_eq!(lt["data"]["MetadataOptions"]["HttpTokens"], "required");
    assert_eq!(lt["data"]["MetadataOptions"]["HttpPutResponseHopLimit"], 1);
    let (again, _) = run(&cp, &agent, aws_op("apply", "sandbox", sandbox.clone()), true);
    assert!(mutating_calls(&agent, &again).is_empty());

    // Kata needs virtualization: a non-metal type is refused naming the ones that can.
    let kata = json!({
        "name": "microvms", "cluster": "apps", "isolation": "kata", "instance_type": "m5.large",
        "min_size": 1, "max_size": 2, "desired_size": 1,
    });
    let (id, r) = run(&cp, &agent, aws_op("apply", "sandbox", kata.clone()), false);
    assert_eq!(r["problem"]["code"], "invalid_spec", "{r}");
    assert_eq!(r["problem"]["field"], "sandbox.instance_type", "{r}");
    let m = r["problem"]["message"].as_str().unwrap_or("");
    assert!(
        m.contains("m5.large") && m.contains("m5.metal") && m.contains("bare-metal"),
        "{m}"
    );
    assert!(mutating_calls(&agent, &id).is_empty());
    let mut metal = kata;
    metal["instance_type"] = json!("m5.metal");
    let (_, r) = run(&cp, &agent, aws_op("apply", "sandbox", metal.clone()), true);
    assert_eq!(r["outputs"]["attributes"]["runtime_handler"], "kata-clh", "{r}");

    // A PostgreSQL database, its password managed by RDS in Secrets Manager.
    let db = db_spec();
    let (id, r) = run(&cp, &agent, aws_op("apply", "database", db.clone()), true);
    assert_eq!(
        mutating_calls(&agent, &id),
        vec![
            "rds:CreateDBSubnetGroup",
            "ec2:CreateSecurityGroup",
            "ec2:AuthorizeSecurityGroupIngress",
            "rds:CreateDBInstance"
        ]
    );
    let d = moto.aws(&["describe-db", "orders"]);
    assert_eq!(d["Engine"], "postgres", "{d}");
    assert_eq!(d["EngineVersion"], "16.4");
    assert_eq!(d["DBInstanceClass"], "db.m7g.large");
    assert_eq!(d["AllocatedStorage"], 50);
    assert_eq!(d["MaxAllocatedStorage"], 200);
    assert_eq!(d["StorageType"], "gp3");
    assert_eq!(d["StorageEncrypted"], true);
    assert_eq!(d["MultiAZ"], true);
    assert_eq!(d["BackupRetentionPeriod"], 14);
    assert_eq!(d["DeletionProtection"], true, "on by default");
    assert_eq!(d["PubliclyAccessible"], false);
    assert_eq!(d["DBSubnetGroup"]["DBSubnetGroupName"], "byoc-orders");
    let sg = moto.aws(&["describe-security-group", "byoc-db-orders"]);
    assert_eq!(d["VpcSecurityGroups"][0]["VpcSecurityGroupId"], sg["GroupId"]);
    assert_eq!(sg["VpcId"], net["vpc"]);
    // Open on the engine's port to the cluster's security group, and to nothing else.
    let rules = sg["IpPermissions"].as_array().expect("rules");
    assert_eq!(rules.len(), 1, "{sg}");
    assert_eq!(
        (rules[0]["FromPort"].clone(), rules[0]["ToPort"].clone()),
        (json!(5432), json!(5432))
    );
    assert_eq!(rules[0]["IpRanges"], json!([]));
    assert_eq!(rules[0]["UserIdGroupPairs"][0]["GroupId"], net["sg"]);
    let secret = d["MasterUserSecret"]["SecretArn"].as_str().expect("managed secret");
    assert_eq!(r["outputs"]["secret_refs"]["master_password"], secret, "{r}");
    assert_eq!(r["outputs"]["endpoints"]["port"], "5432");
    assert!(
        r["outputs"]["endpoints"]["host"]
            .as_str()
            .is_some_and(|h| h.starts_with("orders."))
    );
    assert_eq!(moto.aws(&["describe-secret", secret])["ARN"], secret);
    // The password itself, read by the test (never by the agent) to look for it below.
    let value = moto.aws(&["secret-value", secret]);
    let password: String = serde_json::from_str::<Value>(value["SecretString"].as_str().expect("secret string"))
        .expect("secret json")["password"]
        .as_str()
        .expect("password")
        .to_string();
    assert!(password.len() >= 8, "{value}");
    let (again, _) = run(&cp, &agent, aws_op("apply", "database", db.clone()), true);
    assert!(
        mutating_calls(&agent, &again).is_empty(),
        "{:?}",
        mutating_calls(&agent, &again)
    );

    // Grow storage now; shrinking is refused before any call.
    let mut grown = db.clone();
    grown["storage_gb"] = json!(100);
    grown["apply_immediately"] = json!(true);
    let (id, _) = run(&cp, &agent, aws_op("apply", "database", grown.clone()), true);
    assert_eq!(mutating_calls(&agent, &id), vec!["rds:ModifyDBInstance"]);
    assert_eq!(moto.aws(&["describe-db", "orders"])["AllocatedStorage"], 100);
    let (id, r) = run(&cp, &agent, aws_op("apply", "database", db.clone()), false);
    assert_eq!(r["problem"]["code"], "invalid_spec", "{r}");
    assert!(
        r["problem"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("never shrinks")),
        "{r}"
    );
    assert!(mutating_calls(&agent, &id).is_empty());

    // Deletion protection holds: the delete is refused and the database stays.
    let (id, r) = approved_delete(&cp, &agent, grown.clone(), false);
    assert_eq!(r["problem"]["code"], "conflict", "{r}");
    assert!(
        r["problem"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("deletion protection")),
        "{r}"
    );
    assert!(mutating_calls(&agent, &id).is_empty());
    assert_eq!(moto.aws(&["describe-db", "orders"])["DBInstanceStatus"], "available");

    // Turned off by an apply, then deleted: a final snapshot stays.
    let mut unprotected = grown.clone();
    unprotected["deletion_protection"] = json!(false);
    run(&cp, &agent, aws_op("apply", "database", unprotected.clone()), true);
    let (_, r) = approved_delete(&cp, &agent, unprotected, true);
    let snapshot = r["outputs"]["attributes"]["final_snapshot"]
        .as_str()
        .expect("final snapshot")
        .to_string();
    assert_eq!(moto.aws(&["describe-db", "orders"])["absent"], true);
    let snaps = moto.aws(&["describe-db-snapshots", "orders"]);
    let last = snaps
        .as_array()
        .and_then(|s| s.iter().find(|s| s["DBSnapshotIdentifier"] == snapshot.as_str()))
        .unwrap_or_else(|| panic!("no final snapshot {snapshot}: {snaps}"));
    assert_eq!(last["SnapshotType"], "manual", "{last}");
    assert_eq!(last["Status"], "available");
    assert_eq!(last["AllocatedStorage"], 100, "taken of the database as it was last");

    // The rest, in order: the cluster refuses to go while pools remain.
    let (_, r) = run(&cp, &agent, aws_op("delete", "cluster", cluster_spec("apps")), false);
    assert_eq!(r["problem"]["code"], "conflict", "{r}");
    run(&cp, &agent, aws_op("delete", "sandbox", sandbox), true);
    run(&cp, &agent, aws_op("delete", "sandbox", metal), true);
    run(&cp, &agent, aws_op("delete", "node_pool", scaled), true);
    run(&cp, &agent, aws_op("delete", "cluster", cluster_spec("apps")), true);
    let inv = moto.aws(&["inventory"]);
    assert_eq!(inv["clusters"], json!([]), "{inv}");
    assert_eq!(inv["launch_templates"], json!([]), "{inv}");
    assert_eq!(inv["db_instances"], json!([]), "{inv}");
    assert_eq!(inv["db_subnet_groups"], json!([]), "{inv}");
    assert!(
        !inv["security_groups"]
            .as_array()
            .expect("groups")
            .iter()
            .any(|g| g == "byoc-db-orders"),
        "{inv}"
    );

    // The master password is nowhere: not in what the control plane received
    // and stored, not in the agent's log, not in its audit log.
    let password = password.as_bytes();
    for dir in [&cp.dir, &w.path("agent")] {
        for file in walk(dir) {
            let bytes = std::fs::read(&file).unwrap_or_default();
            assert!(
                !bytes.windows(password.len()).any(|w| w == password),
                "the database password is in {}",
                file.display()
            );
        }
    }
    let v = agent.audit_verify();
    assert!(v.status.success(), "{}", String::from_utf8_lossy(&v.stdout));
}

fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let p = e.path();
            if p.is_dir() {
                todo.push(p);
            } else {
                out.push(p);
            }
        }
    }
    out
}

/// Throttling, server errors, dropped connections and lost responses (the
/// change made, the answer never arriving) on every service: every operation
/// still converges, and nothing is made twice.
#[test]
fn with_throttling_server_errors_and_lost_responses_every_operation_converges_once() {
    let w = World::new();
    let moto = Moto::start(&w.path("."));
    let proxy = FaultProxy::start(&moto);
    let cp = w.control_plane();
    let (agent, _) = start_at(&w, &cp, &moto, &proxy.url());
    proxy.set(json!({
        "cycle": ["pass", "throttle", "pass", "503", "pass", "drop", "pass", "500", "throttle", "pass"],
        // Each create's first answer is lost after the change is made.
        "match": [
            {"action": "POST /clusters", "faults": ["lose"]},
            {"action": "POST /clusters/apps/node-groups", "faults": ["lose"]},
            {"action": "CreateLaunchTemplate", "faults": ["lose"]},
            {"action": "CreateDBInstance", "faults": ["lose"]},
        ],
    }));
    let sandbox = json!({
        "name": "sandboxed", "cluster": "apps", "isolation": "gvisor", "instance_type": "m6i.large",
        "min_size": 1, "max_size": 2, "desired_size": 1,
    });
    for (kind, spec) in [
        ("cluster", cluster_spec("apps")),
        ("node_pool", pool_spec()),
        ("sandbox", sandbox),
        ("database", db_spec()),
    ] {
        run(&cp, &agent, aws_op("apply", kind, spec), true);
    }
    proxy.set(json!({}));

    let log = proxy.log();
    for fault in ["throttle", "503", "500", "drop", "lose"] {
        assert!(
            log.iter().any(|e| e["fault"] == fault),
            "no {fault} was injected: {log:?}"
        );
    }
    assert_eq!(
        log.iter().filter(|e| e["fault"] == "lose").count(),
        4,
        "every create lost its answer once: {log:?}"
    );
    // Exactly one of each, checked on moto directly.
    let inv = moto.aws(&["inventory"]);
    assert_eq!(inv["clusters"], json!(["apps"]), "{inv}");
    assert_eq!(
        inv["nodegroups"],
        json!(["apps/sandboxed", "apps/spot-workers"]),
        "{inv}"
    );
    assert_eq!(inv["launch_templates"], json!(["byoc-sandbox-apps-sandboxed"]), "{inv}");
    assert_eq!(inv["db_instances"], json!(["orders"]), "{inv}");
    assert_eq!(inv["db_subnet_groups"], json!(["byoc-orders"]), "{inv}");
    let groups = inv["security_groups"].as_array().expect("groups");
    assert_eq!(groups.iter().filter(|g| *g == "byoc-db-orders").count(), 1, "{inv}");
    let v = agent.audit_verify();
    assert!(v.status.success(), "{}", String::from_utf8_lossy(&v.stdout));
}

/// The agent dies while its create is on the wire; the cloud makes the
/// database anyway. Restarted, the agent resumes the operation from its
/// journal, finds the database and finishes, without a second create.
#[test]
fn an_agent_killed_mid_apply_converges_after_restart_without_a_duplicate() {
    let w = World::new();
    let moto = Moto::start(&w.path("."));
    let proxy = FaultProxy::start(&moto);
    let cp = w.control_plane();
    let (mut agent, _) = start_at(&w, &cp, &moto, &proxy.url());
    proxy.set(json!({"match": [{"action": "CreateDBInstance", "faults": ["slow:3"]}]}));
    let id = cp.submit_json(&aws_op("apply", "database", db_spec()));
    wait_for("the create to be on the wire", Duration::from_secs(30), || {
        proxy
            .log()
            .iter()
            .any(|e| e["action"] == "CreateDBInstance")
            .then_some(())
    });
    agent.kill9();
    wait_for("RDS to make the database", Duration::from_secs(20), || {
        (moto.aws(&["describe-db", "orders"])["absent"] != true).then_some(())
    });
    assert_eq!(cp.get(&id)["state"], "pending");

    agent.start_with_env(CREDS);
    let watched = cp.watch(&id);
    assert!(watched.success, "{watched:?}\n{}", agent.log());
    let creates = proxy.log().iter().filter(|e| e["action"] == "CreateDBInstance").count();
    assert_eq!(
        creates, 1,
        "the restarted agent found the database and did not create it again"
    );
    assert_eq!(moto.aws(&["inventory"])["db_instances"], json!(["orders"]));
    let r = &cp.get(&id)["results"][0];
    assert_eq!(r["outputs"]["status"], "available", "{r}");
    assert!(
        agent
            .audit()
            .iter()
            .any(|e| e["op"] == id.as_str() && e["kind"] == "operation.resumed")
    );
    assert!(agent.audit_verify().status.success());
}

/// The endpoint can be overridden in agent.toml only: an AWS_ENDPOINT_URL in
/// the environment would send the agent's signed requests elsewhere.
#[test]
fn an_endpoint_from_the_environment_stops_the_agent_with_a_clear_error() {
    let w = World::new();
    let moto = Moto::start(&w.path("."));
    let cp = w.control_plane();
    let net = moto.aws(&["setup-network"]);
    let mut a = w.aws_agent_config("agent", &moto.url(), &net);
    assert!(a.enroll(&cp.token("15m"), &cp.url).status.success());
    let mut env: Vec<(&str, &str)> = CREDS.to_vec();
    env.push(("AWS_ENDPOINT_URL_EKS", "http://127.0.0.1:9"));
    a.start_with_env(&env);
    wait_for("the agent to stop", Duration::from_secs(20), || {
        (!a.is_running()).then_some(())
    });
    let log = a.log();
    assert!(
        log.contains("AWS_ENDPOINT_URL_EKS is set") && log.contains("provider.aws.endpoint_url"),
        "{log}"
    );
}
