//! Least privilege: the IAM actions each operation needs, and the policy
//! document `byoc-agent iam-policy --cloud aws` prints.

use serde_json::{Value, json};

/// The IAM actions the provider calls for `kind` and `action` (plan, apply,
/// delete). Empty for kinds the provider does not manage yet.
pub fn actions(kind: &str, action: &str) -> Vec<&'static str> {
    let mut v: Vec<&'static str> = match (kind, action) {
        ("cluster", "plan") => vec!["eks:DescribeCluster"],
        ("cluster", "apply") => vec![
            "eks:DescribeCluster",
            "eks:CreateCluster",
            "eks:UpdateClusterConfig",
            "eks:UpdateClusterVersion",
            "eks:TagResource",
            "eks:UntagResource",
            // EKS passes the cluster role to the service.
            "iam:PassRole",
        ],
        ("cluster", "delete") => vec!["eks:DescribeCluster", "eks:ListNodegroups", "eks:DeleteCluster"],
        _ => vec![],
    };
    v.sort_unstable();
    v.dedup();
    v
}

/// Every kind the provider manages.
pub const KINDS: &[&str] = &["cluster"];

/// The policy document allowing exactly what `kinds` need for every action.
pub fn policy(kinds: &[&str]) -> Value {
    let mut all: Vec<&str> = kinds
        .iter()
        .flat_map(|k| ["plan", "apply", "delete"].into_iter().flat_map(move |a| actions(k, a)))
        .collect();
    all.sort_unstable();
    all.dedup();
    json!({
        "Version": "2012-10-17",
        "Statement": [{
            "Sid": "ByocAgent",
            "Effect": "Allow",
            "Action": all,
            "Resource": "*",
        }],
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_policy_lists_each_action_once() {
        let p = policy(KINDS);
        let actions = p["Statement"][0]["Action"].as_array().expect("actions");
        assert!(actions.iter().any(|a| a == "eks:CreateCluster"));
        let mut sorted = actions.clone();
        sorted.dedup();
        assert_eq!(&sorted, actions);
        assert!(actions.len() >= 8);
    }
}
