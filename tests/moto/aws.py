#!/usr/bin/env python3
"""Independent look at the AWS emulator, for the end-to-end tests: boto3, not
the agent's code. Prints one JSON document.

    aws.py ENDPOINT describe-cluster NAME     -> the cluster, or {"absent": true}
"""
import json
import sys

import boto3
from botocore.exceptions import ClientError


def main():
    endpoint, cmd, *args = sys.argv[1:]
    session = boto3.session.Session(
        aws_access_key_id="test", aws_secret_access_key="test", region_name="us-east-1"
    )
    if cmd == "describe-cluster":
        eks = session.client("eks", endpoint_url=endpoint)
        try:
            out = eks.describe_cluster(name=args[0])["cluster"]
        except ClientError as e:
            if e.response["Error"]["Code"] == "ResourceNotFoundException":
                out = {"absent": True}
            else:
                raise
        print(json.dumps(out, default=str))
    else:
        sys.exit(f"unknown command {cmd}")


if __name__ == "__main__":
    main()
