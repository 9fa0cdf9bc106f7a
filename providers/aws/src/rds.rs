//! RDS PostgreSQL and MySQL: the `database` kind.
//!
//! Each database gets its own DB subnet group on the configured private
//! subnets and its own security group, which lets in the engine's port from the
//! configured cluster security groups only. The master password is managed by
//! RDS in Secrets Manager (`ManageMasterUserPassword`): the agent never
//! generates, sees or sends it, and the outputs carry the secret's ARN only.
//! Deletion protection is on unless the spec turns it off; a delete takes a
//! final snapshot unless the spec says not to; storage never shrinks.

use std::collections::BTreeMap;

use aws_sdk_ec2::types::{
    Filter, IpPermission, ResourceType, SecurityGroup, Tag as Ec2Tag, TagSpecification, UserIdGroupPair,
};
use aws_sdk_rds::types::{DbInstance, Tag};
use byoc_provider::{
    CallContext, Observed, Outputs, ProviderError, ResourceSpec,
    spec::{BackupSpec, DatabaseSize, DatabaseSpec, Engine},
};

use crate::{AwsCloud, TOKEN_TAG, error, request_token, tag_changes, user_tags};

/// The master user RDS creates (its password lives only in Secrets Manager).
const MASTER_USER: &str = "byoc_admin";

fn resource(name: &str) -> String {
    format!("db/{name}")
}

fn subnet_group_name(db: &str) -> String {
    format!("byoc-{db}")
}

fn security_group_name(db: &str) -> String {
    format!("byoc-db-{db}")
}

fn engine_name(e: Engine) -> &'static str {
    match e {
        Engine::Postgres => "postgres",
        Engine::Mysql => "mysql",
    }
}

fn port(e: Engine) -> i32 {
    match e {
        Engine::Postgres => 5432,
        Engine::Mysql => 3306,
    }
}

/// The RDS instance class of a size (Graviton; burstable for the smallest).
pub fn instance_class(s: DatabaseSize) -> &'static str {
    match s {
        DatabaseSize::Small => "db.t4g.medium",
        DatabaseSize::Medium => "db.m7g.large",
        DatabaseSize::Large => "db.m7g.xlarge",
        DatabaseSize::Xlarge => "db.m7g.2xlarge",
    }
}

/// The size of an instance class the agent would choose (any family).
fn size_of(class: &str) -> Option<DatabaseSize> {
    let (family, size) = class.strip_prefix("db.")?.split_once('.')?;
    match size {
        "medium" if family.starts_with('t') => Some(DatabaseSize::Small),
        "large" if !family.starts_with('t') => Some(DatabaseSize::Medium),
        "xlarge" if !family.starts_with('t') => Some(DatabaseSize::Large),
        "2xlarge" if !family.starts_with('t') => Some(DatabaseSize::Xlarge),
        _ => None,
    }
}

/// `desired` if the actual version is it or one of its minors (`16` covers
/// `16.4`), else the actual one.
fn observed_version(actual: &str, desired: &str) -> String {
    if actual == desired || actual.starts_with(&format!("{desired}.")) {
        desired.to_string()
    } else {
        actual.to_string()
    }
}

fn numeric(v: &str) -> Vec<u64> {
    v.split('.').map(|p| p.parse().unwrap_or(0)).collect()
}

/// The database as it is, with changes pending for the maintenance window
/// counted as made (a re-apply does not ask for them again). What RDS cannot
/// say (delete-time and apply-time choices) comes from the desired spec.
fn db_spec(db: &DbInstance, desired: &DatabaseSpec) -> DatabaseSpec {
    let pending = db.pending_modified_values();
    let class = pending
        .and_then(|p| p.db_instance_class())
        .or(db.db_instance_class())
        .unwrap_or_default();
    let storage = pending
        .and_then(|p| p.allocated_storage())
        .or(db.allocated_storage())
        .unwrap_or(0);
    let version = pending
        .and_then(|p| p.engine_version())
        .or(db.engine_version())
        .unwrap_or_default();
    let max = db.max_allocated_storage().unwrap_or(0);
    DatabaseSpec {
        name: db.db_instance_identifier().unwrap_or_default().to_string(),
        engine: if db.engine() == Some("mysql") {
            Engine::Mysql
        } else {
            Engine::Postgres
        },
        version: observed_version(version, &desired.version),
        size: size_of(class).unwrap_or(desired.size),
        storage_gb: u32::try_from(storage).unwrap_or(0),
        max_storage_gb: (max > storage).then(|| u32::try_from(max).unwrap_or(0)),
        high_availability: pending.and_then(|p| p.multi_az()).or(db.multi_az()).unwrap_or(false),
        backups: BackupSpec {
            retention_days: u32::try_from(
                pending
                    .and_then(|p| p.backup_retention_period())
                    .or(db.backup_retention_period())
                    .unwrap_or(0),
            )
            .unwrap_or(0),
            // Compared only when the spec names a window (RDS picks one otherwise).
            window: desired
                .backups
                .window
                .as_ref()
                .and(db.preferred_backup_window().map(str::to_string)),
        },
        deletion_protection: db.deletion_protection().unwrap_or(false),
        final_snapshot: desired.final_snapshot,
        apply_immediately: desired.apply_immediately,
        tags: user_tags(
            db.tag_list()
                .iter()
                .filter_map(|t| Some((t.key.as_ref()?, t.value.as_ref()?))),
        ),
    }
}

fn outputs(db: &DbInstance) -> Outputs {
    let mut endpoints = BTreeMap::new();
    if let Some(e) = db.endpoint() {
        if let Some(a) = e.address() {
            endpoints.insert("host".to_string(), a.to_string());
        }
        if let Some(p) = e.port() {
            endpoints.insert("port".to_string(), p.to_string());
        }
    }
    let mut secret_refs = BTreeMap::new();
    if let Some(arn) = db.master_user_secret().and_then(|s| s.secret_arn()) {
        secret_refs.insert("master_password".to_string(), arn.to_string());
    }
    let mut attributes = BTreeMap::from([
        ("kind".to_string(), "database".to_string()),
        ("engine".to_string(), db.engine().unwrap_or_default().to_string()),
        (
            "engine_version".to_string(),
            db.engine_version().unwrap_or_default().to_string(),
        ),
        (
            "instance_class".to_string(),
            db.db_instance_class().unwrap_or_default().to_string(),
        ),
        (
            "storage_gb".to_string(),
            db.allocated_storage().unwrap_or(0).to_string(),
        ),
        (
            "master_username".to_string(),
            db.master_username().unwrap_or_default().to_string(),
        ),
        (
            "deletion_protection".to_string(),
            db.deletion_protection().unwrap_or(false).to_string(),
        ),
    ]);
    if let Some(p) = db.pending_modified_values() {
        let mut pending = Vec::new();
        if p.db_instance_class().is_some() {
            pending.push("instance_class");
        }
        if p.allocated_storage().is_some() {
            pending.push("storage_gb");
        }
        if p.engine_version().is_some() {
            pending.push("version");
        }
        if p.multi_az().is_some() {
            pending.push("high_availability");
        }
        if p.backup_retention_period().is_some() {
            pending.push("backups.retention_days");
        }
        if !pending.is_empty() {
            attributes.insert("pending_until_maintenance_window".into(), pending.join(","));
        }
    }
    Outputs {
        resource_id: db.db_instance_arn().unwrap_or_default().to_string(),
        status: db.db_instance_status().unwrap_or("unknown").to_string(),
        endpoints,
        secret_refs,
        attributes,
    }
}

fn rds_tags(tags: &BTreeMap<String, String>) -> Vec<Tag> {
    tags.iter()
        .map(|(k, v)| Tag::builder().key(k).value(v).build())
        .collect()
}

impl AwsCloud {
    async fn describe_db(&self, ctx: &CallContext<'_>, name: &str) -> Result<Option<DbInstance>, ProviderError> {
        let action = "rds:DescribeDBInstances";
        let req = self.rds.describe_db_instances().db_instance_identifier(name);
        Ok(self
            .found(ctx, action, &resource(name), false, req.send())
            .await?
            .and_then(|out| out.db_instances().first().cloned()))
    }

    pub(crate) async fn observe_database(
        &self,
        ctx: &CallContext<'_>,
        desired: &DatabaseSpec,
    ) -> Result<Option<Observed>, ProviderError> {
        Ok(self.describe_db(ctx, &desired.name).await?.map(|db| Observed {
            spec: ResourceSpec::Database(db_spec(&db, desired)),
            outputs: outputs(&db),
        }))
    }

    pub(crate) async fn apply_database(
        &self,
        ctx: &CallContext<'_>,
        spec: &DatabaseSpec,
    ) -> Result<Outputs, ProviderError> {
        match self.describe_db(ctx, &spec.name).await? {
            None => self.create_db(ctx, spec).await?,
            Some(db) if db.db_instance_status() == Some("deleting") => {
                return Err(ProviderError::Conflict {
                    message: format!("database {} is being deleted; apply again once it is gone", spec.name),
                });
            }
            Some(db) => self.modify_db(ctx, spec, &db).await?,
        }
        let db = self.wait_db_available(ctx, &spec.name).await?;
        Ok(outputs(&db))
    }

    async fn create_db(&self, ctx: &CallContext<'_>, spec: &DatabaseSpec) -> Result<(), ProviderError> {
        let subnet_group = self.ensure_subnet_group(ctx, &spec.name).await?;
        let sg = self.ensure_security_group(ctx, spec).await?;
        let token = request_token(ctx.idempotency_key);
        let mut tags = rds_tags(&spec.tags);
        tags.push(Tag::builder().key(TOKEN_TAG).value(&token).build());
        let req = self
            .rds
            .create_db_instance()
            .db_instance_identifier(&spec.name)
            .engine(engine_name(spec.engine))
            .engine_version(&spec.version)
            .db_instance_class(instance_class(spec.size))
            .allocated_storage(spec.storage_gb as i32)
            .set_max_allocated_storage(spec.max_storage_gb.map(|m| m as i32))
            .storage_type("gp3")
            .storage_encrypted(true)
            .multi_az(spec.high_availability)
            .backup_retention_period(spec.backups.retention_days as i32)
            .set_preferred_backup_window(spec.backups.window.clone())
            .db_subnet_group_name(subnet_group)
            .vpc_security_group_ids(sg)
            .publicly_accessible(false)
            .deletion_protection(spec.deletion_protection)
            .copy_tags_to_snapshot(true)
            .port(port(spec.engine))
            .master_username(MASTER_USER)
            // RDS makes the password and keeps it in Secrets Manager.
            .manage_master_user_password(true)
            .set_tags(Some(tags));
        let action = "rds:CreateDBInstance";
        match self.call(ctx, action, &resource(&spec.name), true, req.send()).await? {
            Ok(_) => Ok(()),
            Err(e) if error::is_exists(&e) => match self.describe_db(ctx, &spec.name).await? {
                // Ours, from before a lost response or a restart.
                Some(db)
                    if db
                        .tag_list()
                        .iter()
                        .any(|t| t.key() == Some(TOKEN_TAG) && t.value() == Some(&token)) =>
                {
                    Ok(())
                }
                _ => Err(ProviderError::Conflict {
                    message: format!(
                        "a database named {} exists that this operation did not create; choose another name",
                        spec.name
                    ),
                }),
            },
            Err(e) => Err(error::map(action, &e).error),
        }
    }

    /// One ModifyDBInstance with what differs, now or in the maintenance
    /// window as the spec says; tags separately. Refuses to shrink storage or
    /// to go back to an older engine version, before any change.
    async fn modify_db(
        &self,
        ctx: &CallContext<'_>,
        spec: &DatabaseSpec,
        db: &DbInstance,
    ) -> Result<(), ProviderError> {
        let now = db_spec(db, spec);
        if spec.storage_gb < now.storage_gb {
            return Err(ProviderError::invalid(
                "database.storage_gb",
                format!(
                    "{} GB is less than the {} GB database {} has: storage never shrinks (make a new database and move the data)",
                    spec.storage_gb, now.storage_gb, spec.name
                ),
            ));
        }
        if spec.version != now.version && numeric(&spec.version) < numeric(&now.version) {
            return Err(ProviderError::invalid(
                "database.version",
                format!(
                    "{} is older than {}, which database {} runs: engine versions only go forward",
                    spec.version, now.version, spec.name
                ),
            ));
        }
        let mut req = self
            .rds
            .modify_db_instance()
            .db_instance_identifier(&spec.name)
            .apply_immediately(spec.apply_immediately);
        let mut changed = false;
        if spec.size != now.size {
            req = req.db_instance_class(instance_class(spec.size));
            changed = true;
        }
        if spec.storage_gb != now.storage_gb {
            req = req.allocated_storage(spec.storage_gb as i32);
            changed = true;
        }
        if spec.max_storage_gb != now.max_storage_gb {
            // Autoscaling off: the maximum is the allocated size.
            req = req.max_allocated_storage(spec.max_storage_gb.unwrap_or(spec.storage_gb) as i32);
            changed = true;
        }
        if spec.version != now.version {
            let major = |v: &str| v.split('.').next().unwrap_or("").to_string();
            req = req
                .engine_version(&spec.version)
                .allow_major_version_upgrade(major(&spec.version) != major(&now.version));
            changed = true;
        }
        if spec.high_availability != now.high_availability {
            req = req.multi_az(spec.high_availability);
            changed = true;
        }
        if spec.backups.retention_days != now.backups.retention_days {
            req = req.backup_retention_period(spec.backups.retention_days as i32);
            changed = true;
        }
        if spec.backups.window != now.backups.window {
            req = req.set_preferred_backup_window(spec.backups.window.clone());
            changed = true;
        }
        if spec.deletion_protection != now.deletion_protection {
            req = req.deletion_protection(spec.deletion_protection);
            changed = true;
        }
        let res = resource(&spec.name);
        if changed {
            self.must(ctx, "rds:ModifyDBInstance", &res, true, req.send()).await?;
        }
        let arn = db.db_instance_arn().unwrap_or_default();
        let (added, removed) = tag_changes(&now.tags, &spec.tags);
        if !added.is_empty() {
            let req = self
                .rds
                .add_tags_to_resource()
                .resource_name(arn)
                .set_tags(Some(rds_tags(&added)));
            self.must(ctx, "rds:AddTagsToResource", &res, true, req.send()).await?;
        }
        if !removed.is_empty() {
            let req = self
                .rds
                .remove_tags_from_resource()
                .resource_name(arn)
                .set_tag_keys(Some(removed));
            self.must(ctx, "rds:RemoveTagsFromResource", &res, true, req.send())
                .await?;
        }
        Ok(())
    }

    async fn wait_db_available(&self, ctx: &CallContext<'_>, name: &str) -> Result<DbInstance, ProviderError> {
        self.wait_for(&format!("database {name} is not available"), || async {
            let Some(db) = self.describe_db(ctx, name).await? else {
                return Err(ProviderError::NotFound {
                    what: format!("database {name} disappeared while it was being changed"),
                });
            };
            match db.db_instance_status() {
                Some("available") => {
                    ctx.hooks
                        .progress("available", &format!("database {name} is available"), Some(100));
                    Ok(Some(db))
                }
                Some(s @ ("failed" | "incompatible-parameters" | "incompatible-network" | "storage-full")) => {
                    Err(ProviderError::Conflict {
                        message: format!("RDS reports database {name} as {s}"),
                    })
                }
                s => {
                    let s = s.unwrap_or("unknown");
                    ctx.hooks.progress(s, &format!("database {name} is {s}"), None);
                    Ok(None)
                }
            }
        })
        .await
    }

    /// The DB subnet group of database `db` on the private subnets (made if absent).
    async fn ensure_subnet_group(&self, ctx: &CallContext<'_>, db: &str) -> Result<String, ProviderError> {
        let name = subnet_group_name(db);
        let res = format!("subgrp/{name}");
        let action = "rds:DescribeDBSubnetGroups";
        let req = self.rds.describe_db_subnet_groups().db_subnet_group_name(&name);
        if self.found(ctx, action, &res, false, req.send()).await?.is_some() {
            return Ok(name);
        }
        let subnets = if self.cfg.database_subnets.is_empty() {
            &self.cfg.subnets
        } else {
            &self.cfg.database_subnets
        };
        if subnets.is_empty() {
            return Err(ProviderError::invalid(
                "provider.aws.database_subnets",
                "databases need private subnets: set provider.aws.database_subnets (or subnets) in agent.toml",
            ));
        }
        let req = self
            .rds
            .create_db_subnet_group()
            .db_subnet_group_name(&name)
            .db_subnet_group_description(format!("byoc-agent: private subnets of database {db}"))
            .set_subnet_ids(Some(subnets.clone()));
        let action = "rds:CreateDBSubnetGroup";
        match self.call(ctx, action, &res, true, req.send()).await? {
            Ok(_) => Ok(name),
            Err(e) if error::is_exists(&e) => Ok(name),
            Err(e) => Err(error::map(action, &e).error),
        }
    }

    async fn find_security_group(
        &self,
        ctx: &CallContext<'_>,
        db: &str,
    ) -> Result<Option<SecurityGroup>, ProviderError> {
        let name = security_group_name(db);
        let vpc = self.cfg.vpc_id.as_deref().unwrap_or_default();
        let req = self
            .ec2
            .describe_security_groups()
            .filters(Filter::builder().name("group-name").values(&name).build())
            .filters(Filter::builder().name("vpc-id").values(vpc).build());
        let out = self
            .must(
                ctx,
                "ec2:DescribeSecurityGroups",
                &format!("security-group/{name}"),
                false,
                req.send(),
            )
            .await?;
        Ok(out.security_groups().first().cloned())
    }

    /// The database's security group: the engine's port, from the configured
    /// cluster security groups only (made, and its rules added, if absent).
    async fn ensure_security_group(&self, ctx: &CallContext<'_>, spec: &DatabaseSpec) -> Result<String, ProviderError> {
        let Some(vpc) = self.cfg.vpc_id.clone() else {
            return Err(ProviderError::invalid(
                "provider.aws.vpc_id",
                "databases need the VPC their security group goes in: set provider.aws.vpc_id in agent.toml",
            ));
        };
        let name = security_group_name(&spec.name);
        let res = format!("security-group/{name}");
        let group = match self.find_security_group(ctx, &spec.name).await? {
            Some(g) => g,
            None => {
                let req = self
                    .ec2
                    .create_security_group()
                    .group_name(&name)
                    .description(format!(
                        "byoc-agent: database {} ({}), from the cluster only",
                        spec.name,
                        engine_name(spec.engine)
                    ))
                    .vpc_id(&vpc)
                    .tag_specifications(
                        TagSpecification::builder()
                            .resource_type(ResourceType::SecurityGroup)
                            .tags(Ec2Tag::builder().key("Name").value(&name).build())
                            .build(),
                    );
                let action = "ec2:CreateSecurityGroup";
                match self.call(ctx, action, &res, true, req.send()).await? {
                    Ok(_) => {}
                    Err(e) if error::is_exists(&e) => {}
                    Err(e) => return Err(error::map(action, &e).error),
                }
                self.find_security_group(ctx, &spec.name)
                    .await?
                    .ok_or_else(|| ProviderError::Transient {
                        message: format!("security group {name} was created but is not visible yet"),
                    })?
            }
        };
        let id = group.group_id().unwrap_or_default().to_string();
        let p = port(spec.engine);
        let missing: Vec<&String> = self
            .cfg
            .security_groups
            .iter()
            .filter(|src| {
                !group.ip_permissions().iter().any(|perm| {
                    perm.from_port() == Some(p)
                        && perm.to_port() == Some(p)
                        && perm
                            .user_id_group_pairs()
                            .iter()
                            .any(|pair| pair.group_id() == Some(src.as_str()))
                })
            })
            .collect();
        if !missing.is_empty() {
            let perm = IpPermission::builder()
                .ip_protocol("tcp")
                .from_port(p)
                .to_port(p)
                .set_user_id_group_pairs(Some(
                    missing
                        .iter()
                        .map(|src| {
                            UserIdGroupPair::builder()
                                .group_id(*src)
                                .description("byoc-agent: cluster")
                                .build()
                        })
                        .collect(),
                ))
                .build();
            let req = self
                .ec2
                .authorize_security_group_ingress()
                .group_id(&id)
                .ip_permissions(perm);
            let action = "ec2:AuthorizeSecurityGroupIngress";
            match self.call(ctx, action, &res, true, req.send()).await? {
                Ok(_) => {}
                Err(e) if error::is_exists(&e) => {}
                Err(e) => return Err(error::map(action, &e).error),
            }
        }
        Ok(id)
    }

    pub(crate) async fn delete_database(
        &self,
        ctx: &CallContext<'_>,
        spec: &DatabaseSpec,
    ) -> Result<Outputs, ProviderError> {
        let name = &spec.name;
        let res = resource(name);
        let mut out = Outputs {
            resource_id: res.clone(),
            status: "deleted".into(),
            ..Outputs::default()
        };
        if let Some(db) = self.describe_db(ctx, name).await? {
            if db.db_instance_status() != Some("deleting") {
                if db.deletion_protection() == Some(true) {
                    return Err(ProviderError::Conflict {
                        message: format!(
                            "database {name} has deletion protection on: apply it with deletion_protection = false first, then delete it"
                        ),
                    });
                }
                let mut req = self
                    .rds
                    .delete_db_instance()
                    .db_instance_identifier(name)
                    .delete_automated_backups(false);
                if spec.final_snapshot {
                    // Stable across retries of this operation.
                    let token = request_token(ctx.idempotency_key);
                    let snapshot = format!("{name}-final-{}", &token[..12]);
                    out.attributes.insert("final_snapshot".into(), snapshot.clone());
                    req = req.final_db_snapshot_identifier(snapshot);
                } else {
                    req = req.skip_final_snapshot(true);
                }
                let action = "rds:DeleteDBInstance";
                self.found(ctx, action, &res, true, req.send()).await?;
            }
            self.wait_for(&format!("database {name} is still there"), || async {
                if self.describe_db(ctx, name).await?.is_none() {
                    return Ok(Some(()));
                }
                ctx.hooks
                    .progress("deleting", &format!("database {name} is being deleted"), None);
                Ok(None)
            })
            .await?;
        }
        // What the agent made for the database goes with it.
        if let Some(sg) = self.find_security_group(ctx, name).await? {
            let action = "ec2:DeleteSecurityGroup";
            let req = self
                .ec2
                .delete_security_group()
                .group_id(sg.group_id().unwrap_or_default());
            self.found(
                ctx,
                action,
                &format!("security-group/{}", security_group_name(name)),
                true,
                req.send(),
            )
            .await?;
        }
        let group = subnet_group_name(name);
        let action = "rds:DeleteDBSubnetGroup";
        let req = self.rds.delete_db_subnet_group().db_subnet_group_name(&group);
        self.found(ctx, action, &format!("subgrp/{group}"), true, req.send())
            .await?;
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_and_classes_round_trip() {
        for s in [
            DatabaseSize::Small,
            DatabaseSize::Medium,
            DatabaseSize::Large,
            DatabaseSize::Xlarge,
        ] {
            assert_eq!(size_of(instance_class(s)), Some(s));
        }
        assert_eq!(size_of("db.t3.medium"), Some(DatabaseSize::Small));
        assert_eq!(size_of("db.r6g.large"), Some(DatabaseSize::Medium));
        assert_eq!(size_of("db.x2g.16xlarge"), None);
    }

    #[test]
    fn a_major_version_covers_its_minors() {
        assert_eq!(observed_version("16.4", "16"), "16");
        assert_eq!(observed_version("16.4", "16.4"), "16.4");
        assert_eq!(observed_version("16.4", "17"), "16.4");
        assert_eq!(observed_version("160.1", "16"), "160.1");
        assert!(numeric("15") < numeric("16"));
        assert!(numeric("8.0.39") < numeric("8.4"));
    }
}
