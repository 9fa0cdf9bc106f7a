//! Least privilege: the IAM actions each operation needs, and the policy
//! document `byoc-agent iam-policy --cloud aws` prints.

use serde_json::{Value, json};

/// The IAM actions the provider calls for `kind` and `action` (plan, apply,
/// delete), and those AWS checks on the caller for what the call does on its
/// behalf (passing a role, creating the RDS-managed secret, tagging on create).
pub fn actions(kind: &str, action: &str) -> Vec<&'static str> {
    let nodegroup_apply = [
        "eks:DescribeCluster",
        "eks:DescribeNodegroup",
        "eks:CreateNodegroup",
        "eks:UpdateNodegroupConfig",
        "eks:TagResource",
        "eks:UntagResource",
        // EKS passes the node role to EC2.
        "iam:PassRole",
    ];
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
        ("node_pool" | "sandbox", "plan") => vec!["eks:DescribeNodegroup"],
        ("node_pool", "apply") => nodegroup_apply.to_vec(),
        ("node_pool", "delete") => vec!["eks:DescribeNodegroup", "eks:DeleteNodegroup"],
        ("sandbox", "apply") => {
            let mut v = nodegroup_apply.to_vec();
            v.extend([
                "ec2:DescribeInstanceTypes",
                "ec2:DescribeLaunchTemplates",
                "ec2:CreateLaunchTemplate",
                // EKS reads the template's version when it makes the group.
                "ec2:DescribeLaunchTemplateVersions",
                // Tags given at create (TagSpecifications).
                "ec2:CreateTags",
            ]);
            v
        }
        ("sandbox", "delete") => vec![
            "eks:DescribeNodegroup",
            "eks:DeleteNodegroup",
            "ec2:DescribeLaunchTemplates",
            "ec2:DeleteLaunchTemplate",
        ],
        ("database", "plan") => vec!["rds:DescribeDBInstances"],
        ("database", "apply") => vec![
            "rds:DescribeDBInstances",
            "rds:CreateDBInstance",
            "rds:ModifyDBInstance",
            "rds:AddTagsToResource",
            "rds:RemoveTagsFromResource",
            "rds:DescribeDBSubnetGroups",
            "rds:CreateDBSubnetGroup",
            "ec2:DescribeSecurityGroups",
            "ec2:CreateSecurityGroup",
            "ec2:AuthorizeSecurityGroupIngress",
            "ec2:CreateTags",
            // RDS creates the master password's secret as the caller.
            "secretsmanager:CreateSecret",
            "secretsmanager:TagResource",
        ],
        ("database", "delete") => vec![
            "rds:DescribeDBInstances",
            "rds:DeleteDBInstance",
            // The final snapshot is made as the caller.
            "rds:CreateDBSnapshot",
            "rds:DeleteDBSubnetGroup",
            "ec2:DescribeSecurityGroups",
            "ec2:DeleteSecurityGroup",
        ],
        _ => vec![],
    };
    v.sort_unstable();
    v.dedup();
    v
}

/// Every kind the provider manages.
pub const KINDS: &[&str] = &["cluster", "node_pool", "sandbox", "database"];

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
