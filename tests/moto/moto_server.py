"""moto_server, with one fix for a moto bug that only IAM enforcement shows.

When moto checks request signatures (INITIAL_NO_AUTH_ACTION_COUNT, the
least-privilege test), it recomputes the SigV4 signature of requests without a
body or a query string (EKS DescribeCluster, DeleteCluster, ...) over the
request's *headers*, so every such call fails with SignatureDoesNotMatch. This
signs what was sent: the body, or for form-encoded query APIs (EC2, RDS, IAM)
the form moto parsed, or nothing. Test infrastructure only.
"""
import sys

from botocore.awsrequest import AWSRequest
from moto.iam import access_control
from moto.server import main


def _create_aws_request(self):
    signed = self._get_string_between("SignedHeaders=", ",", self._headers["Authorization"]).split(";")
    headers = self._create_headers_for_aws_request(signed, self._headers)
    content_type = next((v for k, v in self._headers.items() if k.lower() == "content-type"), "")
    data = self._body or (self._data if "x-www-form-urlencoded" in content_type else b"")
    request = AWSRequest(method=self._method, url=self._path, data=data, headers=headers)
    request.context["timestamp"] = headers["X-Amz-Date"]
    return request


access_control.IAMRequestBase._create_aws_request = _create_aws_request

if __name__ == "__main__":
    main(sys.argv[1:])
