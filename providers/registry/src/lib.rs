//! `byoc-providers`: the one place that knows which clouds exist.
//!
//! Each cloud is a crate implementing [`byoc_provider::Cloud`] (its config
//! type, how it opens, the permissions it needs) and a [`Provider`]; here it
//! is one line of the [`clouds!`] list, behind a cargo feature of the same
//! name. The rest of the agent sees [`ProviderConfig`], [`open`] and
//! [`permissions`] only, so a build without a cloud links none of its SDK.
//!
//! A config that names a cloud this build left out still parses, so that the
//! agent can refuse it with an error naming the feature to turn on
//! ([`RegistryError::NotBuilt`]) rather than "unknown variant".

use std::sync::Arc;

use byoc_provider::{BoxError, Clock, Provider, ResourceKind, TargetRef};
use serde::Deserialize;

/// Why the registry refused a configuration or could not open a provider.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    #[error(
        "provider.{cloud}: this byoc-agent was built without the `{cloud}` cargo feature; build it with `--features {cloud}` (the default build has every cloud: {all})",
        all = NAMES.join(", ")
    )]
    NotBuilt { cloud: &'static str },
    #[error("provider.{provider} serves target.cloud = {provider:?}, not {target:?}")]
    WrongCloud { provider: &'static str, target: String },
    #[error(transparent)]
    Target(#[from] byoc_provider::TargetMismatch),
    #[error("unknown cloud {cloud:?}; this build knows: {}", built().join(", "))]
    Unknown { cloud: String },
    #[error("setting up the {cloud} provider")]
    Open {
        cloud: &'static str,
        #[source]
        source: BoxError,
    },
    #[error("the {cloud} provider opened as {opened:?}: the registry and the provider disagree on its name")]
    Mismatch { cloud: &'static str, opened: &'static str },
}

/// A cloud's `[provider.NAME]` table when this build left that cloud out:
/// its content is not read.
#[derive(Debug, Clone)]
pub struct NotBuilt;

impl<'de> Deserialize<'de> for NotBuilt {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        serde::de::IgnoredAny::deserialize(d).map(|_| NotBuilt)
    }
}

/// Declares the clouds: for each, the `ProviderConfig` variant, its feature
/// (the cloud's name) and the type implementing [`byoc_provider::Cloud`].
macro_rules! clouds {
    ($($variant:ident $name:literal => $cloud:ty;)+) => {
        /// `[provider.NAME]` in agent.toml: exactly one cloud.
        #[derive(Debug, Clone, Deserialize)]
        #[serde(deny_unknown_fields, rename_all = "snake_case")]
        pub enum ProviderConfig {
            $(
                #[cfg(feature = $name)]
                $variant(<$cloud as byoc_provider::Cloud>::Config),
                #[cfg(not(feature = $name))]
                $variant(NotBuilt),
            )+
        }

        /// Every cloud the registry knows, built or not.
        pub const NAMES: &[&str] = &[$($name),+];

        /// The clouds this build includes.
        pub fn built() -> Vec<&'static str> {
            [$((cfg!(feature = $name), $name)),+]
                .into_iter()
                .filter_map(|(built, name)| built.then_some(name))
                .collect()
        }

        impl ProviderConfig {
            /// The cloud this configuration names.
            pub fn cloud(&self) -> &'static str {
                match self {
                    $(Self::$variant(_) => $name,)+
                }
            }

            /// Checks the configuration against the agent's target: the cloud
            /// is built in, it is the target's, and its own settings agree.
            pub fn check(&self, target: &TargetRef<'_>) -> Result<(), RegistryError> {
                match self {
                    $(
                        #[cfg(feature = $name)]
                        Self::$variant(cfg) => {
                            if target.cloud != $name {
                                return Err(RegistryError::WrongCloud { provider: $name, target: target.cloud.to_string() });
                            }
                            <$cloud as byoc_provider::Cloud>::check_target(cfg, target)
                                .map_err(RegistryError::Target)
                        }
                        #[cfg(not(feature = $name))]
                        Self::$variant(NotBuilt) => Err(RegistryError::NotBuilt { cloud: $name }),
                    )+
                }
            }
        }

        /// Opens the provider `cfg` names, on the agent's clock.
        pub async fn open(cfg: &ProviderConfig, clock: Arc<dyn Clock>) -> Result<Arc<dyn Provider>, RegistryError> {
            let (cloud, provider) = match cfg {
                $(
                    #[cfg(feature = $name)]
                    ProviderConfig::$variant(c) => (
                        $name,
                        <$cloud as byoc_provider::Cloud>::open(c.clone(), clock.clone())
                            .await
                            .map_err(|source| RegistryError::Open { cloud: $name, source })?,
                    ),
                    #[cfg(not(feature = $name))]
                    ProviderConfig::$variant(NotBuilt) => return Err(RegistryError::NotBuilt { cloud: $name }),
                )+
            };
            if provider.cloud() != cloud {
                return Err(RegistryError::Mismatch { cloud, opened: provider.cloud() });
            }
            Ok(provider)
        }

        /// The least-privilege permission document for `cloud` and `kinds`
        /// (`byoc-agent iam-policy`). `Ok(None)`: the cloud needs none.
        pub fn permissions(cloud: &str, kinds: &[ResourceKind]) -> Result<Option<serde_json::Value>, RegistryError> {
            match cloud {
                $(
                    #[cfg(feature = $name)]
                    $name => Ok(<$cloud as byoc_provider::Cloud>::permissions(kinds)),
                    #[cfg(not(feature = $name))]
                    $name => Err(RegistryError::NotBuilt { cloud: $name }),
                )+
                other => Err(RegistryError::Unknown { cloud: other.to_string() }),
            }
        }
    };
}

// The clouds. Adding one: its crate, its feature in Cargo.toml, one line here.
clouds! {
    Sim "sim" => byoc_provider_sim::Sim;
    Aws "aws" => byoc_provider_aws::Aws;
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests;
