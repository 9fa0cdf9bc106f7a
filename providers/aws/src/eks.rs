//! EKS clusters: observe, create (idempotent), update in place, delete.

use std::collections::{BTreeMap, HashMap};

use aws_sdk_eks::types::{
    Cluster, ClusterStatus, EncryptionConfig, LogSetup, LogType, Logging, Provider as KmsProvider, VpcConfigRequest,
};
use byoc_provider::{
    CallContext, Observed, Outputs, ProviderError, ResourceSpec,
    spec::{ClusterSpec, ControlPlaneLog, EndpointAccess, NetworkSpec},
};

use crate::error;
use crate::{AwsCloud, request_token};

fn resource(name: &str) -> String {
    format!("cluster/{name}")
}

impl AwsCloud {
    pub(crate) async fn describe(&self, ctx: &CallContext<'_>, name: &str) -> Result<Option<Cluster>, ProviderError> {
        let action = "eks:DescribeCluster";
        Ok(self
            .found(
                ctx,
                action,
                &resource(name),
                false,
                self.eks.describe_cluster().name(name).send(),
            )
            .await?
            .and_then(|out| out.cluster))
    }

    /// The cluster as it is. Its subnets are part of the observed spec only
    /// when the desired spec names subnets (otherwise they are the agent's
    /// defaults, not a difference).
    pub(crate) async fn observe_cluster(
        &self,
        ctx: &CallContext<'_>,
        desired: &ClusterSpec,
    ) -> Result<Option<Observed>, ProviderError> {
        Ok(self.describe(ctx, &desired.name).await?.map(|c| {
            let mut o = observed(&c);
            if desired.network.is_none()
                && let ResourceSpec::Cluster(s) = &mut o.spec
            {
                s.network = None;
            }
            o
        }))
    }

    pub(crate) async fn apply_cluster(
        &self,
        ctx: &CallContext<'_>,
        spec: &ClusterSpec,
    ) -> Result<Outputs, ProviderError> {
        let current = self.describe(ctx, &spec.name).await?;
        let token = request_token(ctx.idempotency_key);
        match current {
            None => self.create(ctx, spec, &token).await?,
            Some(c) if c.status == Some(ClusterStatus::Deleting) => {
                return Err(ProviderError::Conflict {
                    message: format!("cluster {} is being deleted; apply again once it is gone", spec.name),
                });
            }
            Some(c) => self.update(ctx, spec, &c).await?,
        }
        self.wait_active(ctx, &spec.name).await
    }

    async fn create(&self, ctx: &CallContext<'_>, spec: &ClusterSpec, token: &str) -> Result<(), ProviderError> {
        let subnets = match &spec.network {
            Some(n) if !n.subnets.is_empty() => n.subnets.clone(),
            _ => self.cfg.subnets.clone(),
        };
        if subnets.is_empty() {
            return Err(ProviderError::invalid(
                "network.subnets",
                "no subnets: name them in the spec, or set provider.aws.subnets in agent.toml",
            ));
        }
        let (public, private) = access(spec.endpoint_access);
        let vpc = VpcConfigRequest::builder()
            .set_subnet_ids(Some(subnets))
            .set_security_group_ids(Some(self.cfg.security_groups.clone()))
            .endpoint_public_access(public)
            .endpoint_private_access(private)
            .build();
        let tags: HashMap<String, String> = spec.tags.clone().into_iter().collect();
        let req = self
            .eks
            .create_cluster()
            .name(&spec.name)
            .version(&spec.kubernetes_version)
            .role_arn(&self.cfg.cluster_role_arn)
            .resources_vpc_config(vpc)
            .set_logging((!spec.control_plane_logs.is_empty()).then(|| logging(&spec.control_plane_logs)))
            .set_encryption_config(spec.secrets_encryption_key.as_ref().map(|key| {
                vec![
                    // EKS encrypts all Kubernetes API data with this key (the
                    // `resources` list is deprecated and no longer selects).
                    EncryptionConfig::builder()
                        .provider(KmsProvider::builder().key_arn(key).build())
                        .build(),
                ]
            }))
            .set_tags((!tags.is_empty()).then_some(tags))
            .client_request_token(token);
        let action = "eks:CreateCluster";
        match self.call(ctx, action, &resource(&spec.name), true, req.send()).await? {
            Ok(_) => Ok(()),
            Err(e) => {
                let failed = error::map(action, &e);
                if !matches!(failed.error, ProviderError::Conflict { .. }) {
                    return Err(failed.error);
                }
                // Exists: ours if it carries this operation's token (a lost
                // response, a restart); otherwise someone else's.
                match self.describe(ctx, &spec.name).await? {
                    Some(c) if c.client_request_token.as_deref() == Some(token) => Ok(()),
                    _ => Err(ProviderError::Conflict {
                        message: format!(
                            "a cluster named {} exists that this operation did not create; choose another name or adopt it explicitly",
                            spec.name
                        ),
                    }),
                }
            }
        }
    }

    /// In place: version, endpoint access, tags. Subnets need a replacement,
    /// which the executor refuses before this is reached.
    async fn update(&self, ctx: &CallContext<'_>, spec: &ClusterSpec, c: &Cluster) -> Result<(), ProviderError> {
        let now = observed_spec(c);
        if now.endpoint_access != spec.endpoint_access {
            let (public, private) = access(spec.endpoint_access);
            let current = c.resources_vpc_config.as_ref();
            // The whole VPC config, not just the flags: some implementations
            // replace it as a whole.
            let vpc = VpcConfigRequest::builder()
                .set_subnet_ids(current.map(|v| v.subnet_ids().to_vec()))
                .set_security_group_ids(current.map(|v| v.security_group_ids().to_vec()))
                .endpoint_public_access(public)
                .endpoint_private_access(private)
                .build();
            let req = self
                .eks
                .update_cluster_config()
                .name(&spec.name)
                .resources_vpc_config(vpc);
            let action = "eks:UpdateClusterConfig";
            self.must(ctx, action, &resource(&spec.name), true, req.send()).await?;
        }
        if now.control_plane_logs != spec.control_plane_logs {
            // One update type per call (AWS's rule): wait for the one before.
            if now.endpoint_access != spec.endpoint_access {
                self.wait_active(ctx, &spec.name).await?;
            }
            let req = self
                .eks
                .update_cluster_config()
                .name(&spec.name)
                .logging(logging(&spec.control_plane_logs));
            let action = "eks:UpdateClusterConfig";
            self.must(ctx, action, &resource(&spec.name), true, req.send()).await?;
            self.wait_active(ctx, &spec.name).await?;
        }
        if now.kubernetes_version != spec.kubernetes_version {
            let req = self
                .eks
                .update_cluster_version()
                .name(&spec.name)
                .version(&spec.kubernetes_version);
            let action = "eks:UpdateClusterVersion";
            self.must(ctx, action, &resource(&spec.name), true, req.send()).await?;
        }
        let arn = c.arn.as_deref().unwrap_or_default();
        self.sync_eks_tags(ctx, &resource(&spec.name), arn, &now.tags, &spec.tags)
            .await?;
        Ok(())
    }

    async fn wait_active(&self, ctx: &CallContext<'_>, name: &str) -> Result<Outputs, ProviderError> {
        self.wait_for(&format!("cluster {name} is not ACTIVE"), || async {
            let Some(c) = self.describe(ctx, name).await? else {
                return Err(ProviderError::NotFound {
                    what: format!("cluster {name} disappeared while it was being created"),
                });
            };
            match c.status {
                Some(ClusterStatus::Active) => {
                    ctx.hooks
                        .progress("active", &format!("cluster {name} is ACTIVE"), Some(100));
                    Ok(Some(observed(&c).outputs))
                }
                Some(ClusterStatus::Failed) => Err(ProviderError::Conflict {
                    message: format!("EKS reports cluster {name} as FAILED"),
                }),
                ref s => {
                    let s = s.as_ref().map_or("UNKNOWN", |s| s.as_str());
                    ctx.hooks
                        .progress(&s.to_ascii_lowercase(), &format!("cluster {name} is {s}"), None);
                    Ok(None)
                }
            }
        })
        .await
    }

    pub(crate) async fn delete_cluster(&self, ctx: &CallContext<'_>, name: &str) -> Result<Outputs, ProviderError> {
        let Some(c) = self.describe(ctx, name).await? else {
            return Ok(gone(name));
        };
        if c.status != Some(ClusterStatus::Deleting) {
            let list = "eks:ListNodegroups";
            let req = self.eks.list_nodegroups().cluster_name(name);
            let groups = self.must(ctx, list, &resource(name), false, req.send()).await?;
            if !groups.nodegroups().is_empty() {
                return Err(ProviderError::Conflict {
                    message: format!(
                        "cluster {name} still has node groups ({}): delete them first",
                        groups.nodegroups().join(", ")
                    ),
                });
            }
            let action = "eks:DeleteCluster";
            let req = self.eks.delete_cluster().name(name);
            if self
                .found(ctx, action, &resource(name), true, req.send())
                .await?
                .is_none()
            {
                return Ok(gone(name));
            }
        }
        self.wait_for(&format!("cluster {name} is still there"), || async {
            if self.describe(ctx, name).await?.is_none() {
                return Ok(Some(()));
            }
            ctx.hooks
                .progress("deleting", &format!("cluster {name} is being deleted"), None);
            Ok(None)
        })
        .await?;
        Ok(gone(name))
    }
}

fn access(a: EndpointAccess) -> (bool, bool) {
    match a {
        EndpointAccess::Private => (false, true),
        EndpointAccess::Public => (true, false),
        EndpointAccess::PublicAndPrivate => (true, true),
    }
}

const LOG_TYPES: [(ControlPlaneLog, LogType); 5] = [
    (ControlPlaneLog::Api, LogType::Api),
    (ControlPlaneLog::Audit, LogType::Audit),
    (ControlPlaneLog::Authenticator, LogType::Authenticator),
    (ControlPlaneLog::ControllerManager, LogType::ControllerManager),
    (ControlPlaneLog::Scheduler, LogType::Scheduler),
];

/// The logging setup that turns on exactly `on`, and off every other type.
fn logging(on: &std::collections::BTreeSet<ControlPlaneLog>) -> Logging {
    let (enabled, disabled): (Vec<_>, Vec<_>) = LOG_TYPES.iter().partition(|(l, _)| on.contains(l));
    let setup = |types: Vec<&(ControlPlaneLog, LogType)>, on: bool| {
        (!types.is_empty()).then(|| {
            LogSetup::builder()
                .set_types(Some(types.into_iter().map(|(_, t)| t.clone()).collect()))
                .enabled(on)
                .build()
        })
    };
    Logging::builder()
        .set_cluster_logging(Some(
            [setup(enabled, true), setup(disabled, false)]
                .into_iter()
                .flatten()
                .collect(),
        ))
        .build()
}

fn observed_spec(c: &Cluster) -> ClusterSpec {
    let vpc = c.resources_vpc_config.as_ref();
    let public = vpc.is_some_and(|v| v.endpoint_public_access);
    let private = vpc.is_some_and(|v| v.endpoint_private_access);
    let endpoint_access = match (public, private) {
        (true, true) => EndpointAccess::PublicAndPrivate,
        (true, false) => EndpointAccess::Public,
        _ => EndpointAccess::Private,
    };
    let subnets: Vec<String> = vpc.map(|v| v.subnet_ids().to_vec()).unwrap_or_default();
    ClusterSpec {
        name: c.name.clone().unwrap_or_default(),
        kubernetes_version: c.version.clone().unwrap_or_default(),
        endpoint_access,
        network: (!subnets.is_empty()).then(|| NetworkSpec {
            vpc: vpc.and_then(|v| v.vpc_id.clone()),
            subnets,
        }),
        control_plane_logs: c
            .logging()
            .map(|l| {
                l.cluster_logging()
                    .iter()
                    .filter(|s| s.enabled() == Some(true))
                    .flat_map(|s| s.types())
                    .filter_map(|t| LOG_TYPES.iter().find(|(_, lt)| lt == t).map(|(l, _)| *l))
                    .collect()
            })
            .unwrap_or_default(),
        secrets_encryption_key: c
            .encryption_config()
            .iter()
            .find_map(|e| e.provider().and_then(|p| p.key_arn()).map(str::to_string)),
        tags: c
            .tags
            .as_ref()
            .map(|t| t.iter().map(|(k, v)| (k.clone(), v.clone())).collect())
            .unwrap_or_default(),
    }
}

fn observed(c: &Cluster) -> Observed {
    let mut endpoints = BTreeMap::new();
    if let Some(e) = &c.endpoint {
        endpoints.insert("api".to_string(), e.clone());
    }
    let mut attributes = BTreeMap::new();
    attributes.insert("kind".to_string(), "cluster".to_string());
    if let Some(v) = &c.version {
        attributes.insert("kubernetes_version".to_string(), v.clone());
    }
    Observed {
        spec: ResourceSpec::Cluster(observed_spec(c)),
        outputs: Outputs {
            resource_id: c.arn.clone().unwrap_or_default(),
            status: c
                .status
                .as_ref()
                .map_or("unknown".into(), |s| s.as_str().to_ascii_lowercase()),
            endpoints,
            secret_refs: BTreeMap::new(),
            attributes,
        },
    }
}

fn gone(name: &str) -> Outputs {
    Outputs {
        resource_id: format!("cluster/{name}"),
        status: "deleted".into(),
        endpoints: BTreeMap::new(),
        secret_refs: BTreeMap::new(),
        attributes: BTreeMap::new(),
    }
}
