//! AWS SDK errors mapped onto the provider error taxonomy, naming the IAM
//! action on a denial and keeping the AWS request id for the audit log.

use std::error::Error as StdError;

use aws_sdk_eks::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_eks::operation::RequestId;
use byoc_provider::ProviderError;

/// Error codes the SDK itself treats as throttling (aws-runtime's list).
const THROTTLING: &[&str] = &[
    "Throttling",
    "ThrottlingException",
    "ThrottledException",
    "RequestThrottledException",
    "TooManyRequestsException",
    "ProvisionedThroughputExceededException",
    "TransactionInProgressException",
    "RequestLimitExceeded",
    "BandwidthLimitExceeded",
    "RequestThrottled",
    "SlowDown",
    "PriorRequestNotComplete",
    "EC2ThrottledException",
];

const DENIED: &[&str] = &[
    "AccessDenied",
    "AccessDeniedException",
    "UnauthorizedOperation",
    "UnrecognizedClientException",
    "InvalidClientTokenId",
    "AuthFailure",
];

const QUOTA: &[&str] = &[
    "LimitExceededException",
    "ResourceLimitExceededException",
    "ServiceQuotaExceededException",
    "InstanceQuotaExceeded",
];

/// What a failed call says, with its request id.
pub struct Failed {
    pub error: ProviderError,
    pub request_id: Option<String>,
}

/// Maps `e`, from a call of IAM action `action` (e.g. `eks:CreateCluster`).
pub fn map<E>(action: &str, e: &SdkError<E, aws_sdk_eks::config::http::HttpResponse>) -> Failed
where
    E: ProvideErrorMetadata + StdError + 'static,
{
    let request_id = e.request_id().map(str::to_string);
    let error = match e {
        SdkError::ServiceError(ctx) => {
            let code = ctx.err().code().unwrap_or_default();
            let message = ctx.err().message().unwrap_or_default().to_string();
            let status = ctx.raw().status().as_u16();
            classify(action, code, &message, status)
        }
        SdkError::TimeoutError(_) | SdkError::DispatchFailure(_) | SdkError::ResponseError(_) => {
            ProviderError::Transient {
                message: format!("{action}: {}", chain(e)),
            }
        }
        _ => ProviderError::Transient {
            message: format!("{action}: {}", chain(e)),
        },
    };
    Failed { error, request_id }
}

/// The taxonomy entry for an AWS error code and HTTP status. A 403 without a
/// code (the body of some emulators' denials does not parse) is still a denial.
pub fn classify(action: &str, code: &str, message: &str, status: u16) -> ProviderError {
    if THROTTLING.contains(&code) || status == 429 {
        ProviderError::Throttled { retry_after: None }
    } else if DENIED.contains(&code) || status == 403 {
        ProviderError::PermissionDenied {
            permission: action.to_string(),
        }
    } else if QUOTA.contains(&code) {
        ProviderError::QuotaExceeded {
            quota: format!("{action}: {message}"),
        }
    } else if code == "ResourceInUseException" || status == 409 {
        ProviderError::Conflict {
            message: format!("{action}: {message}"),
        }
    } else if code == "ResourceNotFoundException" || status == 404 {
        ProviderError::NotFound {
            what: format!("{action}: {message}"),
        }
    } else if code == "InvalidParameterException" || code == "InvalidRequestException" {
        ProviderError::invalid("spec", format!("{action}: {message}"))
    } else if status >= 500 {
        ProviderError::Transient {
            message: format!("{action}: HTTP {status} {code} {message}"),
        }
    } else {
        ProviderError::Unsupported {
            message: format!("{action}: HTTP {status} {code} {message}"),
        }
    }
}

/// Whether `e` says the resource does not exist.
pub fn is_not_found<E>(e: &SdkError<E, aws_sdk_eks::config::http::HttpResponse>) -> bool
where
    E: ProvideErrorMetadata,
{
    match e {
        SdkError::ServiceError(ctx) => {
            ctx.err().code() == Some("ResourceNotFoundException") || ctx.raw().status().as_u16() == 404
        }
        _ => false,
    }
}

fn chain(e: &(dyn StdError + 'static)) -> String {
    let mut parts = Vec::new();
    let mut cur = Some(e);
    while let Some(err) = cur {
        let m = err.to_string();
        if !parts.iter().any(|p: &String| p.contains(&m)) {
            parts.push(m);
        }
        cur = err.source();
    }
    parts.join(": ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_map_onto_the_taxonomy_naming_the_action() {
        assert_eq!(
            classify("eks:CreateCluster", "AccessDeniedException", "no", 403),
            ProviderError::PermissionDenied {
                permission: "eks:CreateCluster".into()
            }
        );
        // An emulator's XML denial on a JSON API: no code, still a denial.
        assert_eq!(classify("eks:DescribeCluster", "", "", 403).code(), "permission_denied");
        assert_eq!(
            classify("eks:CreateCluster", "ThrottlingException", "", 400).code(),
            "throttled"
        );
        assert_eq!(classify("eks:CreateCluster", "", "", 429).code(), "throttled");
        assert_eq!(
            classify("eks:DeleteCluster", "ResourceInUseException", "x", 409).code(),
            "conflict"
        );
        assert_eq!(
            classify("eks:CreateCluster", "ResourceLimitExceededException", "x", 400).code(),
            "quota_exceeded"
        );
        assert_eq!(classify("eks:CreateCluster", "", "", 503).code(), "transient");
        assert_eq!(
            classify("eks:CreateCluster", "InvalidParameterException", "bad", 400).code(),
            "invalid_spec"
        );
    }
}
