//! Field-by-field validation of resource specs. Each rule's error says what is
//! valid, not only what is wrong.

use std::collections::BTreeMap;

use crate::ProviderError;
use crate::spec::*;

/// Largest node count a single pool may ask for.
pub const MAX_POOL_SIZE: u32 = 1000;

pub(crate) fn validate(spec: &ResourceSpec) -> Result<(), ProviderError> {
    match spec {
        ResourceSpec::Cluster(s) => cluster(s),
        ResourceSpec::NodePool(s) => node_pool(s),
        ResourceSpec::Sandbox(s) => sandbox(s),
        ResourceSpec::Database(s) => database(s),
    }
}

fn cluster(s: &ClusterSpec) -> Result<(), ProviderError> {
    name("cluster.name", &s.name)?;
    kubernetes_version("cluster.kubernetes_version", &s.kubernetes_version)?;
    if let Some(net) = &s.network {
        if let Some(vpc) = &net.vpc {
            cloud_id("cluster.network.vpc", vpc)?;
        }
        for (i, subnet) in net.subnets.iter().enumerate() {
            cloud_id(&format!("cluster.network.subnets[{i}]"), subnet)?;
        }
    }
    if let Some(key) = &s.secrets_encryption_key {
        let ok = !key.is_empty() && key.len() <= 2048 && key.bytes().all(|c| c.is_ascii_graphic());
        if !ok {
            return Err(ProviderError::invalid(
                "cluster.secrets_encryption_key",
                format!("{key:?} is not a key id: use 1 to 2048 printable ASCII characters (a KMS key ARN on AWS)"),
            ));
        }
    }
    tags("cluster.tags", &s.tags)
}

fn node_pool(s: &NodePoolSpec) -> Result<(), ProviderError> {
    name("node_pool.name", &s.name)?;
    name("node_pool.cluster", &s.cluster)?;
    instance_type("node_pool.instance_type", &s.instance_type)?;
    sizes("node_pool", s.min_size, s.desired_size, s.max_size)?;
    if !(20..=16_384).contains(&s.disk_gb) {
        return Err(ProviderError::invalid(
            "node_pool.disk_gb",
            format!("{} is out of range: must be between 20 and 16384", s.disk_gb),
        ));
    }
    if let Some(gpu) = &s.gpu {
        cloud_id("node_pool.gpu.type", &gpu.kind)?;
        if !(1..=16).contains(&gpu.count) {
            return Err(ProviderError::invalid(
                "node_pool.gpu.count",
                format!("{} is out of range: must be between 1 and 16", gpu.count),
            ));
        }
    }
    labels("node_pool.labels", &s.labels)?;
    for (i, t) in s.taints.iter().enumerate() {
        label_key(&format!("node_pool.taints[{i}].key"), &t.key)?;
        label_value(&format!("node_pool.taints[{i}].value"), &t.value)?;
    }
    tags("node_pool.tags", &s.tags)
}

fn sandbox(s: &SandboxSpec) -> Result<(), ProviderError> {
    name("sandbox.name", &s.name)?;
    name("sandbox.cluster", &s.cluster)?;
    instance_type("sandbox.instance_type", &s.instance_type)?;
    sizes("sandbox", s.min_size, s.desired_size, s.max_size)?;
    labels("sandbox.labels", &s.labels)?;
    tags("sandbox.tags", &s.tags)
}

fn database(s: &DatabaseSpec) -> Result<(), ProviderError> {
    name("database.name", &s.name)?;
    let version_ok = !s.version.is_empty()
        && s.version.len() <= 16
        && s.version
            .split('.')
            .all(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()));
    if !version_ok {
        return Err(ProviderError::invalid(
            "database.version",
            format!(
                "{:?} is not a version: use digits and dots, e.g. \"16\" or \"8.0\"",
                s.version
            ),
        ));
    }
    if !(20..=65_536).contains(&s.storage_gb) {
        return Err(ProviderError::invalid(
            "database.storage_gb",
            format!("{} is out of range: must be between 20 and 65536", s.storage_gb),
        ));
    }
    if let Some(max) = s.max_storage_gb
        && (max <= s.storage_gb || max > 65_536)
    {
        return Err(ProviderError::invalid(
            "database.max_storage_gb",
            format!(
                "{max} is out of range: must be above storage_gb ({}) and at most 65536, or absent for no autoscaling",
                s.storage_gb
            ),
        ));
    }
    if s.backups.retention_days > 35 {
        return Err(ProviderError::invalid(
            "database.backups.retention_days",
            format!("{} is out of range: must be between 0 and 35", s.backups.retention_days),
        ));
    }
    if let Some(w) = s.backups.window.as_ref().filter(|w| !is_window(w)) {
        return Err(ProviderError::invalid(
            "database.backups.window",
            format!("{w:?} is not a window: use HH:MM-HH:MM in UTC, e.g. \"03:00-04:00\""),
        ));
    }
    tags("database.tags", &s.tags)
}

/// Lower-case DNS label, 1 to 40 characters: every cloud accepts it as a name.
fn name(field: &str, v: &str) -> Result<(), ProviderError> {
    let b = v.as_bytes();
    let ok = !b.is_empty()
        && b.len() <= 40
        && b[0].is_ascii_lowercase()
        && b.iter()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-')
        && b[b.len() - 1] != b'-';
    if ok {
        Ok(())
    } else {
        Err(ProviderError::invalid(
            field,
            format!(
                "{v:?} is not a valid name: use 1 to 40 lower-case letters, digits and '-', \
                 starting with a letter and not ending with '-'"
            ),
        ))
    }
}

fn kubernetes_version(field: &str, v: &str) -> Result<(), ProviderError> {
    let ok = match v.split_once('.') {
        Some(("1", minor)) => minor.parse::<u32>().is_ok_and(|m| (28..=40).contains(&m)),
        _ => false,
    };
    if ok {
        Ok(())
    } else {
        Err(ProviderError::invalid(
            field,
            format!("{v:?} is not a supported Kubernetes version: use major.minor from 1.28 to 1.40, e.g. \"1.31\""),
        ))
    }
}

fn instance_type(field: &str, v: &str) -> Result<(), ProviderError> {
    let ok = !v.is_empty()
        && v.len() <= 64
        && v.bytes()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'.' | b'-' | b'_'));
    if ok {
        Ok(())
    } else {
        Err(ProviderError::invalid(
            field,
            format!(
                "{v:?} is not an instance type: use the cloud's name, e.g. \"m6i.large\", \"e2-standard-4\", \"Standard_D4s_v5\""
            ),
        ))
    }
}

fn cloud_id(field: &str, v: &str) -> Result<(), ProviderError> {
    let ok = !v.is_empty() && v.len() <= 256 && v.bytes().all(|c| c.is_ascii_graphic());
    if ok {
        Ok(())
    } else {
        Err(ProviderError::invalid(
            field,
            format!("{v:?} must be 1 to 256 printable ASCII characters"),
        ))
    }
}

fn sizes(kind: &str, min: u32, desired: u32, max: u32) -> Result<(), ProviderError> {
    if max == 0 || max > MAX_POOL_SIZE {
        return Err(ProviderError::invalid(
            format!("{kind}.max_size"),
            format!("{max} is out of range: must be between 1 and {MAX_POOL_SIZE}"),
        ));
    }
    if min > max {
        return Err(ProviderError::invalid(
            format!("{kind}.min_size"),
            format!("{min} is above max_size {max}: need min_size <= desired_size <= max_size"),
        ));
    }
    if desired < min || desired > max {
        return Err(ProviderError::invalid(
            format!("{kind}.desired_size"),
            format!("{desired} is outside [{min}, {max}]: need min_size <= desired_size <= max_size"),
        ));
    }
    Ok(())
}

fn label_key(field: &str, k: &str) -> Result<(), ProviderError> {
    let (prefix, name) = match k.rsplit_once('/') {
        Some((p, n)) => (Some(p), n),
        None => (None, k),
    };
    let name_ok = !name.is_empty()
        && name.len() <= 63
        && name
            .bytes()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b'.'))
        && name.as_bytes()[0].is_ascii_alphanumeric()
        && name.as_bytes()[name.len() - 1].is_ascii_alphanumeric();
    let prefix_ok = prefix.is_none_or(|p| {
        !p.is_empty()
            && p.len() <= 253
            && p.bytes()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, b'-' | b'.'))
    });
    if name_ok && prefix_ok {
        Ok(())
    } else {
        Err(ProviderError::invalid(
            field,
            format!(
                "{k:?} is not a Kubernetes label key: use an optional DNS prefix and '/', then up to 63 of [A-Za-z0-9-_.], starting and ending alphanumeric"
            ),
        ))
    }
}

fn label_value(field: &str, v: &str) -> Result<(), ProviderError> {
    let ok = v.is_empty()
        || (v.len() <= 63
            && v.bytes()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b'.'))
            && v.as_bytes()[0].is_ascii_alphanumeric()
            && v.as_bytes()[v.len() - 1].is_ascii_alphanumeric());
    if ok {
        Ok(())
    } else {
        Err(ProviderError::invalid(
            field,
            format!(
                "{v:?} is not a Kubernetes label value: up to 63 of [A-Za-z0-9-_.], starting and ending alphanumeric"
            ),
        ))
    }
}

fn labels(field: &str, m: &BTreeMap<String, String>) -> Result<(), ProviderError> {
    for (k, v) in m {
        label_key(&format!("{field}.{k}"), k)?;
        label_value(&format!("{field}.{k}"), v)?;
    }
    Ok(())
}

fn tags(field: &str, m: &BTreeMap<String, String>) -> Result<(), ProviderError> {
    if m.len() > 40 {
        return Err(ProviderError::invalid(
            field,
            format!("{} tags is too many: at most 40", m.len()),
        ));
    }
    for (k, v) in m {
        if k.is_empty() || k.len() > 128 || v.len() > 256 {
            return Err(ProviderError::invalid(
                format!("{field}.{k}"),
                "tag keys must be 1 to 128 characters and values at most 256",
            ));
        }
    }
    Ok(())
}

fn is_window(w: &str) -> bool {
    fn hhmm(s: &str) -> bool {
        match s.split_once(':') {
            Some((h, m)) if h.len() == 2 && m.len() == 2 => {
                h.parse::<u32>().is_ok_and(|h| h < 24) && m.parse::<u32>().is_ok_and(|m| m < 60)
            }
            _ => false,
        }
    }
    matches!(w.split_once('-'), Some((a, b)) if hhmm(a) && hhmm(b))
}

impl ResourceSpec {
    /// Checks every field against what is valid and says what is, on failure.
    pub fn validate(&self) -> Result<(), ProviderError> {
        validate(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(kind: ResourceKind, json: &str) -> (String, String) {
        match ResourceSpec::from_json(kind, json) {
            Err(ProviderError::InvalidSpec { field, message }) => (field, message),
            other => panic!("expected invalid spec, got {other:?}"),
        }
    }

    #[test]
    fn names_the_field_and_what_is_valid() {
        let (field, msg) = err(
            ResourceKind::NodePool,
            r#"{"name":"gpu","cluster":"prod","instance_type":"m6i.large","min_size":1,"max_size":5000,"desired_size":2}"#,
        );
        assert_eq!(field, "node_pool.max_size");
        assert!(msg.contains("between 1 and 1000"), "{msg}");
    }

    #[test]
    fn unknown_and_mistyped_fields_name_their_path() {
        let (field, msg) = err(
            ResourceKind::Cluster,
            r#"{"name":"a","kubernetes_version":"1.31","colour":"red"}"#,
        );
        assert_eq!(field, "cluster.colour");
        assert!(msg.contains("unknown field `colour`"), "{msg}");
        let (field, _) = err(
            ResourceKind::NodePool,
            r#"{"name":"a","cluster":"c","instance_type":"t","min_size":1,"max_size":2,"desired_size":1,"taints":[{"key":"k","effect":"Sometimes"}]}"#,
        );
        assert_eq!(field, "node_pool.taints[0].effect");
    }

    #[test]
    fn trailing_data_after_the_spec_is_refused() {
        let (field, msg) = err(
            ResourceKind::Cluster,
            r#"{"name":"a","kubernetes_version":"1.31"} {"x":1}"#,
        );
        assert_eq!(field, "cluster");
        assert!(msg.contains("trailing"), "{msg}");
    }

    #[test]
    fn names_must_be_dns_labels() {
        let (field, _) = err(
            ResourceKind::Database,
            r#"{"name":"Prod_DB","engine":"postgres","version":"16","size":"small","storage_gb":50}"#,
        );
        assert_eq!(field, "database.name");
    }

    #[test]
    fn valid_specs_pass_with_defaults() {
        let s = ResourceSpec::from_json(
            ResourceKind::Database,
            r#"{"name":"orders","engine":"postgres","version":"16.4","size":"medium","storage_gb":100}"#,
        )
        .expect("valid");
        match s {
            ResourceSpec::Database(d) => {
                assert!(d.deletion_protection, "deletion protection is on by default");
                assert!(d.final_snapshot, "a final snapshot by default");
                assert!(
                    !d.apply_immediately,
                    "changes wait for the maintenance window by default"
                );
                assert_eq!(d.max_storage_gb, None);
                assert_eq!(d.backups.retention_days, 7);
            }
            _ => panic!("wrong kind"),
        }
    }

    #[test]
    fn storage_autoscaling_must_be_above_the_storage() {
        let (field, msg) = err(
            ResourceKind::Database,
            r#"{"name":"orders","engine":"postgres","version":"16","size":"small","storage_gb":100,"max_storage_gb":100}"#,
        );
        assert_eq!(field, "database.max_storage_gb");
        assert!(msg.contains("above storage_gb (100)"), "{msg}");
    }
}
