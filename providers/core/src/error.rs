//! The provider error taxonomy: what went wrong, in terms the executor can act on.

use std::time::Duration;

/// Every way a provider call can fail. The executor retries [`Throttled`] and
/// [`Transient`] (with backoff, honouring `retry_after`), and reports all other
/// variants to the control plane as they are.
///
/// [`Throttled`]: ProviderError::Throttled
/// [`Transient`]: ProviderError::Transient
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ProviderError {
    /// The spec is not valid; `field` names the offending field and the
    /// message says what is valid.
    #[error("invalid spec: {field}: {message}")]
    InvalidSpec { field: String, message: String },
    /// The resource does not exist (e.g. a node pool's cluster).
    #[error("not found: {what}")]
    NotFound { what: String },
    /// The resource is in a state that forbids the change (being deleted, in use,
    /// or a change that needs replacement).
    #[error("conflict: {message}")]
    Conflict { message: String },
    /// The cloud asked us to slow down.
    #[error("throttled by the cloud{}", retry_hint(.retry_after))]
    Throttled { retry_after: Option<Duration> },
    /// A failure that may succeed on retry (5xx, connection reset, timeout).
    #[error("transient cloud error: {message}")]
    Transient { message: String },
    /// The agent's cloud identity lacks a permission; `permission` names it
    /// (e.g. an IAM action) so the installer can grant it.
    #[error("permission denied: missing {permission}")]
    PermissionDenied { permission: String },
    /// A cloud quota or limit would be exceeded.
    #[error("quota exceeded: {quota}")]
    QuotaExceeded { quota: String },
    /// The provider cannot do this (kind, action or option not supported).
    #[error("unsupported: {message}")]
    Unsupported { message: String },
    /// The agent stopped the call before it was made (the audit log could not
    /// record it, or the operation was cancelled). Nothing was changed by it.
    #[error("stopped by the agent before the cloud call: {message}")]
    Aborted { message: String },
}

fn retry_hint(retry_after: &Option<Duration>) -> String {
    match retry_after {
        Some(d) => format!(" (retry after {} ms)", d.as_millis()),
        None => String::new(),
    }
}

impl ProviderError {
    /// Stable machine-readable code, sent to the control plane as `Problem.code`.
    pub fn code(&self) -> &'static str {
        match self {
            Self::InvalidSpec { .. } => "invalid_spec",
            Self::NotFound { .. } => "not_found",
            Self::Conflict { .. } => "conflict",
            Self::Throttled { .. } => "throttled",
            Self::Transient { .. } => "transient",
            Self::PermissionDenied { .. } => "permission_denied",
            Self::QuotaExceeded { .. } => "quota_exceeded",
            Self::Unsupported { .. } => "unsupported",
            Self::Aborted { .. } => "aborted",
        }
    }

    /// Whether retrying the same call later may succeed.
    pub fn is_retryable(&self) -> bool {
        matches!(self, Self::Throttled { .. } | Self::Transient { .. })
    }

    /// Shorthand for an [`InvalidSpec`](Self::InvalidSpec) error.
    pub fn invalid(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self::InvalidSpec {
            field: field.into(),
            message: message.into(),
        }
    }
}
