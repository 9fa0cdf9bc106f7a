#!/usr/bin/env python3
"""Independent look at the AWS emulator, for the end-to-end tests: boto3, not
the agent's code. Prints one JSON document.

    aws.py ENDPOINT setup-network                   -> {"vpc", "subnets": [2], "sg"}: what the
                                                       install module would have made
    aws.py ENDPOINT describe-cluster NAME           -> the cluster, or {"absent": true}
    aws.py ENDPOINT describe-nodegroup CLUSTER NAME -> the node group, or {"absent": true}
    aws.py ENDPOINT describe-launch-template NAME   -> the template's latest version, user data
                                                       decoded, and its tags, or {"absent": true}
    aws.py ENDPOINT describe-db NAME                -> the DB instance, or {"absent": true}
    aws.py ENDPOINT describe-db-snapshots NAME      -> the DB snapshots of instance NAME
    aws.py ENDPOINT describe-secret ARN             -> the secret's metadata (never its value)
    aws.py ENDPOINT secret-value ARN                -> the secret's value: for the tests to look
                                                       for it where it must not be
    aws.py ENDPOINT describe-security-group NAME    -> the group, or {"absent": true}
    aws.py ENDPOINT inventory                       -> names of every cluster, node group,
                                                       launch template, DB instance, DB subnet
                                                       group and security group (duplicates show)
    aws.py ENDPOINT create-user NAME POLICY_JSON    -> {"key": ..., "secret": ...}: an IAM user
                                                       with that policy and an access key
    aws.py ENDPOINT create-nodegroup CLUSTER NAME   -> the node group
"""

import base64
import json
import sys

import boto3
from botocore.exceptions import ClientError


def main():
    endpoint, cmd, *args = sys.argv[1:]
    session = boto3.session.Session(
        aws_access_key_id="test", aws_secret_access_key="test", region_name="us-east-1"
    )
    client = lambda name: session.client(name, endpoint_url=endpoint)

    def absent_if(codes, f):
        try:
            return f()
        except ClientError as e:
            if e.response["Error"]["Code"] in codes:
                return {"absent": True}
            raise

    if cmd == "setup-network":
        ec2 = client("ec2")
        vpc = ec2.create_vpc(CidrBlock="10.20.0.0/16")["Vpc"]["VpcId"]
        subnets = [
            ec2.create_subnet(VpcId=vpc, CidrBlock=f"10.20.{i}.0/24", AvailabilityZone=f"us-east-1{az}")[
                "Subnet"
            ]["SubnetId"]
            for i, az in enumerate("ab")
        ]
        sg = ec2.create_security_group(GroupName="eks-cluster", Description="cluster", VpcId=vpc)["GroupId"]
        print(json.dumps({"vpc": vpc, "subnets": subnets, "sg": sg}))
    elif cmd == "describe-nodegroup":
        eks = client("eks")
        out = absent_if(
            ["ResourceNotFoundException"],
            lambda: eks.describe_nodegroup(clusterName=args[0], nodegroupName=args[1])["nodegroup"],
        )
        print(json.dumps(out, default=str))
    elif cmd == "describe-launch-template":
        ec2 = client("ec2")

        def lt():
            t = ec2.describe_launch_templates(LaunchTemplateNames=[args[0]])["LaunchTemplates"][0]
            v = ec2.describe_launch_template_versions(LaunchTemplateName=args[0], Versions=["$Latest"])[
                "LaunchTemplateVersions"
            ][0]
            data = v["LaunchTemplateData"]
            if "UserData" in data:
                data["UserData"] = base64.b64decode(data["UserData"]).decode()
            return {"template": t, "version": v["VersionNumber"], "data": data}

        print(json.dumps(absent_if(["InvalidLaunchTemplateName.NotFoundException"], lt), default=str))
    elif cmd == "describe-db":
        rds = client("rds")
        out = absent_if(
            ["DBInstanceNotFound", "DBInstanceNotFoundFault"],
            lambda: rds.describe_db_instances(DBInstanceIdentifier=args[0])["DBInstances"][0],
        )
        print(json.dumps(out, default=str))
    elif cmd == "describe-db-snapshots":
        rds = client("rds")
        print(json.dumps(rds.describe_db_snapshots(DBInstanceIdentifier=args[0])["DBSnapshots"], default=str))
    elif cmd == "describe-secret":
        sm = client("secretsmanager")
        print(json.dumps(sm.describe_secret(SecretId=args[0]), default=str))
    elif cmd == "secret-value":
        sm = client("secretsmanager")
        print(json.dumps(sm.get_secret_value(SecretId=args[0]), default=str))
    elif cmd == "describe-security-group":
        ec2 = client("ec2")
        groups = ec2.describe_security_groups(Filters=[{"Name": "group-name", "Values": [args[0]]}])[
            "SecurityGroups"
        ]
        print(json.dumps(groups[0] if groups else {"absent": True}, default=str))
    elif cmd == "inventory":
        eks, ec2, rds = client("eks"), client("ec2"), client("rds")
        clusters = eks.list_clusters()["clusters"]
        print(
            json.dumps(
                {
                    "clusters": clusters,
                    "nodegroups": sorted(
                        f"{c}/{n}" for c in clusters for n in eks.list_nodegroups(clusterName=c)["nodegroups"]
                    ),
                    "launch_templates": sorted(
                        t["LaunchTemplateName"] for t in ec2.describe_launch_templates()["LaunchTemplates"]
                    ),
                    "db_instances": sorted(
                        d["DBInstanceIdentifier"] for d in rds.describe_db_instances()["DBInstances"]
                    ),
                    "db_subnet_groups": sorted(
                        g["DBSubnetGroupName"] for g in rds.describe_db_subnet_groups()["DBSubnetGroups"]
                    ),
                    "security_groups": sorted(
                        g["GroupName"] for g in ec2.describe_security_groups()["SecurityGroups"]
                    ),
                }
            )
        )
    elif cmd == "describe-cluster":
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
