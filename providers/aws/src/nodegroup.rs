//! EKS managed node groups: the `node_pool` kind, and the node group under
//! every `sandbox` pool ([`crate::sandbox`]).
//!
//! Create is idempotent: the node group carries the creating operation's
//! request token as a tag, and a create that finds the name taken adopts the
//! group only if it carries that token. Scaling, labels, taints and tags change
//! in place (UpdateNodegroupConfig, TagResource); instance type, capacity type,
//! disk and GPU need a new group, which the executor refuses before apply.

use std::collections::{BTreeMap, HashMap};

use aws_sdk_eks::types::{
    AmiTypes, CapacityTypes, LaunchTemplateSpecification, Nodegroup, NodegroupScalingConfig, NodegroupStatus,
    Taint as EksTaint, TaintEffect as EksEffect, UpdateLabelsPayload, UpdateTaintsPayload,
};
use byoc_provider::{
    CallContext, Observed, Outputs, ProviderError, ResourceSpec,
    spec::{Capacity, GpuSpec, NodePoolSpec, Taint, TaintEffect},
};

use crate::error;
use crate::{AwsCloud, TOKEN_TAG, request_token, tag_changes, user_tags};

/// What the agent wants of one node group, whichever kind asked for it.
pub(crate) struct Group<'a> {
    pub cluster: &'a str,
    pub name: &'a str,
    pub instance_type: &'a str,
    pub capacity: Capacity,
    pub min: u32,
    pub max: u32,
    pub desired: u32,
    /// None with a launch template (the template owns the disk).
    pub disk_gb: Option<u32>,
    pub ami: AmiTypes,
    pub labels: BTreeMap<String, String>,
    pub taints: Vec<Taint>,
    pub tags: &'a BTreeMap<String, String>,
    /// (name, version)
    pub launch_template: Option<(String, String)>,
}

pub(crate) fn resource(cluster: &str, name: &str) -> String {
    format!("cluster/{cluster}/nodegroup/{name}")
}

/// Whether an instance type is a Graviton (arm64) one: its family's attribute
/// letters, after the generation digit, include `g` (m7g, c6gn, im4gn, g5g).
pub(crate) fn is_arm(instance_type: &str) -> bool {
    let family = instance_type.split('.').next().unwrap_or("");
    let rest = family.trim_start_matches(|c: char| c.is_ascii_lowercase());
    let attrs = rest.trim_start_matches(|c: char| c.is_ascii_digit());
    !rest.is_empty() && attrs.contains('g')
}

/// The EKS-optimized Amazon Linux 2023 AMI type for an instance type.
pub(crate) fn ami_type(instance_type: &str, gpu: bool) -> AmiTypes {
    match (is_arm(instance_type), gpu) {
        (false, false) => AmiTypes::Al2023X8664Standard,
        (false, true) => AmiTypes::Al2023X8664Nvidia,
        (true, false) => AmiTypes::Al2023Arm64Standard,
        (true, true) => AmiTypes::Al2023Arm64Nvidia,
    }
}

fn is_gpu_ami(a: &AmiTypes) -> bool {
    let s = a.as_str();
    s.contains("NVIDIA") || s.contains("GPU") || s.contains("NEURON")
}

fn scaling_config(g: &Group<'_>) -> NodegroupScalingConfig {
    NodegroupScalingConfig::builder()
        .min_size(g.min as i32)
        .max_size(g.max as i32)
        .desired_size(g.desired as i32)
        .build()
}

fn eks_taint(t: &Taint) -> EksTaint {
    EksTaint::builder()
        .key(&t.key)
        .set_value((!t.value.is_empty()).then(|| t.value.clone()))
        .effect(match t.effect {
            TaintEffect::NoSchedule => EksEffect::NoSchedule,
            TaintEffect::PreferNoSchedule => EksEffect::PreferNoSchedule,
            TaintEffect::NoExecute => EksEffect::NoExecute,
        })
        .build()
}

pub(crate) fn observed_taints(ng: &Nodegroup) -> Vec<Taint> {
    ng.taints()
        .iter()
        .filter_map(|t| {
            Some(Taint {
                key: t.key()?.to_string(),
                value: t.value().unwrap_or_default().to_string(),
                effect: match t.effect()? {
                    EksEffect::NoSchedule => TaintEffect::NoSchedule,
                    EksEffect::PreferNoSchedule => TaintEffect::PreferNoSchedule,
                    EksEffect::NoExecute => TaintEffect::NoExecute,
                    _ => return None,
                },
            })
        })
        .collect()
}

pub(crate) fn observed_labels(ng: &Nodegroup) -> BTreeMap<String, String> {
    ng.labels()
        .map(|l| l.iter().map(|(k, v)| (k.clone(), v.clone())).collect())
        .unwrap_or_default()
}

pub(crate) fn observed_tags(ng: &Nodegroup) -> BTreeMap<String, String> {
    ng.tags().map(|t| user_tags(t.iter())).unwrap_or_default()
}

pub(crate) fn scaling(ng: &Nodegroup) -> (u32, u32, u32) {
    let s = ng.scaling_config();
    let n = |v: Option<i32>| v.map_or(0, |v| u32::try_from(v).unwrap_or(0));
    (
        n(s.and_then(|s| s.min_size())),
        n(s.and_then(|s| s.max_size())),
        n(s.and_then(|s| s.desired_size())),
    )
}

fn capacity(ng: &Nodegroup) -> Capacity {
    match ng.capacity_type() {
        Some(CapacityTypes::Spot) => Capacity::Spot,
        _ => Capacity::OnDemand,
    }
}

/// The node pool as it is. Fields AWS cannot say (the GPU model) are taken
/// from the desired spec when the AMI type agrees with it.
fn pool_spec(ng: &Nodegroup, desired: &NodePoolSpec) -> NodePoolSpec {
    let (min_size, max_size, desired_size) = scaling(ng);
    let gpu_ami = ng.ami_type().is_some_and(is_gpu_ami);
    let gpu = match (&desired.gpu, gpu_ami) {
        (Some(g), true) => Some(g.clone()),
        (None, true) => Some(GpuSpec {
            kind: ng.ami_type().map_or("gpu", |a| a.as_str()).to_string(),
            count: 0,
        }),
        (_, false) => None,
    };
    NodePoolSpec {
        name: ng.nodegroup_name().unwrap_or_default().to_string(),
        cluster: ng.cluster_name().unwrap_or_default().to_string(),
        instance_type: ng.instance_types().first().cloned().unwrap_or_default(),
        min_size,
        max_size,
        desired_size,
        capacity: capacity(ng),
        disk_gb: ng
            .disk_size()
            .and_then(|d| u32::try_from(d).ok())
            .unwrap_or(desired.disk_gb),
        gpu,
        labels: observed_labels(ng),
        taints: observed_taints(ng),
        tags: observed_tags(ng),
    }
}

pub(crate) fn outputs(ng: &Nodegroup, kind: &str) -> Outputs {
    let (min, max, desired) = scaling(ng);
    let mut attributes = BTreeMap::from([
        ("kind".to_string(), kind.to_string()),
        ("cluster".to_string(), ng.cluster_name().unwrap_or_default().to_string()),
        (
            "capacity_type".to_string(),
            ng.capacity_type().map_or("", |c| c.as_str()).to_string(),
        ),
        (
            "ami_type".to_string(),
            ng.ami_type().map_or("", |a| a.as_str()).to_string(),
        ),
        ("min_size".to_string(), min.to_string()),
        ("max_size".to_string(), max.to_string()),
        ("desired_size".to_string(), desired.to_string()),
    ]);
    if let Some(v) = ng.version() {
        attributes.insert("kubernetes_version".into(), v.to_string());
    }
    Outputs {
        resource_id: ng.nodegroup_arn().unwrap_or_default().to_string(),
        status: ng
            .status()
            .map_or("unknown".into(), |s| s.as_str().to_ascii_lowercase()),
        endpoints: BTreeMap::new(),
        secret_refs: BTreeMap::new(),
        attributes,
    }
}

impl AwsCloud {
    pub(crate) async fn describe_nodegroup(
        &self,
        ctx: &CallContext<'_>,
        cluster: &str,
        name: &str,
    ) -> Result<Option<Nodegroup>, ProviderError> {
        let action = "eks:DescribeNodegroup";
        let req = self.eks.describe_nodegroup().cluster_name(cluster).nodegroup_name(name);
        Ok(self
            .found(ctx, action, &resource(cluster, name), false, req.send())
            .await?
            .and_then(|out| out.nodegroup))
    }

    pub(crate) async fn observe_node_pool(
        &self,
        ctx: &CallContext<'_>,
        desired: &NodePoolSpec,
    ) -> Result<Option<Observed>, ProviderError> {
        Ok(self
            .describe_nodegroup(ctx, &desired.cluster, &desired.name)
            .await?
            .map(|ng| Observed {
                spec: ResourceSpec::NodePool(pool_spec(&ng, desired)),
                outputs: outputs(&ng, "node_pool"),
            }))
    }

    pub(crate) async fn apply_node_pool(
        &self,
        ctx: &CallContext<'_>,
        spec: &NodePoolSpec,
    ) -> Result<Outputs, ProviderError> {
        let group = Group {
            cluster: &spec.cluster,
            name: &spec.name,
            instance_type: &spec.instance_type,
            capacity: spec.capacity,
            min: spec.min_size,
            max: spec.max_size,
            desired: spec.desired_size,
            disk_gb: Some(spec.disk_gb),
            ami: ami_type(&spec.instance_type, spec.gpu.is_some()),
            labels: spec.labels.clone(),
            taints: spec.taints.clone(),
            tags: &spec.tags,
            launch_template: None,
        };
        let ng = self.ensure_nodegroup(ctx, &group).await?;
        Ok(outputs(&ng, "node_pool"))
    }

    /// Creates the group or brings it to `g` in place, then waits until ACTIVE.
    pub(crate) async fn ensure_nodegroup(
        &self,
        ctx: &CallContext<'_>,
        g: &Group<'_>,
    ) -> Result<Nodegroup, ProviderError> {
        match self.describe_nodegroup(ctx, g.cluster, g.name).await? {
            None => self.create_nodegroup(ctx, g).await?,
            Some(ng) if ng.status() == Some(&NodegroupStatus::Deleting) => {
                return Err(ProviderError::Conflict {
                    message: format!(
                        "node group {} of cluster {} is being deleted; apply again once it is gone",
                        g.name, g.cluster
                    ),
                });
            }
            Some(ng) => self.update_nodegroup(ctx, g, &ng).await?,
        }
        self.wait_nodegroup_active(ctx, g.cluster, g.name).await
    }

    async fn create_nodegroup(&self, ctx: &CallContext<'_>, g: &Group<'_>) -> Result<(), ProviderError> {
        // The group's Kubernetes version is the cluster's (and the cluster
        // must exist, which this says clearly).
        let Some(cluster) = self.describe(ctx, g.cluster).await? else {
            return Err(ProviderError::NotFound {
                what: format!(
                    "cluster {} (of node group {}): apply the cluster first",
                    g.cluster, g.name
                ),
            });
        };
        if self.cfg.subnets.is_empty() {
            return Err(ProviderError::invalid(
                "provider.aws.subnets",
                "node groups need subnets: set provider.aws.subnets in agent.toml",
            ));
        }
        let token = request_token(ctx.idempotency_key);
        let mut tags: HashMap<String, String> = g.tags.clone().into_iter().collect();
        tags.insert(TOKEN_TAG.to_string(), token.clone());
        let req = self
            .eks
            .create_nodegroup()
            .cluster_name(g.cluster)
            .nodegroup_name(g.name)
            .node_role(self.cfg.node_role()?)
            .set_subnets(Some(self.cfg.subnets.clone()))
            .instance_types(g.instance_type)
            .capacity_type(match g.capacity {
                Capacity::OnDemand => CapacityTypes::OnDemand,
                Capacity::Spot => CapacityTypes::Spot,
            })
            .scaling_config(scaling_config(g))
            .set_disk_size(g.disk_gb.map(|d| d as i32))
            .ami_type(g.ami.clone())
            .set_version(cluster.version.clone())
            .set_labels((!g.labels.is_empty()).then(|| g.labels.clone().into_iter().collect()))
            .set_taints((!g.taints.is_empty()).then(|| g.taints.iter().map(eks_taint).collect()))
            .set_launch_template(g.launch_template.as_ref().map(|(name, version)| {
                LaunchTemplateSpecification::builder()
                    .name(name)
                    .version(version)
                    .build()
            }))
            .set_tags(Some(tags))
            .client_request_token(&token);
        let action = "eks:CreateNodegroup";
        match self
            .call(ctx, action, &resource(g.cluster, g.name), true, req.send())
            .await?
        {
            Ok(_) => Ok(()),
            Err(e) if error::is_exists(&e) => {
                // Ours if it carries this operation's token (a lost response,
                // a restart); otherwise someone else's.
                match self.describe_nodegroup(ctx, g.cluster, g.name).await? {
                    Some(ng) if ng.tags().and_then(|t| t.get(TOKEN_TAG)) == Some(&token) => Ok(()),
                    _ => Err(ProviderError::Conflict {
                        message: format!(
                            "a node group named {} exists in cluster {} that this operation did not create; choose another name",
                            g.name, g.cluster
                        ),
                    }),
                }
            }
            Err(e) => Err(error::map(action, &e).error),
        }
    }

    /// Scaling, labels and taints in one UpdateNodegroupConfig; tags with
    /// TagResource / UntagResource. Nothing is sent for what already matches.
    async fn update_nodegroup(
        &self,
        ctx: &CallContext<'_>,
        g: &Group<'_>,
        ng: &Nodegroup,
    ) -> Result<(), ProviderError> {
        let res = resource(g.cluster, g.name);
        let mut req = self
            .eks
            .update_nodegroup_config()
            .cluster_name(g.cluster)
            .nodegroup_name(g.name);
        let mut changed = false;
        if scaling(ng) != (g.min, g.max, g.desired) {
            req = req.scaling_config(scaling_config(g));
            changed = true;
        }
        let labels = observed_labels(ng);
        let add: HashMap<String, String> = g
            .labels
            .iter()
            .filter(|(k, v)| labels.get(*k) != Some(v))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        let remove: Vec<String> = labels.keys().filter(|k| !g.labels.contains_key(*k)).cloned().collect();
        if !add.is_empty() || !remove.is_empty() {
            req = req.labels(
                UpdateLabelsPayload::builder()
                    .set_add_or_update_labels((!add.is_empty()).then_some(add))
                    .set_remove_labels((!remove.is_empty()).then_some(remove))
                    .build(),
            );
            changed = true;
        }
        let taints = observed_taints(ng);
        let add: Vec<EksTaint> = g.taints.iter().filter(|t| !taints.contains(t)).map(eks_taint).collect();
        let remove: Vec<EksTaint> = taints
            .iter()
            // A taint is named by key and effect: one whose value changes is
            // updated by the add, not removed.
            .filter(|t| !g.taints.iter().any(|d| d.key == t.key && d.effect == t.effect))
            .map(eks_taint)
            .collect();
        if !add.is_empty() || !remove.is_empty() {
            req = req.taints(
                UpdateTaintsPayload::builder()
                    .set_add_or_update_taints((!add.is_empty()).then_some(add))
                    .set_remove_taints((!remove.is_empty()).then_some(remove))
                    .build(),
            );
            changed = true;
        }
        if changed {
            self.must(ctx, "eks:UpdateNodegroupConfig", &res, true, req.send())
                .await?;
        }
        let arn = ng.nodegroup_arn().unwrap_or_default();
        self.sync_eks_tags(ctx, &res, arn, &observed_tags(ng), g.tags).await
    }

    /// Brings an EKS resource's user tags to `desired` (the token tag stays).
    pub(crate) async fn sync_eks_tags(
        &self,
        ctx: &CallContext<'_>,
        res: &str,
        arn: &str,
        now: &BTreeMap<String, String>,
        desired: &BTreeMap<String, String>,
    ) -> Result<(), ProviderError> {
        let (added, removed) = tag_changes(now, desired);
        if !added.is_empty() {
            let req = self
                .eks
                .tag_resource()
                .resource_arn(arn)
                .set_tags(Some(added.into_iter().collect()));
            self.must(ctx, "eks:TagResource", res, true, req.send()).await?;
        }
        if !removed.is_empty() {
            let req = self.eks.untag_resource().resource_arn(arn).set_tag_keys(Some(removed));
            self.must(ctx, "eks:UntagResource", res, true, req.send()).await?;
        }
        Ok(())
    }

    async fn wait_nodegroup_active(
        &self,
        ctx: &CallContext<'_>,
        cluster: &str,
        name: &str,
    ) -> Result<Nodegroup, ProviderError> {
        self.wait_for(
            &format!("node group {name} of cluster {cluster} is not ACTIVE"),
            || async {
                let Some(ng) = self.describe_nodegroup(ctx, cluster, name).await? else {
                    return Err(ProviderError::NotFound {
                        what: format!("node group {name} of cluster {cluster} disappeared while it was being changed"),
                    });
                };
                match ng.status() {
                    Some(NodegroupStatus::Active) => {
                        ctx.hooks.progress(
                            "active",
                            &format!("node group {name} of cluster {cluster} is ACTIVE"),
                            Some(100),
                        );
                        Ok(Some(ng))
                    }
                    Some(s @ (NodegroupStatus::CreateFailed | NodegroupStatus::Degraded)) => {
                        let issues: Vec<String> = ng
                            .health()
                            .map(|h| {
                                h.issues()
                                    .iter()
                                    .map(|i| {
                                        format!(
                                            "{}: {}",
                                            i.code().map_or("", |c| c.as_str()),
                                            i.message().unwrap_or("")
                                        )
                                    })
                                    .collect()
                            })
                            .unwrap_or_default();
                        Err(ProviderError::Conflict {
                            message: format!(
                                "EKS reports node group {name} of cluster {cluster} as {}{}",
                                s.as_str(),
                                if issues.is_empty() {
                                    String::new()
                                } else {
                                    format!(": {}", issues.join("; "))
                                }
                            ),
                        })
                    }
                    s => {
                        let s = s.map_or("UNKNOWN", |s| s.as_str());
                        ctx.hooks.progress(
                            &s.to_ascii_lowercase(),
                            &format!("node group {name} of cluster {cluster} is {s}"),
                            None,
                        );
                        Ok(None)
                    }
                }
            },
        )
        .await
    }

    /// Deletes the group and waits until it is gone.
    pub(crate) async fn delete_nodegroup(
        &self,
        ctx: &CallContext<'_>,
        cluster: &str,
        name: &str,
    ) -> Result<Outputs, ProviderError> {
        let res = resource(cluster, name);
        let Some(ng) = self.describe_nodegroup(ctx, cluster, name).await? else {
            return Ok(gone(cluster, name));
        };
        if ng.status() != Some(&NodegroupStatus::Deleting) {
            let action = "eks:DeleteNodegroup";
            let req = self.eks.delete_nodegroup().cluster_name(cluster).nodegroup_name(name);
            if self.found(ctx, action, &res, true, req.send()).await?.is_none() {
                return Ok(gone(cluster, name));
            }
        }
        self.wait_for(
            &format!("node group {name} of cluster {cluster} is still there"),
            || async {
                if self.describe_nodegroup(ctx, cluster, name).await?.is_none() {
                    return Ok(Some(()));
                }
                ctx.hooks.progress(
                    "deleting",
                    &format!("node group {name} of cluster {cluster} is being deleted"),
                    None,
                );
                Ok(None)
            },
        )
        .await?;
        Ok(gone(cluster, name))
    }
}

pub(crate) fn gone(cluster: &str, name: &str) -> Outputs {
    Outputs {
        resource_id: resource(cluster, name),
        status: "deleted".into(),
        ..Outputs::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn graviton_types_get_arm_amis_and_gpus_nvidia_ones() {
        for t in ["m7g.large", "c6gn.xlarge", "im4gn.large", "t4g.small", "c6gd.metal"] {
            assert!(is_arm(t), "{t}");
        }
        for t in [
            "m6i.large",
            "g5.xlarge",
            "p5.48xlarge",
            "m5.metal",
            "inf2.xlarge",
            "c5n.large",
        ] {
            assert!(!is_arm(t), "{t}");
        }
        assert_eq!(ami_type("m6i.large", false), AmiTypes::Al2023X8664Standard);
        assert_eq!(ami_type("g5.xlarge", true), AmiTypes::Al2023X8664Nvidia);
        assert_eq!(ami_type("g5g.xlarge", true), AmiTypes::Al2023Arm64Nvidia);
        assert_eq!(ami_type("m7g.large", false), AmiTypes::Al2023Arm64Standard);
    }
}
