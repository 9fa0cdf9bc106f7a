use super::*;

#[derive(Debug, Deserialize)]
struct File {
    provider: ProviderConfig,
}

fn parse(toml_text: &str) -> Result<ProviderConfig, toml::de::Error> {
    toml::from_str::<File>(toml_text).map(|f| f.provider)
}

const fn target<'a>(cloud: &'a str, region: &'a str) -> TargetRef<'a> {
    TargetRef {
        cloud,
        account: "acct-1",
        region,
    }
}

#[cfg(feature = "sim")]
#[test]
fn a_sim_config_serves_only_the_sim_target() {
    let cfg = parse("[provider.sim]\nstate_dir = \"/tmp/x\"\n").unwrap();
    assert_eq!(cfg.cloud(), "sim");
    cfg.check(&target("sim", "r")).unwrap();
    let e = cfg.check(&target("aws", "r")).unwrap_err();
    assert_eq!(e.to_string(), "provider.sim serves target.cloud = \"sim\", not \"aws\"");
}

#[cfg(feature = "aws")]
#[test]
fn an_aws_config_must_name_the_targets_region() {
    let cfg = parse("[provider.aws]\nregion = \"eu-west-1\"\ncluster_role_arn = \"arn:aws:iam::1:role/r\"\n").unwrap();
    assert_eq!(cfg.cloud(), "aws");
    cfg.check(&target("aws", "eu-west-1")).unwrap();
    let e = cfg.check(&target("aws", "us-east-1")).unwrap_err();
    assert_eq!(
        e.to_string(),
        "provider.aws.region \"eu-west-1\" is not target.region \"us-east-1\""
    );
}

#[cfg(not(feature = "aws"))]
#[test]
fn a_cloud_left_out_of_the_build_is_refused_naming_its_feature() {
    // Its table is not read: even settings only the AWS provider knows parse.
    let cfg = parse("[provider.aws]\nregion = \"eu-west-1\"\nanything = 1\n").unwrap();
    assert_eq!(cfg.cloud(), "aws");
    let e = cfg.check(&target("aws", "eu-west-1")).unwrap_err();
    assert!(matches!(e, RegistryError::NotBuilt { cloud: "aws" }), "{e:?}");
    assert!(e.to_string().contains("built without the `aws` cargo feature"), "{e}");
    assert!(e.to_string().contains("--features aws"), "{e}");
    assert!(matches!(
        permissions("aws", &ResourceKind::ALL),
        Err(RegistryError::NotBuilt { cloud: "aws" })
    ));
}

#[test]
fn an_unknown_cloud_is_a_parse_error_listing_the_known_ones() {
    let e = parse("[provider.ibm]\nx = 1\n").unwrap_err().to_string();
    assert!(e.contains("unknown variant `ibm`"), "{e}");
    for name in NAMES {
        assert!(e.contains(name), "{e} names {name}");
    }
    assert!(matches!(
        permissions("ibm", &ResourceKind::ALL),
        Err(RegistryError::Unknown { .. })
    ));
}

#[test]
fn two_clouds_in_one_config_are_refused() {
    assert!(parse("[provider.sim]\nstate_dir = \"/x\"\n[provider.aws]\nregion = \"r\"\n").is_err());
}

#[cfg(feature = "sim")]
#[tokio::test]
async fn the_simulated_cloud_opens_and_needs_no_permissions() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = parse(&format!("[provider.sim]\nstate_dir = {:?}\n", dir.path().join("sim"))).unwrap();
    let p = open(&cfg, std::sync::Arc::new(byoc_provider::SystemClock))
        .await
        .unwrap();
    assert_eq!(p.cloud(), "sim");
    assert!(dir.path().join("sim").is_dir());
    assert_eq!(permissions("sim", &ResourceKind::ALL).unwrap(), None);
}

#[cfg(feature = "aws")]
#[test]
fn aws_permissions_cover_the_kinds_asked_for() {
    let p = permissions("aws", &[ResourceKind::Cluster]).unwrap().unwrap();
    let actions = p["Statement"][0]["Action"].as_array().unwrap();
    assert!(actions.iter().any(|a| a == "eks:CreateCluster"));
    assert!(!actions.iter().any(|a| a == "rds:CreateDBInstance"));
}
