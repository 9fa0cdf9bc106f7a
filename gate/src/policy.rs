//! The customer's policy: a TOML file the customer owns, evaluated locally
//! before every operation, after the checks of [`crate::checks`].
//!
//! [`parse`] turns the file's text into a [`Policy`] (pure: no I/O, so a fuzz
//! target can drive it); every error names the line, column and key. Unknown
//! keys are errors. [`Policy::evaluate`] decides one operation: [`Decision::Allow`],
//! [`Decision::Deny`] or [`Decision::NeedsApproval`], always with the stable id of
//! the rule that decided (e.g. `limits.node_pool.max_size`), which the control
//! plane sees in the refusal and the audit log records with the policy's hash.
//!
//! The format, every rule id and the evaluation order are documented in
//! `docs/policy.md`; `examples/policy/` has examples.

mod eval;
mod show;
#[cfg(test)]
mod tests;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use byoc_provider::spec::DatabaseSize;
use serde::Deserialize;
use toml::Spanned;

pub use eval::{Decision, Request};

/// Default approval window: how long an operation waits for `byoc-agent approve`.
pub const DEFAULT_APPROVAL_WINDOW: Duration = Duration::from_secs(3600);
const MIN_APPROVAL_WINDOW: Duration = Duration::from_secs(1);
const MAX_APPROVAL_WINDOW: Duration = Duration::from_secs(7 * 24 * 3600);

/// A policy file that cannot be used. `line` and `column` count from 1 (0 when
/// the position is unknown); `key` is the dotted key at fault (empty when the
/// file is not valid TOML at all).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct PolicyError {
    pub line: usize,
    pub column: usize,
    pub key: String,
    pub message: String,
}

impl std::fmt::Display for PolicyError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "line {}, column {}: ", self.line, self.column)?;
        if !self.key.is_empty() {
            write!(f, "{}: ", self.key)?;
        }
        f.write_str(&self.message)
    }
}

/// What a policy says for one action on one kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Effect {
    Allow,
    Deny,
    /// Runs only after a local `byoc-agent approve`.
    Approve,
}

impl Effect {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Allow => "allow",
            Self::Deny => "deny",
            Self::Approve => "approve",
        }
    }
}

/// A setting and the line of the policy file it came from (None: a default).
#[derive(Debug, Clone, PartialEq)]
pub struct Set<T> {
    pub value: T,
    pub line: Option<usize>,
}

/// A pattern: exact text, where `*` matches any run of characters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pattern(pub String);

/// Numeric limits; absent means no limit beyond the spec's own validation.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Limits {
    pub node_pool_max_size: Option<Set<u32>>,
    pub node_pool_max_disk_gb: Option<Set<u32>>,
    pub node_pool_max_gpu_count: Option<Set<u32>>,
    pub sandbox_max_size: Option<Set<u32>>,
    pub database_max_storage_gb: Option<Set<u32>>,
    pub database_max_size: Option<Set<DatabaseSize>>,
}

/// Resources that may never be deleted.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Protected {
    pub names: Vec<Set<Pattern>>,
    /// Tag key → value pattern.
    pub tags: Vec<(String, Set<Pattern>)>,
    /// Label key → value pattern (node pools and sandboxes carry labels).
    pub labels: Vec<(String, Set<Pattern>)>,
}

/// A parsed, validated policy. [`parse`]`("")` is the default policy.
#[derive(Debug, Clone, PartialEq)]
pub struct Policy {
    /// Named in messages, e.g. "policy.toml line 12".
    pub origin: String,
    pub read_only: Set<bool>,
    pub regions: Option<Set<Vec<Pattern>>>,
    pub instance_types: Option<Set<Vec<Pattern>>>,
    pub gpu_types: Option<Set<Vec<Pattern>>>,
    /// `kinds.<kind>.<action>` as written: kind → action → verdict.
    pub kinds: BTreeMap<(&'static str, &'static str), Set<Effect>>,
    pub limits: Limits,
    pub protected: Protected,
    pub approval_window: Set<Duration>,
}

impl Default for Policy {
    fn default() -> Self {
        Self {
            origin: "policy".into(),
            read_only: Set {
                value: false,
                line: None,
            },
            regions: None,
            instance_types: None,
            gpu_types: None,
            kinds: BTreeMap::new(),
            limits: Limits::default(),
            protected: Protected::default(),
            approval_window: Set {
                value: DEFAULT_APPROVAL_WINDOW,
                line: None,
            },
        }
    }
}

impl Policy {
    /// Names the file the policy came from in messages (its file name only:
    /// messages reach the control plane, the host's paths need not).
    pub fn with_origin(mut self, path: &Path) -> Self {
        if let Some(name) = path.file_name() {
            self.origin = name.to_string_lossy().into_owned();
        }
        self
    }

    /// How long an operation that needs approval waits for one.
    pub fn approval_window(&self) -> Duration {
        self.approval_window.value
    }

    fn at(&self, line: Option<usize>) -> String {
        match line {
            Some(l) => format!("{} line {l}", self.origin),
            None => format!("{} default", self.origin),
        }
    }
}

/// Parses a policy file's text. The entry point for fuzzing: any input gives
/// a `Policy` or a `PolicyError`, never a panic.
pub fn parse(text: &str) -> Result<Policy, PolicyError> {
    let de = toml::de::Deserializer::parse(text).map_err(|e| toml_error(text, &e, String::new()))?;
    let doc: Doc = serde_path_to_error::deserialize(de).map_err(|e| {
        // `Spanned` values show up as a private segment of the path: not a key.
        let key = e
            .path()
            .to_string()
            .split('.')
            .filter(|k| !k.is_empty() && !k.starts_with("$__serde_spanned"))
            .collect::<Vec<_>>()
            .join(".");
        toml_error(text, e.inner(), key)
    })?;
    compile(text, doc)
}

fn toml_error(text: &str, e: &toml::de::Error, key: String) -> PolicyError {
    let (line, column) = e.span().map_or((0, 0), |s| line_col(text, s.start));
    PolicyError {
        line,
        column,
        key,
        message: e.message().trim().to_string(),
    }
}

/// 1-based line and column (in characters) of byte `offset`.
fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let offset = offset.min(text.len());
    let before = text.get(..offset).unwrap_or(text);
    let line = before.matches('\n').count() + 1;
    let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    (line, column)
}

// The file's shape. Every table denies unknown keys; values that need more
// than a type check keep their position (`Spanned`) for the error.

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Doc {
    #[serde(default)]
    read_only: Option<Spanned<bool>>,
    #[serde(default)]
    regions: Option<Spanned<Vec<Spanned<String>>>>,
    #[serde(default)]
    instance_types: Option<Spanned<Vec<Spanned<String>>>>,
    #[serde(default)]
    gpu_types: Option<Spanned<Vec<Spanned<String>>>>,
    #[serde(default)]
    kinds: KindsDoc,
    #[serde(default)]
    limits: LimitsDoc,
    #[serde(default)]
    protected: ProtectedDoc,
    #[serde(default)]
    approvals: ApprovalsDoc,
}

#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct KindsDoc {
    #[serde(default)]
    cluster: KindDoc,
    #[serde(default)]
    node_pool: KindDoc,
    #[serde(default)]
    sandbox: KindDoc,
    #[serde(default)]
    database: KindDoc,
}

#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct KindDoc {
    #[serde(default)]
    plan: Option<Spanned<Effect>>,
    #[serde(default)]
    apply: Option<Spanned<Effect>>,
    #[serde(default)]
    delete: Option<Spanned<Effect>>,
}

#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct LimitsDoc {
    #[serde(default)]
    node_pool: NodePoolLimitsDoc,
    #[serde(default)]
    sandbox: SandboxLimitsDoc,
    #[serde(default)]
    database: DatabaseLimitsDoc,
}

#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct NodePoolLimitsDoc {
    #[serde(default)]
    max_size: Option<Spanned<u32>>,
    #[serde(default)]
    max_disk_gb: Option<Spanned<u32>>,
    #[serde(default)]
    max_gpu_count: Option<Spanned<u32>>,
}

#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct SandboxLimitsDoc {
    #[serde(default)]
    max_size: Option<Spanned<u32>>,
}

#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct DatabaseLimitsDoc {
    #[serde(default)]
    max_storage_gb: Option<Spanned<u32>>,
    #[serde(default)]
    max_size: Option<Spanned<DatabaseSize>>,
}

#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct ProtectedDoc {
    #[serde(default)]
    names: Vec<Spanned<String>>,
    #[serde(default)]
    tags: BTreeMap<String, Spanned<String>>,
    #[serde(default)]
    labels: BTreeMap<String, Spanned<String>>,
}

#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct ApprovalsDoc {
    #[serde(default)]
    window: Option<Spanned<String>>,
}

struct Compiler<'a> {
    text: &'a str,
}

impl Compiler<'_> {
    fn line<T>(&self, s: &Spanned<T>) -> Option<usize> {
        Some(line_col(self.text, s.span().start).0)
    }

    fn error<T>(&self, s: &Spanned<T>, key: &str, message: impl Into<String>) -> PolicyError {
        let (line, column) = line_col(self.text, s.span().start);
        PolicyError {
            line,
            column,
            key: key.to_string(),
            message: message.into(),
        }
    }

    fn set<T: Clone>(&self, s: &Spanned<T>) -> Set<T> {
        Set {
            value: s.get_ref().clone(),
            line: self.line(s),
        }
    }

    fn pattern(&self, s: &Spanned<String>, key: &str) -> Result<Pattern, PolicyError> {
        let p = s.get_ref();
        if p.is_empty() || p.len() > 256 || !p.chars().all(|c| c.is_ascii_graphic()) {
            return Err(self.error(
                s,
                key,
                format!("{p:?} is not a valid pattern: 1-256 printable characters without spaces; `*` matches any run"),
            ));
        }
        Ok(Pattern(p.clone()))
    }

    fn patterns(
        &self,
        list: &Option<Spanned<Vec<Spanned<String>>>>,
        key: &str,
    ) -> Result<Option<Set<Vec<Pattern>>>, PolicyError> {
        let Some(list) = list else { return Ok(None) };
        let value = list
            .get_ref()
            .iter()
            .map(|p| self.pattern(p, key))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Some(Set {
            value,
            line: self.line(list),
        }))
    }

    fn limit(&self, v: &Option<Spanned<u32>>, key: &str) -> Result<Option<Set<u32>>, PolicyError> {
        match v {
            Some(s) if *s.get_ref() == 0 => {
                Err(self.error(s, key, "must be at least 1 (to forbid the kind, use `kinds`)"))
            }
            Some(s) => Ok(Some(self.set(s))),
            None => Ok(None),
        }
    }

    fn protected(
        &self,
        map: &BTreeMap<String, Spanned<String>>,
        key: &str,
    ) -> Result<Vec<(String, Set<Pattern>)>, PolicyError> {
        map.iter()
            .map(|(k, v)| {
                let key = format!("{key}.{k}");
                if k.is_empty() {
                    return Err(self.error(v, &key, "the key must not be empty"));
                }
                Ok((
                    k.clone(),
                    Set {
                        value: self.pattern(v, &key)?,
                        line: self.line(v),
                    },
                ))
            })
            .collect()
    }
}

fn compile(text: &str, doc: Doc) -> Result<Policy, PolicyError> {
    let c = Compiler { text };
    let mut p = Policy::default();
    if let Some(r) = &doc.read_only {
        p.read_only = c.set(r);
    }
    p.regions = c.patterns(&doc.regions, "regions")?;
    p.instance_types = c.patterns(&doc.instance_types, "instance_types")?;
    p.gpu_types = c.patterns(&doc.gpu_types, "gpu_types")?;
    let kinds = [
        ("cluster", &doc.kinds.cluster),
        ("node_pool", &doc.kinds.node_pool),
        ("sandbox", &doc.kinds.sandbox),
        ("database", &doc.kinds.database),
    ];
    for (kind, k) in kinds {
        for (action, v) in [("plan", &k.plan), ("apply", &k.apply), ("delete", &k.delete)] {
            let Some(v) = v else { continue };
            if action == "plan" && *v.get_ref() == Effect::Approve {
                return Err(c.error(
                    v,
                    &format!("kinds.{kind}.plan"),
                    "a plan changes nothing, so it cannot need approval: use \"allow\" or \"deny\"",
                ));
            }
            p.kinds.insert((kind, action), c.set(v));
        }
    }
    let l = &doc.limits;
    p.limits = Limits {
        node_pool_max_size: c.limit(&l.node_pool.max_size, "limits.node_pool.max_size")?,
        node_pool_max_disk_gb: c.limit(&l.node_pool.max_disk_gb, "limits.node_pool.max_disk_gb")?,
        node_pool_max_gpu_count: c.limit(&l.node_pool.max_gpu_count, "limits.node_pool.max_gpu_count")?,
        sandbox_max_size: c.limit(&l.sandbox.max_size, "limits.sandbox.max_size")?,
        database_max_storage_gb: c.limit(&l.database.max_storage_gb, "limits.database.max_storage_gb")?,
        database_max_size: l.database.max_size.as_ref().map(|s| c.set(s)),
    };
    p.protected = Protected {
        names: doc
            .protected
            .names
            .iter()
            .map(|n| {
                Ok(Set {
                    value: c.pattern(n, "protected.names")?,
                    line: c.line(n),
                })
            })
            .collect::<Result<_, PolicyError>>()?,
        tags: c.protected(&doc.protected.tags, "protected.tags")?,
        labels: c.protected(&doc.protected.labels, "protected.labels")?,
    };
    if let Some(w) = &doc.approvals.window {
        let d = humantime::parse_duration(w.get_ref()).map_err(|e| {
            c.error(
                w,
                "approvals.window",
                format!("{:?} is not a duration like \"30m\" or \"2h\": {e}", w.get_ref()),
            )
        })?;
        if !(MIN_APPROVAL_WINDOW..=MAX_APPROVAL_WINDOW).contains(&d) {
            return Err(c.error(w, "approvals.window", "must be between 1s and 7 days"));
        }
        p.approval_window = Set {
            value: d,
            line: c.line(w),
        };
    }
    Ok(p)
}

/// A policy in force: what it says, where it came from, and the SHA-256 of
/// its file's bytes (of no bytes when no file is configured: an empty file and
/// no file mean the same policy).
#[derive(Debug, Clone)]
pub struct Loaded {
    pub policy: Policy,
    pub sha256: String,
    pub path: Option<PathBuf>,
}

#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("cannot read the policy file {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("policy file {path}")]
    Invalid {
        path: PathBuf,
        #[source]
        source: PolicyError,
    },
}

fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, bytes))
}

impl Loaded {
    /// The default policy (no file configured).
    pub fn default_policy() -> Self {
        Self {
            policy: Policy::default(),
            sha256: sha256_hex(b""),
            path: None,
        }
    }

    /// Reads and parses `path` (None: the default policy).
    pub fn load(path: Option<&Path>) -> Result<Self, LoadError> {
        let Some(path) = path else {
            return Ok(Self::default_policy());
        };
        let bytes = std::fs::read(path).map_err(|source| LoadError::Read {
            path: path.into(),
            source,
        })?;
        let invalid = |source| LoadError::Invalid {
            path: path.into(),
            source,
        };
        let text = std::str::from_utf8(&bytes).map_err(|e| {
            invalid(PolicyError {
                line: 0,
                column: 0,
                key: String::new(),
                message: format!("not UTF-8: {e}"),
            })
        })?;
        let policy = parse(text).map_err(invalid)?.with_origin(path);
        Ok(Self {
            policy,
            sha256: sha256_hex(&bytes),
            path: Some(path.into()),
        })
    }
}

/// The policy in force, swapped as a whole on reload: an operation is decided
/// by one policy, never by half of an old one and half of a new one.
#[derive(Debug)]
pub struct PolicyHandle(RwLock<Arc<Loaded>>);

impl PolicyHandle {
    pub fn new(loaded: Loaded) -> Self {
        Self(RwLock::new(Arc::new(loaded)))
    }

    pub fn current(&self) -> Arc<Loaded> {
        self.0.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Runs `f` (a decision and the queuing of its record) with the policy in
    /// force, which cannot be swapped until `f` returns.
    pub fn decide_with<R>(&self, f: impl FnOnce(&Arc<Loaded>) -> R) -> R {
        f(&self.0.read().unwrap_or_else(|e| e.into_inner()))
    }

    /// Runs `record` (queuing the reload's audit record) and, if it succeeds,
    /// swaps in `loaded`, with no decision in between: every decision is
    /// either before the record in the log and by the old policy, or after it
    /// and by the new one.
    pub fn swap_with<T, E>(&self, loaded: Loaded, record: impl FnOnce() -> Result<T, E>) -> Result<T, E> {
        let mut guard = self.0.write().unwrap_or_else(|e| e.into_inner());
        let t = record()?;
        *guard = Arc::new(loaded);
        Ok(t)
    }
}
