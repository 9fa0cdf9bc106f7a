"""moto_server, with fixes for two moto bugs that only IAM enforcement shows.

When moto checks request signatures (INITIAL_NO_AUTH_ACTION_COUNT, the
least-privilege test), it recomputes the SigV4 signature over what it thinks
was sent:

1. For requests without a body or a query string (EKS DescribeCluster,
   DeleteCluster, ...) it uses the request's *headers* as the payload, so every
   such call fails with SignatureDoesNotMatch.
2. For form-encoded query APIs (EC2, RDS, IAM) the body is gone once Flask has
   parsed the form, so it re-encodes the parsed form, which differs from what
   the AWS SDK for Rust sent (its percent-encoding of ':' and the like), and the
   call fails with SignatureDoesNotMatch.

This keeps the raw body (the request caches it, and parses the form from the cache) and signs
exactly that, or nothing. Test infrastructure only.
"""
import sys

from botocore.awsrequest import AWSRequest
from moto.iam import access_control
from moto.server import main
from werkzeug.wrappers.request import Request

_get_data = Request.get_data
_load_form_data = Request._load_form_data


def _get_data_keeping_the_body(self, cache=True, as_text=False, parse_form_data=False):
    # Always cached, never consumed by form parsing: the form is parsed from the cache.
    return _get_data(self, cache=True, as_text=as_text, parse_form_data=False)


def _load_form_data_keeping_the_body(self):
    self.get_data()
    return _load_form_data(self)


Request.get_data = _get_data_keeping_the_body
Request._load_form_data = _load_form_data_keeping_the_body


def _create_aws_request(self):
    signed = self._get_string_between("SignedHeaders=", ",", self._headers["Authorization"]).split(";")
    headers = self._create_headers_for_aws_request(signed, self._headers)
    data = self._body or b""
    request = AWSRequest(method=self._method, url=self._path, data=data, headers=headers)
    request.context["timestamp"] = headers["X-Amz-Date"]
    return request


access_control.IAMRequestBase._create_aws_request = _create_aws_request

if __name__ == "__main__":
    main(sys.argv[1:])
