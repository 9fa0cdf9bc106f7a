//! The AWS provider through the real agent and control plane, against moto in
//! server mode (a real, independent emulator), checked with boto3's own
//! describe calls rather than the agent's code.

use byoc_tests::moto::Moto;
use byoc_tests::{Agent, ControlPlane, World};
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

fn start(w: &World, cp: &ControlPlane, moto: &Moto) -> Agent {
    let mut a = w.aws_agent_config("agent", &moto.url());
    let out = a.enroll(&cp.token("15m"), &cp.url);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    a.start_with_env(CREDS);
    a.wait_connected(cp);
    a
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
    let agent = start(&w, &cp, &moto);
    let spec = json!({"name": "prod", "kubernetes_version": "1.31", "endpoint_access": "public_and_private", "tags": {"team": "platform"}});

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
    assert_eq!(
        c["resourcesVpcConfig"]["subnetIds"],
        json!(["subnet-0a1b2c3d", "subnet-4e5f6a7b"])
    );
    assert_eq!(c["tags"]["team"], "platform");
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
        c["resourcesVpcConfig"]["subnetIds"],
        json!(["subnet-0a1b2c3d", "subnet-4e5f6a7b"]),
        "the rest of the VPC config is kept"
    );

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
    actions.retain(|a| a != "eks:CreateCluster");
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

    moto.enforce_iam(true);
    run_with(&mut agent, &creds(&full));
    let spec = json!({"name": "least", "kubernetes_version": "1.31"});
    let id = cp.submit_json(&aws_op("apply", "cluster", spec.clone()));
    assert!(cp.watch(&id).success, "{}", agent.log());
    let del = cp.submit_json(&aws_op("delete", "cluster", spec.clone()));
    assert!(cp.watch(&del).success, "{}", agent.log());
    agent.stop();

    run_with(&mut agent, &creds(&less_user));
    let id = cp.submit_json(&aws_op("apply", "cluster", spec));
    assert!(!cp.watch(&id).success);
    let r = &cp.get(&id)["results"][0];
    assert_eq!(r["problem"]["code"], "permission_denied", "{r}");
    assert!(
        r["problem"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("eks:CreateCluster")),
        "the missing action is named: {r}"
    );
    moto.enforce_iam(false);
    assert_eq!(moto.aws(&["describe-cluster", "least"])["absent"], true);
}
