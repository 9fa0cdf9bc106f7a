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

const DENIED: &[&str] = &["AccessDenied", "AccessDeniedException", "UnauthorizedOperation"];

/// Codes saying the credentials or the signature were not accepted.
const CREDENTIALS: &[&str] = &[
    "SignatureDoesNotMatch",
    "IncompleteSignature",
    "InvalidSignatureException",
    "RequestExpired",
    "ExpiredToken",
    "ExpiredTokenException",
    "InvalidClientTokenId",
    "UnrecognizedClientException",
    "AuthFailure",
];

/// The text of the first `<name>` element of an XML error body ("" if none).
fn xml_field(body: &str, name: &str) -> String {
    let open = format!("<{name}>");
    body.split_once(&open)
        .and_then(|(_, rest)| rest.split_once(&format!("</{name}>")))
        .map(|(v, _)| v.trim().to_string())
        .unwrap_or_default()
}

const QUOTA: &[&str] = &[
    "LimitExceededException",
    "ResourceLimitExceededException",
    "ServiceQuotaExceededException",
    "InstanceQuotaExceeded",
    "StorageQuotaExceeded",
    "DBSubnetGroupQuotaExceeded",
    "SnapshotQuotaExceeded",
    "LaunchTemplateLimitExceeded",
    "RulesPerSecurityGroupLimitExceeded",
    "SecurityGroupLimitExceeded",
];

/// The HTTP response type every service client of the SDK shares.
pub type Response = aws_sdk_eks::config::http::HttpResponse;

/// A code saying the resource does not exist, in each service's dialect
/// (EKS `ResourceNotFoundException`, RDS `DBInstanceNotFound`, EC2
/// `InvalidLaunchTemplateName.NotFoundException`, `InvalidGroup.NotFound`).
fn is_not_found_code(code: &str) -> bool {
    code == "ResourceNotFoundException"
        || code.ends_with("NotFound")
        || code.ends_with("NotFoundFault")
        || code.ends_with(".NotFoundException")
}

/// A code saying the resource already exists (a create retried after a lost
/// response, or a name someone else holds).
pub fn is_exists_code(code: &str) -> bool {
    code == "ResourceInUseException" || code.contains("AlreadyExists") || code.ends_with(".Duplicate")
}

/// What a failed call says, with its request id.
pub struct Failed {
    pub error: ProviderError,
    pub request_id: Option<String>,
}

/// Maps `e`, from a call of IAM action `action` (e.g. `eks:CreateCluster`).
pub fn map<E>(action: &str, e: &SdkError<E, Response>) -> Failed
where
    E: ProvideErrorMetadata + StdError + 'static,
{
    let request_id = e.request_id().map(str::to_string);
    let error = match e {
        SdkError::ServiceError(ctx) => {
            let status = ctx.raw().status().as_u16();
            // A body the SDK could not parse for this protocol (an XML error
            // on a JSON API) still names the code.
            let body = ctx
                .raw()
                .body()
                .bytes()
                .map(String::from_utf8_lossy)
                .unwrap_or_default();
            let (code, message) = match ctx.err().code() {
                Some(code) => (code.to_string(), ctx.err().message().unwrap_or_default().to_string()),
                None => (xml_field(&body, "Code"), xml_field(&body, "Message")),
            };
            classify(action, &code, &message, status)
        }
        SdkError::TimeoutError(_) | SdkError::DispatchFailure(_) | SdkError::ResponseError(_) => {
            ProviderError::Transient {
                message: format!("{action}: {}", byoc_errors::chain(e)),
            }
        }
        _ => ProviderError::Transient {
            message: format!("{action}: {}", byoc_errors::chain(e)),
        },
    };
    Failed { error, request_id }
}

/// The taxonomy entry for an AWS error code and HTTP status. A 403 without a
/// code (the body of some emulators' denials does not parse) is still a denial.
pub fn classify(action: &str, code: &str, message: &str, status: u16) -> ProviderError {
    if THROTTLING.contains(&code) || status == 429 {
        ProviderError::Throttled { retry_after: None }
    } else if CREDENTIALS.contains(&code) {
        // Not a missing permission: the request was not accepted as signed
        // by valid credentials (a wrong or expired key, a skewed clock).
        ProviderError::PermissionDenied {
            permission: format!("{action} (AWS did not accept the credentials: {code}: {message})"),
        }
    } else if DENIED.contains(&code) || status == 403 {
        ProviderError::PermissionDenied {
            permission: action.to_string(),
        }
    } else if QUOTA.contains(&code) || code.ends_with("QuotaExceeded") || code.ends_with("QuotaExceededFault") {
        ProviderError::QuotaExceeded {
            quota: format!("{action}: {message}"),
        }
    } else if is_exists_code(code)
        || code.starts_with("InvalidDBInstanceState")
        // RDS answers a delete of a protected instance with the same code as a
        // malformed request; only AWS's message tells them apart. This reads a
        // cloud's answer, not one of our errors (those are matched by type).
        || code == "InvalidParameterCombination" && message.contains("protected")
        || code == "DependencyViolation"
        || status == 409
    {
        ProviderError::Conflict {
            message: format!("{action}: {message}"),
        }
    } else if is_not_found_code(code) || status == 404 {
        ProviderError::NotFound {
            what: format!("{action}: {message}"),
        }
    } else if matches!(
        code,
        "InvalidParameterException"
            | "InvalidRequestException"
            | "InvalidParameterValue"
            | "InvalidParameterCombination"
            | "InvalidInstanceType"
            | "InvalidSubnet"
    ) {
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
pub fn is_not_found<E>(e: &SdkError<E, Response>) -> bool
where
    E: ProvideErrorMetadata,
{
    match e {
        SdkError::ServiceError(ctx) => {
            ctx.err().code().is_some_and(is_not_found_code) || ctx.raw().status().as_u16() == 404
        }
        _ => false,
    }
}

/// Whether `e` says the resource already exists.
pub fn is_exists<E>(e: &SdkError<E, Response>) -> bool
where
    E: ProvideErrorMetadata,
{
    match e {
        SdkError::ServiceError(ctx) => {
            ctx.err().code().is_some_and(is_exists_code) || ctx.raw().status().as_u16() == 409
        }
        _ => false,
    }
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
        // Credentials, not permissions.
        let e = classify(
            "rds:CreateDBSubnetGroup",
            "SignatureDoesNotMatch",
            "the signature differs",
            403,
        );
        assert_eq!(e.code(), "permission_denied");
        assert!(e.to_string().contains("did not accept the credentials"), "{e}");
        assert_eq!(
            xml_field(
                "<ErrorResponse><Errors><Error><Code>AccessDenied</Code><Message>no</Message></Error></Errors></ErrorResponse>",
                "Code"
            ),
            "AccessDenied"
        );
        // RDS and EC2 dialects.
        assert_eq!(
            classify("rds:DescribeDBInstances", "DBInstanceNotFound", "x", 404).code(),
            "not_found"
        );
        assert_eq!(
            classify(
                "ec2:DescribeLaunchTemplates",
                "InvalidLaunchTemplateName.NotFoundException",
                "x",
                400
            )
            .code(),
            "not_found"
        );
        assert_eq!(
            classify("rds:CreateDBInstance", "DBInstanceAlreadyExists", "x", 400).code(),
            "conflict"
        );
        assert_eq!(
            classify("rds:CreateDBInstance", "StorageQuotaExceeded", "x", 400).code(),
            "quota_exceeded"
        );
        assert_eq!(
            classify(
                "rds:DeleteDBInstance",
                "InvalidParameterCombination",
                "Cannot delete protected DB Instance",
                400
            )
            .code(),
            "conflict"
        );
        assert_eq!(
            classify("rds:CreateDBInstance", "InvalidParameterValue", "bad", 400).code(),
            "invalid_spec"
        );
    }
}
