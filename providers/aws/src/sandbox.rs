//! Sandbox pools on EKS. EKS has no managed sandbox runtime, so a sandbox pool
//! is a dedicated managed node group whose launch template's user data
//! installs the runtime and registers it with containerd:
//!
//! - `gvisor`: gVisor's `runsc` and its containerd shim (checked against the
//!   SHA-512 files gVisor publishes with each release), handler `runsc`;
//! - `kata`: Kata Containers with Cloud Hypervisor, handler `kata-clh`;
//! - `firecracker`: Kata Containers with Firecracker, handler `kata-fc`, on a
//!   devmapper thin pool (Firecracker needs block devices).
//!
//! Kata and Firecracker run each pod in a microVM, which needs hardware
//! virtualization: on EC2 only bare-metal instances have it, so any other type
//! is refused naming the ones that can. The nodes carry a label and a taint
//! that keep everything but sandboxed pods off them, and the launch template
//! requires IMDSv2 with a hop limit of 1, so a pod cannot reach the node's
//! credentials. The typed output `runtime_class` is the RuntimeClass to
//! register in the cluster.

use std::collections::BTreeMap;

use aws_sdk_ec2::types::{
    Filter, InstanceType, LaunchTemplate, LaunchTemplateBlockDeviceMappingRequest, LaunchTemplateEbsBlockDeviceRequest,
    LaunchTemplateHttpTokensState, LaunchTemplateInstanceMetadataOptionsRequest, RequestLaunchTemplateData,
    ResourceType, Tag, TagSpecification, VolumeType,
};
use base64::Engine as _;
use byoc_provider::{
    CallContext, Observed, Outputs, ProviderError, ResourceSpec,
    spec::{Capacity, Isolation, SandboxSpec, Taint, TaintEffect},
};
use serde_json::json;

use crate::nodegroup::{self, Group};
use crate::{AwsCloud, TOKEN_TAG, error, request_token};

/// Node label naming the isolation (also the taint's key).
pub const ISOLATION_LABEL: &str = "sandbox.byoc.dev/isolation";
/// Node label naming the sandbox pool (the RuntimeClass's node selector).
pub const POOL_LABEL: &str = "sandbox.byoc.dev/pool";

/// Root volume of sandbox nodes (GB). The launch template owns the disk.
const ROOT_GB: i32 = 100;

/// gVisor release the user data installs.
pub const GVISOR_RELEASE: &str = "20251110.0";
/// Kata Containers release the user data installs.
pub const KATA_RELEASE: &str = "3.22.0";

fn isolation_name(i: Isolation) -> &'static str {
    match i {
        Isolation::Gvisor => "gvisor",
        Isolation::Kata => "kata",
        Isolation::Firecracker => "firecracker",
    }
}

fn parse_isolation(s: &str) -> Option<Isolation> {
    match s {
        "gvisor" => Some(Isolation::Gvisor),
        "kata" => Some(Isolation::Kata),
        "firecracker" => Some(Isolation::Firecracker),
        _ => None,
    }
}

/// The containerd runtime handler of an isolation.
pub fn handler(i: Isolation) -> &'static str {
    match i {
        Isolation::Gvisor => "runsc",
        Isolation::Kata => "kata-clh",
        Isolation::Firecracker => "kata-fc",
    }
}

/// Whether the isolation runs microVMs (needs a bare-metal instance on EC2).
pub fn needs_virtualization(i: Isolation) -> bool {
    !matches!(i, Isolation::Gvisor)
}

/// The launch template of a sandbox pool.
pub fn launch_template_name(cluster: &str, pool: &str) -> String {
    format!("byoc-sandbox-{cluster}-{pool}")
}

/// The RuntimeClass that sends pods to this pool, as a Kubernetes manifest.
pub fn runtime_class(pool: &str, i: Isolation) -> serde_json::Value {
    let mut rc = json!({
        "apiVersion": "node.k8s.io/v1",
        "kind": "RuntimeClass",
        "metadata": {"name": pool},
        "handler": handler(i),
        "scheduling": {
            "nodeSelector": {POOL_LABEL: pool},
            "tolerations": [{"key": ISOLATION_LABEL, "operator": "Equal", "value": isolation_name(i), "effect": "NoSchedule"}],
        },
    });
    if needs_virtualization(i) {
        // What each microVM costs beside the pod's own requests.
        rc["overhead"] = json!({"podFixed": {"cpu": "250m", "memory": "160Mi"}});
    }
    rc
}

/// The containerd configuration nodeadm merges into the node's defaults.
fn containerd_config(i: Isolation) -> String {
    let h = handler(i);
    match i {
        Isolation::Gvisor => format!(
            "[plugins.\"io.containerd.grpc.v1.cri\".containerd.runtimes.{h}]\n  runtime_type = \"io.containerd.runsc.v1\"\n"
        ),
        Isolation::Kata => format!(
            "[plugins.\"io.containerd.grpc.v1.cri\".containerd.runtimes.{h}]\n  runtime_type = \"io.containerd.kata-clh.v2\"\n  privileged_without_host_devices = true\n  [plugins.\"io.containerd.grpc.v1.cri\".containerd.runtimes.{h}.options]\n    ConfigPath = \"/opt/kata/share/defaults/kata-containers/configuration-clh.toml\"\n"
        ),
        Isolation::Firecracker => format!(
            "[plugins.\"io.containerd.grpc.v1.cri\".containerd.runtimes.{h}]\n  runtime_type = \"io.containerd.kata-fc.v2\"\n  snapshotter = \"devmapper\"\n  privileged_without_host_devices = true\n  [plugins.\"io.containerd.grpc.v1.cri\".containerd.runtimes.{h}.options]\n    ConfigPath = \"/opt/kata/share/defaults/kata-containers/configuration-fc.toml\"\n[plugins.\"io.containerd.snapshotter.v1.devmapper\"]\n  pool_name = \"containerd-pool\"\n  root_path = \"/var/lib/containerd/devmapper\"\n  base_image_size = \"10GB\"\n"
        ),
    }
}

/// The install script each node runs once, before nodeadm starts containerd.
fn install_script(i: Isolation) -> String {
    let common = "#!/bin/bash\nset -euo pipefail\nARCH=$(uname -m)\ncd \"$(mktemp -d)\"\n";
    match i {
        Isolation::Gvisor => format!(
            "{common}URL=https://storage.googleapis.com/gvisor/releases/release/{GVISOR_RELEASE}/$ARCH\n\
             for f in runsc containerd-shim-runsc-v1; do\n  \
             curl -fsSLO --retry 5 \"$URL/$f\"\n  curl -fsSLO --retry 5 \"$URL/$f.sha512\"\n  \
             sha512sum -c \"$f.sha512\"\n  install -m 0755 \"$f\" /usr/local/bin/\ndone\n"
        ),
        Isolation::Kata | Isolation::Firecracker => {
            let mut s = format!(
                "{common}case $ARCH in x86_64) KARCH=amd64;; aarch64) KARCH=arm64;; esac\n\
                 curl -fsSL --retry 5 -o kata.tar.zst https://github.com/kata-containers/kata-containers/releases/download/{KATA_RELEASE}/kata-static-{KATA_RELEASE}-$KARCH.tar.zst\n\
                 tar --zstd -xf kata.tar.zst -C /\n\
                 ln -sf /opt/kata/bin/containerd-shim-kata-v2 /usr/local/bin/containerd-shim-{}-v2\n",
                handler(i)
            );
            if i == Isolation::Firecracker {
                // A thin pool on sparse loop files for containerd's devmapper
                // snapshotter (Firecracker takes block devices only).
                s.push_str(
                    "D=/var/lib/containerd/devmapper; mkdir -p $D\n\
                     truncate -s 100G $D/data; truncate -s 10G $D/meta\n\
                     DATA=$(losetup --find --show $D/data); META=$(losetup --find --show $D/meta)\n\
                     SECTORS=$(($(blockdev --getsize64 -q $DATA) / 512))\n\
                     dmsetup create containerd-pool --table \"0 $SECTORS thin-pool $META $DATA 128 32768 1 skip_block_zeroing\"\n",
                );
            }
            s
        }
    }
}

/// The launch template's user data: a MIME multi-part document with a
/// nodeadm `NodeConfig` (the containerd runtime) and the install script.
pub fn user_data(i: Isolation) -> String {
    let config = containerd_config(i)
        .lines()
        .map(|l| format!("      {l}"))
        .collect::<Vec<_>>()
        .join("\n");
    format!(
        "MIME-Version: 1.0\nContent-Type: multipart/mixed; boundary=\"BYOC-SANDBOX\"\n\n\
         --BYOC-SANDBOX\nContent-Type: application/node.eks.aws\n\n\
         apiVersion: node.eks.aws/v1alpha1\nkind: NodeConfig\nspec:\n  containerd:\n    config: |\n{config}\n\n\
         --BYOC-SANDBOX\nContent-Type: text/x-shellscript; charset=\"us-ascii\"\n\n{}\n--BYOC-SANDBOX--\n",
        install_script(i)
    )
}

/// The sandbox pool as it is: its isolation from the node label the agent
/// set, which a node group the agent did not make as a sandbox lacks.
fn sandbox_spec(ng: &aws_sdk_eks::types::Nodegroup) -> Result<SandboxSpec, ProviderError> {
    let mut labels = nodegroup::observed_labels(ng);
    let name = ng.nodegroup_name().unwrap_or_default().to_string();
    let isolation = labels
        .get(ISOLATION_LABEL)
        .and_then(|s| parse_isolation(s))
        .ok_or_else(|| ProviderError::Conflict {
            message: format!("node group {name} exists but is not a sandbox pool (it has no {ISOLATION_LABEL} label)"),
        })?;
    labels.remove(ISOLATION_LABEL);
    labels.remove(POOL_LABEL);
    let (min_size, max_size, desired_size) = nodegroup::scaling(ng);
    Ok(SandboxSpec {
        name,
        cluster: ng.cluster_name().unwrap_or_default().to_string(),
        isolation,
        instance_type: ng.instance_types().first().cloned().unwrap_or_default(),
        min_size,
        max_size,
        desired_size,
        labels,
        tags: nodegroup::observed_tags(ng),
    })
}

fn sandbox_outputs(ng: &aws_sdk_eks::types::Nodegroup, spec: &SandboxSpec) -> Outputs {
    let mut o = nodegroup::outputs(ng, "sandbox");
    o.attributes
        .insert("isolation".into(), isolation_name(spec.isolation).into());
    o.attributes
        .insert("runtime_handler".into(), handler(spec.isolation).into());
    o.attributes.insert("runtime_class_name".into(), spec.name.clone());
    o.attributes.insert(
        "runtime_class".into(),
        runtime_class(&spec.name, spec.isolation).to_string(),
    );
    o.attributes.insert(
        "launch_template".into(),
        launch_template_name(&spec.cluster, &spec.name),
    );
    o
}

fn lt_resource(name: &str) -> String {
    format!("launch-template/{name}")
}

impl AwsCloud {
    pub(crate) async fn observe_sandbox(
        &self,
        ctx: &CallContext<'_>,
        desired: &SandboxSpec,
    ) -> Result<Option<Observed>, ProviderError> {
        let Some(ng) = self.describe_nodegroup(ctx, &desired.cluster, &desired.name).await? else {
            return Ok(None);
        };
        let spec = sandbox_spec(&ng)?;
        let outputs = sandbox_outputs(&ng, &spec);
        Ok(Some(Observed {
            spec: ResourceSpec::Sandbox(spec),
            outputs,
        }))
    }

    pub(crate) async fn apply_sandbox(
        &self,
        ctx: &CallContext<'_>,
        spec: &SandboxSpec,
    ) -> Result<Outputs, ProviderError> {
        if needs_virtualization(spec.isolation) {
            self.check_bare_metal(ctx, spec).await?;
        }
        let (lt_name, version) = self.ensure_launch_template(ctx, spec).await?;
        let mut labels = spec.labels.clone();
        labels.extend(node_labels(&spec.name, spec.isolation));
        let group = Group {
            cluster: &spec.cluster,
            name: &spec.name,
            instance_type: &spec.instance_type,
            capacity: Capacity::OnDemand,
            min: spec.min_size,
            max: spec.max_size,
            desired: spec.desired_size,
            disk_gb: None,
            ami: nodegroup::ami_type(&spec.instance_type, false),
            labels,
            taints: vec![Taint {
                key: ISOLATION_LABEL.into(),
                value: isolation_name(spec.isolation).into(),
                effect: TaintEffect::NoSchedule,
            }],
            tags: &spec.tags,
            launch_template: Some((lt_name, version)),
        };
        let ng = self.ensure_nodegroup(ctx, &group).await?;
        Ok(sandbox_outputs(&ng, spec))
    }

    /// Refuses an instance type without hardware virtualization (not bare
    /// metal), naming the bare-metal types the region offers.
    async fn check_bare_metal(&self, ctx: &CallContext<'_>, spec: &SandboxSpec) -> Result<(), ProviderError> {
        let action = "ec2:DescribeInstanceTypes";
        let res = format!("instance-type/{}", spec.instance_type);
        let out = self
            .must(
                ctx,
                action,
                &res,
                false,
                self.ec2
                    .describe_instance_types()
                    .instance_types(InstanceType::from(spec.instance_type.as_str()))
                    .send(),
            )
            .await
            .map_err(|e| match e {
                ProviderError::InvalidSpec { message, .. } => ProviderError::invalid("sandbox.instance_type", message),
                e => e,
            })?;
        if out.instance_types().first().and_then(|t| t.bare_metal()) == Some(true) {
            return Ok(());
        }
        // What can: every bare-metal type, the same family's first.
        let mut metal = Vec::new();
        let mut next = None;
        loop {
            let page = self
                .must(
                    ctx,
                    action,
                    "instance-type/*",
                    false,
                    self.ec2
                        .describe_instance_types()
                        .filters(Filter::builder().name("bare-metal").values("true").build())
                        .set_next_token(next)
                        .send(),
                )
                .await?;
            metal.extend(
                page.instance_types()
                    .iter()
                    .filter_map(|t| t.instance_type().map(|t| t.as_str().to_string())),
            );
            next = page.next_token().map(str::to_string);
            if next.is_none() {
                break;
            }
        }
        let family = spec.instance_type.split('.').next().unwrap_or("");
        metal.sort_by_key(|t| (t.split('.').next() != Some(family), t.clone()));
        const SHOWN: usize = 12;
        let more = metal.len().saturating_sub(SHOWN);
        Err(ProviderError::invalid(
            "sandbox.instance_type",
            format!(
                "{} cannot run {} sandboxes: microVMs need hardware virtualization, which on EC2 only bare-metal instance types have. Bare-metal types in {}: {}{}",
                spec.instance_type,
                isolation_name(spec.isolation),
                self.cfg.region,
                metal.iter().take(SHOWN).cloned().collect::<Vec<_>>().join(", "),
                if more > 0 {
                    format!(" and {more} more")
                } else {
                    String::new()
                },
            ),
        ))
    }

    async fn describe_launch_template(
        &self,
        ctx: &CallContext<'_>,
        name: &str,
    ) -> Result<Option<LaunchTemplate>, ProviderError> {
        let action = "ec2:DescribeLaunchTemplates";
        let req = self.ec2.describe_launch_templates().launch_template_names(name);
        Ok(self
            .found(ctx, action, &lt_resource(name), false, req.send())
            .await?
            .and_then(|out| out.launch_templates().first().cloned()))
    }

    /// The pool's launch template (made if absent); (name, version).
    async fn ensure_launch_template(
        &self,
        ctx: &CallContext<'_>,
        spec: &SandboxSpec,
    ) -> Result<(String, String), ProviderError> {
        let name = launch_template_name(&spec.cluster, &spec.name);
        let token = request_token(ctx.idempotency_key);
        let version = |lt: &LaunchTemplate| lt.latest_version_number().unwrap_or(1).to_string();
        if let Some(lt) = self.describe_launch_template(ctx, &name).await? {
            return Ok((name, version(&lt)));
        }
        let tag = |k: &str, v: &str| Tag::builder().key(k).value(v).build();
        let mut tags: Vec<Tag> = spec.tags.iter().map(|(k, v)| tag(k, v)).collect();
        tags.push(tag(TOKEN_TAG, &token));
        let data = RequestLaunchTemplateData::builder()
            .user_data(base64::engine::general_purpose::STANDARD.encode(user_data(spec.isolation)))
            .block_device_mappings(
                LaunchTemplateBlockDeviceMappingRequest::builder()
                    .device_name("/dev/xvda")
                    .ebs(
                        LaunchTemplateEbsBlockDeviceRequest::builder()
                            .volume_size(ROOT_GB)
                            .volume_type(VolumeType::Gp3)
                            .encrypted(true)
                            .delete_on_termination(true)
                            .build(),
                    )
                    .build(),
            )
            .metadata_options(
                LaunchTemplateInstanceMetadataOptionsRequest::builder()
                    .http_tokens(LaunchTemplateHttpTokensState::Required)
                    .http_put_response_hop_limit(1)
                    .build(),
            )
            .build();
        let req = self
            .ec2
            .create_launch_template()
            .launch_template_name(&name)
            .launch_template_data(data)
            .tag_specifications(
                TagSpecification::builder()
                    .resource_type(ResourceType::LaunchTemplate)
                    .set_tags(Some(tags))
                    .build(),
            )
            .client_token(&token);
        let action = "ec2:CreateLaunchTemplate";
        match self.call(ctx, action, &lt_resource(&name), true, req.send()).await? {
            Ok(out) => Ok((name, out.launch_template().map_or_else(|| "1".to_string(), &version))),
            Err(e) if error::is_exists(&e) => match self.describe_launch_template(ctx, &name).await? {
                Some(lt)
                    if lt
                        .tags()
                        .iter()
                        .any(|t| t.key() == Some(TOKEN_TAG) && t.value() == Some(&token)) =>
                {
                    Ok((name, version(&lt)))
                }
                _ => Err(ProviderError::Conflict {
                    message: format!("a launch template named {name} exists that this operation did not create"),
                }),
            },
            Err(e) => Err(error::map(action, &e).error),
        }
    }

    pub(crate) async fn delete_sandbox(
        &self,
        ctx: &CallContext<'_>,
        spec: &SandboxSpec,
    ) -> Result<Outputs, ProviderError> {
        if let Some(ng) = self.describe_nodegroup(ctx, &spec.cluster, &spec.name).await? {
            sandbox_spec(&ng)?; // never delete a node group that is not a sandbox pool
        }
        let out = self.delete_nodegroup(ctx, &spec.cluster, &spec.name).await?;
        let name = launch_template_name(&spec.cluster, &spec.name);
        if self.describe_launch_template(ctx, &name).await?.is_some() {
            let action = "ec2:DeleteLaunchTemplate";
            let req = self.ec2.delete_launch_template().launch_template_name(&name);
            self.found(ctx, action, &lt_resource(&name), true, req.send()).await?;
        }
        Ok(out)
    }
}

/// Labels the agent sets on sandbox nodes, beside the spec's.
pub fn node_labels(pool: &str, i: Isolation) -> BTreeMap<String, String> {
    BTreeMap::from([
        (ISOLATION_LABEL.to_string(), isolation_name(i).to_string()),
        (POOL_LABEL.to_string(), pool.to_string()),
    ])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn user_data_registers_the_handler_the_runtime_class_names() {
        for i in [Isolation::Gvisor, Isolation::Kata, Isolation::Firecracker] {
            let ud = user_data(i);
            let rc = runtime_class("pool-a", i);
            let h = rc["handler"].as_str().expect("handler");
            assert!(
                ud.contains(&format!("containerd.runtimes.{h}]")),
                "{i:?}: containerd has no runtime {h}:\n{ud}"
            );
            assert!(ud.starts_with("MIME-Version: 1.0\n"));
            assert!(ud.contains("Content-Type: application/node.eks.aws"));
            assert!(ud.trim_end().ends_with("--BYOC-SANDBOX--"));
            assert_eq!(rc["scheduling"]["nodeSelector"][POOL_LABEL], "pool-a");
            assert_eq!(rc["scheduling"]["tolerations"][0]["key"], ISOLATION_LABEL);
            assert_eq!(rc["overhead"].is_object(), needs_virtualization(i));
        }
        assert!(user_data(Isolation::Gvisor).contains("sha512sum -c"));
        assert!(user_data(Isolation::Firecracker).contains("thin-pool"));
        assert!(!user_data(Isolation::Kata).contains("thin-pool"));
    }
}
