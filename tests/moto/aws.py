#!/usr/bin/env python3
"""Independent look at the AWS emulator, for the end-to-end tests: boto3, not
the agent's code. Prints one JSON document.

    aws.py ENDPOINT describe-cluster NAME        -> the cluster, or {"absent": true}
    aws.py ENDPOINT create-user NAME POLICY_JSON  -> {"key": ..., "secret": ...}: an IAM user
                                                     with that policy and an access key
    aws.py ENDPOINT create-nodegroup CLUSTER NAME -> the node group
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
    elif cmd == "create-user":
        iam = session.client("iam", endpoint_url=endpoint)
        name, policy = args
        iam.create_user(UserName=name)
        arn = iam.create_policy(PolicyName=f"{name}-policy", PolicyDocument=policy)["Policy"]["Arn"]
        iam.attach_user_policy(UserName=name, PolicyArn=arn)
        key = iam.create_access_key(UserName=name)["AccessKey"]
        print(json.dumps({"key": key["AccessKeyId"], "secret": key["SecretAccessKey"]}))
    elif cmd == "create-nodegroup":
        eks = session.client("eks", endpoint_url=endpoint)
        cluster, name = args
        out = eks.create_nodegroup(
            clusterName=cluster,
            nodegroupName=name,
            nodeRole="arn:aws:iam::123456789012:role/node",
            subnets=["subnet-0a1b2c3d"],
        )["nodegroup"]
        print(json.dumps(out, default=str))
    else:
        sys.exit(f"unknown command {cmd}")


if __name__ == "__main__":
    main()
