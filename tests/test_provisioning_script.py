"""create_ec2_sandbox.sh end to end: the real script and the real AWS CLI against moto on 127.0.0.1.

The SSM stand-in answers the Online check and runs the toolkit's hello-world (on this machine, under a
temporary base dir); moto plays EC2, IAM and STS. The tests run in file order and share one account: a dry
run on the empty account, the real run, a rerun with drift to repair, prepare-instance, then --delete.
"""

from __future__ import annotations

import base64
import datetime
import fnmatch
import gzip
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "create_ec2_sandbox.sh"
USER_DATA = ROOT / "provisioning" / "user-data.sh"
ACCOUNT = "123456789012"
REGION = "us-east-1"
NAME = "sbx-test"
TAG_KEY = "ec2-sandbox:name"
UBUNTU_PARAM = "/aws/service/canonical/ubuntu/server/24.04/stable/current/amd64/hvm/ebs-gp3/ami-id"
AMI = "ami-1e749f67"  # one of moto's built-in x86_64 images (Ubuntu, root device /dev/sda1)
SSM_CORE = "arn:aws:iam::aws:policy/AmazonSSMManagedInstanceCore"
BIN = Path(sys.executable).parent
SCRIPT_FLAGS = (
    "--name", "--type", "--arch", "--ami", "--subnet", "--region", "--profile", "--environment", "--config",
    "--skip-test", "--dry-run", "--delete", "--ssh-from", "--eic-endpoint", "--help", "--fleet", "--min",
    "--max", "--warm-pool",
)  # fmt: skip
#: The tools the script runs besides aws and jq, wrapped to refuse GNU long options as macOS's BSD tools do.
BSD_TOOLS = ("chmod", "cp", "mv", "mkdir", "mktemp", "rm", "date", "sed", "grep", "tr", "cut", "wc", "head",
             "gzip", "dirname", "sleep", "cat")  # fmt: skip
POLICY = ROOT / "docs" / "iam-policy.json"

pytestmark = pytest.mark.skipif(
    shutil.which("aws", path=str(BIN)) is None or shutil.which("jq") is None,
    reason="needs the AWS CLI (dev group) and jq",
)


#: The instance group's egress: https, http and DNS, nothing else.
INSTANCE_EGRESS = {
    ("tcp", 443, 443, "cidr", "0.0.0.0/0"),
    ("tcp", 80, 80, "cidr", "0.0.0.0/0"),
    ("udp", 53, 53, "cidr", "0.0.0.0/0"),
    ("tcp", 53, 53, "cidr", "0.0.0.0/0"),
}


def rules(permissions: list[dict[str, Any]]) -> set[tuple[Any, ...]]:
    """Security group rules one (protocol, ports, source) at a time, whatever way EC2 grouped them."""
    found: set[tuple[Any, ...]] = set()
    for p in permissions:
        ports = (p["IpProtocol"], p.get("FromPort"), p.get("ToPort"))
        found |= {(*ports, "cidr", r["CidrIp"]) for r in p.get("IpRanges", [])}
        found |= {(*ports, "cidr6", r["CidrIpv6"]) for r in p.get("Ipv6Ranges", [])}
        found |= {(*ports, "prefix-list", r["PrefixListId"]) for r in p.get("PrefixListIds", [])}
        found |= {(*ports, "group", r["GroupId"]) for r in p.get("UserIdGroupPairs", [])}
    return found


def bsd_userland(where: Path) -> Path:
    """A directory of wrappers that refuse GNU-only long options (``--reference=...``) the way macOS's BSD
    tools do, in front of the real ones: the script runs with them first on PATH."""
    where.mkdir()
    for tool in BSD_TOOLS:
        real = shutil.which(tool)
        assert real, tool
        wrapper = where / tool
        wrapper.write_text(
            "#!/bin/bash\n"
            'for arg in "$@"; do\n'
            "    [[ $arg == -- ]] && break\n"
            f'    if [[ $arg == --?* ]]; then echo "{tool}: illegal option -- ${{arg#-}}" >&2; exit 64; fi\n'
            "done\n"
            f'exec {real} "$@"\n'
        )
        wrapper.chmod(0o755)
    return where


class Account:
    """The moto server, a scratch dir with AWS CLI profile files, and clients to inspect the result."""

    def __init__(self, server: Any, home: Path) -> None:
        self.server = server
        self.home = home
        self.config = home / "config.json"
        # Under /tmp itself: run as root, the runner drops to a sandbox uid that must reach its work dir.
        self.base_dir = Path(tempfile.mkdtemp(prefix="ec2sb-provision-", dir="/tmp"))
        self.base_dir.chmod(0o711)
        aws = home / "aws"
        aws.mkdir()
        (aws / "credentials").write_text(
            "[default]\naws_access_key_id = testing\naws_secret_access_key = testing\n"
        )
        (aws / "config").write_text(f"[default]\nregion = {REGION}\n")
        bsd = bsd_userland(home / "bsd-bin")
        self.env = {
            "PATH": f"{bsd}:{BIN}:{os.environ.get('PATH', '/usr/bin:/bin')}",
            "HOME": str(home),
            "LANG": "C.UTF-8",
            "AWS_ENDPOINT_URL": server.url,
            "AWS_CONFIG_FILE": str(aws / "config"),
            "AWS_SHARED_CREDENTIALS_FILE": str(aws / "credentials"),
            "AWS_EC2_METADATA_DISABLED": "true",  # never the metadata address, whatever the chain tries
            "EC2_SANDBOX_POLL_SECONDS": "0.2",
            "EC2_SANDBOX_WAIT_SECONDS": "60",
        }

    def client(self, service: str) -> Any:
        return boto3.client(
            service,
            region_name=REGION,
            endpoint_url=self.server.url,
            aws_access_key_id="testing",
            aws_secret_access_key="testing",
        )

    def run(self, *args: str, timeout: float = 240, name: str = NAME) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["bash", str(SCRIPT), "--name", name, "--config", str(self.config), *args],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=timeout,
            cwd=self.home,
        )

    def cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "ec2_sandbox.cli", "--config", str(self.config), *args],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=120,
        )

    def live_instances(self, name: str = NAME) -> list[dict[str, Any]]:
        found = self.client("ec2").describe_instances(
            Filters=[
                {"Name": f"tag:{TAG_KEY}", "Values": [name]},
                {"Name": "instance-state-name", "Values": ["pending", "running", "stopping", "stopped"]},
            ]
        )
        return [i for r in found["Reservations"] for i in r["Instances"]]

    def tagged_groups(self, name: str = NAME) -> list[dict[str, Any]]:
        groups = self.client("ec2").describe_security_groups(
            Filters=[{"Name": f"tag:{TAG_KEY}", "Values": [name]}]
        )
        return groups["SecurityGroups"]

    def snapshot(self) -> dict[str, Any]:
        """Everything the script could create, for before/after comparisons."""
        iam = self.client("iam")
        ec2 = self.client("ec2")
        return {
            "roles": sorted(r["RoleName"] for r in iam.list_roles()["Roles"]),
            "profiles": sorted(
                p["InstanceProfileName"] for p in iam.list_instance_profiles()["InstanceProfiles"]
            ),
            "groups": sorted(
                (
                    g["GroupId"],
                    json.dumps(g["IpPermissions"], sort_keys=True, default=str),
                    json.dumps(g["IpPermissionsEgress"], sort_keys=True, default=str),
                )
                for g in ec2.describe_security_groups()["SecurityGroups"]
            ),
            "instances": sorted(
                (i["InstanceId"], i["State"]["Name"])
                for r in ec2.describe_instances()["Reservations"]
                for i in r["Instances"]
            ),
        }


@pytest.fixture(scope="module")
def account(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Account]:
    from moto.ssm.models import Parameter, ssm_backends

    from ec2_sandbox.testing import ssm_standin

    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MOTO_IAM_LOAD_MANAGED_POLICIES", "true")
        with ssm_standin.serve() as server:
            # Fresh backends, so IAM is built with the AWS managed policies loaded.
            urllib.request.urlopen(urllib.request.Request(f"{server.url}/moto-api/reset", method="POST"))
            # moto lacks Canonical's public AMI parameter.
            ssm_backends[ACCOUNT][REGION]._parameters[UBUNTU_PARAM].append(
                Parameter(
                    account_id=ACCOUNT,
                    name=UBUNTU_PARAM,
                    value=AMI,
                    parameter_type="String",
                    description=None,
                    allowed_pattern=None,
                    keyid=None,
                    last_modified_date=datetime.datetime.now(datetime.UTC),
                    version=1,
                    data_type="aws:ec2:image",
                )
            )
            acct = Account(server, tmp_path_factory.mktemp("provision"))
            try:
                yield acct
            finally:
                shutil.rmtree(acct.base_dir, ignore_errors=True)


DRY_RUN_WRITES = (
    "iam create-role",
    "iam attach-role-policy",
    "iam create-instance-profile",
    "iam add-role-to-instance-profile",
    "ec2 create-security-group",
    "ec2 revoke-security-group-egress",
    "ec2 authorize-security-group-egress",
    "ec2 run-instances",
)


def test_dry_run_prints_every_change_and_makes_none(account: Account) -> None:
    before = account.snapshot()
    proc = account.run("--dry-run")
    assert proc.returncode == 0, proc.stderr
    out = proc.stderr
    for call in DRY_RUN_WRITES:
        assert f"[dry-run] would run: aws --region us-east-1 --profile default --output json {call}" in out
    assert "authorize-security-group-ingress" not in out  # SSM only: no inbound rule at all
    assert "[dry-run] reading:" in out and "sts get-caller-identity" in out
    for change in (
        f"would create role {NAME}-role",
        f"would create security group {NAME}-sg",
        "would launch",
    ):
        assert change in out, change
    assert "created" not in out and "launched" not in out
    assert account.snapshot() == before
    assert not account.config.exists()


def test_dry_run_without_credentials_prints_the_calls_with_placeholders(
    account: Account, tmp_path: Path
) -> None:
    keep = ("AWS_ENDPOINT_URL", "AWS_EC2_METADATA_DISABLED")
    env = {k: v for k, v in account.env.items() if not k.startswith("AWS_") or k in keep}
    env |= {"AWS_CONFIG_FILE": "/nonexistent", "AWS_SHARED_CREDENTIALS_FILE": "/nonexistent"}
    before = account.snapshot()
    proc = subprocess.run(
        ["bash", str(SCRIPT), "--name", NAME, "--region", REGION, "--dry-run", "--eic-endpoint",
         "--ssh-from", "198.51.100.0/24", "--config", str(tmp_path / "c.json")],
        env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    out = proc.stderr
    assert "dry run without working credentials" in out
    # Only the credentials check was tried; every later read is printed, not run.
    tried = [line for line in out.splitlines() if line.startswith("[dry-run] reading:")]
    assert tried == ["[dry-run] reading: aws --region us-east-1 --output json sts get-caller-identity"]
    assert "[dry-run] would read: aws --region us-east-1 --output json ec2 describe-instances" in out
    prefix = "[dry-run] would run: aws --region us-east-1 --output json"
    for call in (
        *DRY_RUN_WRITES,
        "ec2 authorize-security-group-ingress",
        "ec2 create-instance-connect-endpoint",
    ):
        assert f"{prefix} {call}" in out, call
    assert "<latest Ubuntu 24.04 AMI>" in out and "<default VPC>" in out and "<account>" in out
    assert "198.51.100.0/24" in out
    assert account.snapshot() == before and not (tmp_path / "c.json").exists()


def test_create_end_to_end(account: Account, monkeypatch: pytest.MonkeyPatch) -> None:
    from moto.ec2.exceptions import EC2ClientError
    from moto.ec2.models.instances import InstanceBackend

    # Other environments, comments and extra fields of the target environment must survive the merge.
    account.config.write_text(
        json.dumps(
            {
                "_comment": "kept",
                "laptop": {"transport": "local", "max_memory_mb": 512},
                "default": {"base_sandbox_dir": str(account.base_dir), "max_execution_time": 60},
            }
        )
    )
    # IAM is eventually consistent: the first launch with a new instance profile fails as it does on AWS.
    real_run_instances = InstanceBackend.run_instances
    refusals = []

    def run_instances(self: Any, *args: Any, **kwargs: Any) -> Any:
        if not refusals:
            refusals.append(1)
            raise EC2ClientError(
                "InvalidParameterValue",
                f"Value ({NAME}-profile) for parameter iamInstanceProfile.name is invalid. "
                "Invalid IAM Instance Profile name",
            )
        return real_run_instances(self, *args, **kwargs)

    monkeypatch.setattr(InstanceBackend, "run_instances", run_instances)

    ec2 = account.client("ec2")
    default_vpc = ec2.describe_vpcs(Filters=[{"Name": "isDefault", "Values": ["true"]}])["Vpcs"][0]["VpcId"]
    subnet = ec2.describe_subnets(Filters=[{"Name": "vpc-id", "Values": [default_vpc]}])["Subnets"][0][
        "SubnetId"
    ]
    proc = account.run("--region", REGION, "--subnet", subnet)
    assert proc.returncode == 0, proc.stderr
    assert "instance profile not usable yet (attempt 1" in proc.stderr
    assert "SSM agent on" in proc.stderr and "is Online" in proc.stderr
    assert "hello-world: hello from ec2-sandbox" in proc.stderr
    assert "healthy" in proc.stderr

    iam = account.client("iam")
    role = iam.get_role(RoleName=f"{NAME}-role")["Role"]
    trust = role["AssumeRolePolicyDocument"]
    assert trust["Statement"] == [
        {"Effect": "Allow", "Principal": {"Service": "ec2.amazonaws.com"}, "Action": "sts:AssumeRole"}
    ]
    attached = iam.list_attached_role_policies(RoleName=f"{NAME}-role")["AttachedPolicies"]
    assert [p["PolicyArn"] for p in attached] == [SSM_CORE]
    assert iam.list_role_policies(RoleName=f"{NAME}-role")["PolicyNames"] == []
    # The one policy lets the agent talk to SSM; it cannot command other instances.
    policy = iam.get_policy(PolicyArn=SSM_CORE)["Policy"]
    document = iam.get_policy_version(PolicyArn=SSM_CORE, VersionId=policy["DefaultVersionId"])
    statements = document["PolicyVersion"]["Document"]["Statement"]
    actions = [
        a for st in statements for a in ([st["Action"]] if isinstance(st["Action"], str) else st["Action"])
    ]
    assert "ssm:UpdateInstanceInformation" in actions
    for dangerous in ("ssm:SendCommand", "ssm:StartSession", "iam:PassRole", "ec2:RunInstances"):
        assert not any(fnmatch.fnmatchcase(dangerous, pattern) for pattern in actions), dangerous
    assert {"Key": TAG_KEY, "Value": NAME} in iam.list_role_tags(RoleName=f"{NAME}-role")["Tags"]
    profile = iam.get_instance_profile(InstanceProfileName=f"{NAME}-profile")["InstanceProfile"]
    assert [r["RoleName"] for r in profile["Roles"]] == [f"{NAME}-role"]

    (group,) = account.tagged_groups()
    assert group["GroupName"] == f"{NAME}-sg"
    assert group["IpPermissions"] == []  # SSM only: the agent connects out, nothing comes in
    assert rules(group["IpPermissionsEgress"]) == INSTANCE_EGRESS

    (instance,) = account.live_instances()
    iid = instance["InstanceId"]
    assert instance["ImageId"] == AMI
    assert instance["SubnetId"] == subnet
    assert instance["InstanceType"] == "t3.small"
    assert instance["MetadataOptions"]["HttpTokens"] == "required"
    assert instance["MetadataOptions"]["HttpPutResponseHopLimit"] == 1
    assert instance["IamInstanceProfile"]["Arn"].endswith(f":instance-profile/{NAME}-profile")
    assert [g["GroupId"] for g in instance["SecurityGroups"]] == [group["GroupId"]]
    tags = {t["Key"]: t["Value"] for t in instance["Tags"]}
    assert tags == {"Name": NAME, TAG_KEY: NAME}
    volumes = ec2.describe_volumes(Filters=[{"Name": "attachment.instance-id", "Values": [iid]}])["Volumes"]
    assert volumes and all(v["Encrypted"] for v in volumes)
    user_data = ec2.describe_instance_attribute(InstanceId=iid, Attribute="userData")["UserData"]["Value"]
    assert gzip.decompress(base64.b64decode(user_data)) == USER_DATA.read_bytes()

    config = json.loads(account.config.read_text())
    assert config["_comment"] == "kept"
    assert config["laptop"] == {"transport": "local", "max_memory_mb": 512}
    assert config["default"] == {
        "base_sandbox_dir": str(account.base_dir),
        "max_execution_time": 60,
        "transport": "ssm",
        "instance_id": iid,
        "region": REGION,
        "aws_profile": "default",
    }
    validated = account.cli("config", "validate", "default")
    assert validated.returncode == 0, validated.stdout + validated.stderr
    # The hello-world really ran through the SSM transport, in the configured base dir.
    assert any(account.base_dir.joinpath("runs").iterdir())


def test_rerun_reuses_everything_and_repairs_drift(account: Account) -> None:
    from moto.ec2.models import ec2_backends

    ec2 = account.client("ec2")
    (instance,) = account.live_instances()
    iid = instance["InstanceId"]
    (group,) = account.tagged_groups()
    before = account.snapshot()
    # Someone opened ssh to the world, relaxed the metadata options, put the instance in the VPC's default
    # group and took its instance profile away.
    ec2.authorize_security_group_ingress(
        GroupId=group["GroupId"],
        IpPermissions=[
            {"IpProtocol": "tcp", "FromPort": 22, "ToPort": 22, "IpRanges": [{"CidrIp": "0.0.0.0/0"}]}
        ],
    )
    ec2.modify_instance_metadata_options(InstanceId=iid, HttpTokens="optional", HttpPutResponseHopLimit=2)
    default = ec2.describe_security_groups(
        Filters=[
            {"Name": "group-name", "Values": ["default"]},
            {"Name": "vpc-id", "Values": [instance["VpcId"]]},
        ]
    )["SecurityGroups"][0]["GroupId"]
    ec2.modify_instance_attribute(InstanceId=iid, Groups=[default])
    (association,) = ec2.describe_iam_instance_profile_associations(
        Filters=[{"Name": "instance-id", "Values": [iid]}]
    )["IamInstanceProfileAssociations"]
    ec2.disassociate_iam_instance_profile(AssociationId=association["AssociationId"])
    # and the root volume is not encrypted (which only a new volume can change).
    volumes = ec2.describe_volumes(Filters=[{"Name": "attachment.instance-id", "Values": [iid]}])["Volumes"]
    backend_volumes = ec2_backends[ACCOUNT][REGION].volumes
    for volume in volumes:
        backend_volumes[volume["VolumeId"]].encrypted = False
    assert account.snapshot() != before
    try:
        proc = account.run("--skip-test")
    finally:
        for volume in volumes:
            backend_volumes[volume["VolumeId"]].encrypted = True
    assert proc.returncode == 0, proc.stderr
    out = proc.stderr
    for word in ("created", "launched", "attached", "added ingress", "added egress", "started"):
        assert word not in out, out
    assert f"revoked ingress rules of {group['GroupId']} not ours" in out and "0.0.0.0/0" in out
    assert "required IMDSv2 with hop limit 1" in out
    assert f"replaced the security groups of {iid} ({default}) with {group['GroupId']}" in out
    assert f"associated instance profile {NAME}-profile with {iid}" in out
    assert f"warning: cannot repair: volume(s) {volumes[0]['VolumeId']} of {iid} are not encrypted" in out
    # Back to exactly what the first run made: same role, profile, group rules and instance.
    assert account.snapshot() == before
    (again,) = account.live_instances()
    assert again["MetadataOptions"]["HttpTokens"] == "required"
    assert again["MetadataOptions"]["HttpPutResponseHopLimit"] == 1
    assert [g["GroupId"] for g in again["SecurityGroups"]] == [group["GroupId"]]
    assert again["IamInstanceProfile"]["Arn"].endswith(f":instance-profile/{NAME}-profile")
    (group,) = account.tagged_groups()
    assert group["IpPermissions"] == []


def test_ssh_from_admits_those_addresses_only(account: Account) -> None:
    name = "sbx-ssh"
    bad = account.run("--ssh-from", "10.0.0.0/33", name=name)
    assert bad.returncode == 1 and "--ssh-from '10.0.0.0/33' is not an IPv4 CIDR" in bad.stderr
    cidrs = ("--ssh-from", "203.0.113.7/32", "--ssh-from", "198.51.100.0/24")
    proc = account.run("--skip-test", "--environment", "ssh", *cidrs, name=name)
    assert proc.returncode == 0, proc.stderr
    (group,) = account.tagged_groups(name)
    assert rules(group["IpPermissions"]) == {
        ("tcp", 22, 22, "cidr", "203.0.113.7/32"),
        ("tcp", 22, 22, "cidr", "198.51.100.0/24"),
    }
    assert rules(group["IpPermissionsEgress"]) == INSTANCE_EGRESS
    entry = json.loads(account.config.read_text())["ssh"]
    assert entry["ssh_sudo"] is True and entry["transport"] == "ssm" and "eic_endpoint_id" not in entry
    assert "ssh_sudo is true: the eic and ssh transports need it" in proc.stderr
    # The network is what the latest run asked for: without --ssh-from, SSM only again.
    again = account.run("--skip-test", "--environment", "ssh", name=name)
    assert again.returncode == 0, again.stderr
    assert account.tagged_groups(name)[0]["IpPermissions"] == []
    assert account.run("--delete", name=name).returncode == 0
    assert account.tagged_groups(name) == [] and account.live_instances(name) == []


def test_eic_endpoint_is_created_and_admitted_group_to_group(account: Account) -> None:
    name = "sbx-eice"
    ec2 = account.client("ec2")
    proc = account.run("--skip-test", "--environment", "eice", "--eic-endpoint", name=name)
    assert proc.returncode == 0, proc.stderr
    groups = {g["GroupName"]: g for g in account.tagged_groups(name)}
    assert set(groups) == {f"{name}-sg", f"{name}-eice-sg"}
    instance_group, endpoint_group = groups[f"{name}-sg"], groups[f"{name}-eice-sg"]
    (endpoint,) = ec2.describe_instance_connect_endpoints(
        Filters=[{"Name": f"tag:{TAG_KEY}", "Values": [name]}]
    )["InstanceConnectEndpoints"]
    (instance,) = account.live_instances(name)
    assert endpoint["State"] == "create-complete" and endpoint["PreserveClientIp"] is False
    assert endpoint["SubnetId"] == instance["SubnetId"]
    assert endpoint["SecurityGroupIds"] == [endpoint_group["GroupId"]]
    # Rule by rule: the instance admits ssh from the endpoint's group only; the endpoint reaches port 22 of
    # the instance's group only.
    assert rules(instance_group["IpPermissions"]) == {("tcp", 22, 22, "group", endpoint_group["GroupId"])}
    assert rules(instance_group["IpPermissionsEgress"]) == INSTANCE_EGRESS
    assert endpoint_group["IpPermissions"] == []
    assert rules(endpoint_group["IpPermissionsEgress"]) == {
        ("tcp", 22, 22, "group", instance_group["GroupId"])
    }
    assert [g["GroupId"] for g in instance["SecurityGroups"]] == [instance_group["GroupId"]]
    entry = json.loads(account.config.read_text())["eice"]
    assert entry["eic_endpoint_id"] == endpoint["InstanceConnectEndpointId"] and entry["ssh_sudo"] is True

    again = account.run("--skip-test", "--environment", "eice", "--eic-endpoint", name=name)
    assert again.returncode == 0, again.stderr
    assert f"EC2 Instance Connect Endpoint {endpoint['InstanceConnectEndpointId']} exists" in again.stderr
    for word in ("created", "revoked", "added", "launched"):
        assert word not in again.stderr, again.stderr

    gone = account.run("--delete", name=name)
    assert gone.returncode == 0, gone.stderr
    assert f"deleted EC2 Instance Connect Endpoint {endpoint['InstanceConnectEndpointId']}" in gone.stderr
    (deleted,) = ec2.describe_instance_connect_endpoints(
        InstanceConnectEndpointIds=[endpoint["InstanceConnectEndpointId"]]
    )["InstanceConnectEndpoints"]
    assert deleted["State"] == "delete-complete"
    assert account.tagged_groups(name) == [] and account.live_instances(name) == []


def test_the_policy_file_grants_every_call_the_script_makes(account: Account) -> None:
    text = POLICY.read_text()
    account.client("iam").create_policy(PolicyName="ec2-sandbox-provisioning", PolicyDocument=text)  # grammar
    statements = json.loads(text)["Statement"]

    def listed(value: str | list[str]) -> list[str]:
        return [value] if isinstance(value, str) else value

    allowed = {action for st in statements if st["Effect"] == "Allow" for action in listed(st["Action"])}
    script = SCRIPT.read_text()
    calls = set(re.findall(r"aws_call (?:read|write) ([a-z0-9-]+) ([a-z][a-z0-9-]+)", script))
    calls |= {
        ("ec2", f"{verb}-security-group-{way}")
        for verb in ("authorize", "revoke")
        for way in ("ingress", "egress")
    }
    assert ("ec2", "create-instance-connect-endpoint") in calls and ("iam", "wait") in calls
    needed = {
        f"{service}:{''.join(word.capitalize() for word in op.split('-'))}"
        for service, op in calls
        if op != "wait"
    }
    needed |= {"iam:GetInstanceProfile"}  # what 'iam wait instance-profile-exists' polls
    # Implied by the calls: tags on create, the role handed to EC2, the endpoint's network interface and role.
    needed |= {"iam:TagRole", "iam:TagInstanceProfile", "ec2:CreateTags", "iam:PassRole"}
    needed |= {"ec2:CreateNetworkInterface", "iam:CreateServiceLinkedRole"}
    # The connection test through the toolkit.
    needed |= {"ssm:SendCommand", "ssm:GetCommandInvocation", "ssm:DescribeInstanceInformation"}
    assert needed - allowed == set()
    (pass_role,) = [st for st in statements if "iam:PassRole" in listed(st["Action"])]
    assert pass_role["Resource"] != "*" and pass_role["Condition"]["StringEquals"]["iam:PassedToService"] == (
        "ec2.amazonaws.com"
    )
    (parameter,) = [st for st in statements if "ssm:GetParameter" in listed(st["Action"])]
    assert fnmatch.fnmatchcase(f"arn:aws:ssm:{REGION}::parameter{UBUNTU_PARAM}", parameter["Resource"])


def test_an_agent_that_never_comes_online_fails_with_the_reason(account: Account) -> None:
    (instance,) = account.live_instances()
    iid = instance["InstanceId"]
    account.server.standin.ping_status[iid] = "ConnectionLost"
    try:
        proc = subprocess.run(
            ["bash", str(SCRIPT), "--name", NAME, "--config", str(account.config)],
            env={**account.env, "EC2_SANDBOX_WAIT_SECONDS": "1"},
            capture_output=True,
            text=True,
            timeout=120,
        )
    finally:
        del account.server.standin.ping_status[iid]
    assert proc.returncode == 1
    assert f"waiting for the SSM agent on {iid} to report Online" in proc.stderr
    reason = (
        f"gave up after 1s waiting for the SSM agent on {iid} to report Online (last state: ConnectionLost)"
    )
    assert f"error: {reason}" in proc.stderr


def test_prepare_instance_reports_each_step(account: Account, tmp_path: Path) -> None:
    (instance,) = account.live_instances()
    # The stand-in runs the command on this machine: the setup writes below a scratch root, not into /etc.
    root = tmp_path / "root"
    (root / "usr" / "bin").mkdir(parents=True)
    for tool in ("apt-get", "python3", "node", "bwrap", "iptables"):
        (root / "usr" / "bin" / tool).write_text("#!/bin/sh\n")
        (root / "usr" / "bin" / tool).chmod(0o755)
    eic = root / "usr" / "share" / "ec2-instance-connect" / "eic_run_authorized_keys"
    eic.parent.mkdir(parents=True)
    eic.write_text("#!/bin/sh\n")
    eic.chmod(0o755)
    args = ("prepare-instance", instance["InstanceId"], "--setup-root", str(root), "--json")
    proc = account.cli(*args)
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    assert report["ok"] is True and report["status"] == "Success"
    assert any("the eic and ssh transports need ssh_sudo: true" in note for note in report["notes"])
    steps = {s["step"]: s["status"] for s in report["steps"]}
    assert steps == {
        "packages": "ok",
        "userns": "skipped",
        "uid-range": "changed",
        "dirs": "changed",
        "firewall": "changed",
        "cleanup": "changed",
        "complete": "ok",
    }
    assert (root / "etc" / "ec2-sandbox" / "imds-blocked").is_file()
    assert (root / "etc" / "ec2-sandbox" / "cleanup.conf").read_text().splitlines()[-1] == "CLEANUP_HOURS=24"
    again = json.loads(account.cli(*args).stdout)
    rerun = {s["step"]: s["status"] for s in again["steps"]}
    assert rerun == {**dict.fromkeys(steps, "ok"), "userns": "skipped"}
    # An environment that uses eic without ssh_sudo is told what it misses.
    config = json.loads(account.config.read_text())
    account.config.write_text(json.dumps({**config, "default": {**config["default"], "transport": "eic"}}))
    try:
        plain = account.cli("prepare-instance", instance["InstanceId"], "--setup-root", str(root))
    finally:
        account.config.write_text(json.dumps(config))
    assert plain.returncode == 0, plain.stderr
    assert "note: this environment uses eic without ssh_sudo: the eic and ssh transports need" in plain.stdout
    # A step that fails makes the command fail, naming the step and why.
    with (root / "etc" / "passwd").open("a") as fh:
        fh.write("intruder:x:200001:100::/:/bin/sh\n")
    failed = account.cli("prepare-instance", instance["InstanceId"], "--setup-root", str(root))
    assert failed.returncode == 1
    assert "[failed] uid-range: /etc/passwd has ids in the sandbox range" in failed.stdout
    assert "prepare-instance " + instance["InstanceId"] + ": step uid-range failed" in failed.stderr
    bad_id = account.cli("prepare-instance", "i-nothex")
    assert bad_id.returncode == 125 and "is not an instance id" in bad_id.stderr  # the CLI's own failure
    # An instance SSM does not manage is refused before anything is sent.
    account.server.standin.unmanaged.add(instance["InstanceId"])
    try:
        refused = account.cli("prepare-instance", instance["InstanceId"])
    finally:
        account.server.standin.unmanaged.discard(instance["InstanceId"])
    assert refused.returncode == 125 and "not managed by SSM" in refused.stderr


def test_refuses_a_role_with_more_than_the_ssm_policy(account: Account) -> None:
    iam = account.client("iam")
    extra = "arn:aws:iam::aws:policy/AmazonSSMFullAccess"  # includes ssm:SendCommand on every instance
    iam.attach_role_policy(RoleName=f"{NAME}-role", PolicyArn=extra)
    try:
        proc = account.run("--skip-test")
    finally:
        iam.detach_role_policy(RoleName=f"{NAME}-role", PolicyArn=extra)
    assert proc.returncode == 1
    assert f"role {NAME}-role has policies besides AmazonSSMManagedInstanceCore ({extra})" in proc.stderr
    assert "must not be able to command other instances" in proc.stderr


def test_refuses_a_role_it_did_not_create(account: Account) -> None:
    iam = account.client("iam")
    iam.create_role(RoleName="foreign-role", AssumeRolePolicyDocument="{}")
    before = account.snapshot()
    proc = subprocess.run(
        ["bash", str(SCRIPT), "--name", "foreign", "--config", str(account.config), "--skip-test"],
        env=account.env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 1
    assert "role foreign-role exists but is not tagged ec2-sandbox:name=foreign" in proc.stderr
    assert account.snapshot() == before
    iam.delete_role(RoleName="foreign-role")


def test_bad_arguments_fail_before_any_call(account: Account, tmp_path: Path) -> None:
    help_text = account.run("--help").stdout
    for flag in SCRIPT_FLAGS:
        assert flag in help_text, flag
    broken = tmp_path / "broken.json"
    broken.write_text('{"default": {"region": "us-east-1",}')
    before = account.snapshot()
    proc = subprocess.run(
        ["bash", str(SCRIPT), "--name", NAME, "--config", str(broken)],
        env=account.env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 1 and "is not a JSON object (broken JSON?)" in proc.stderr
    assert "sts" not in proc.stderr and account.snapshot() == before
    assert broken.read_text() == '{"default": {"region": "us-east-1",}'

    for args, message in (
        (["--arch", "sparc"], "--arch 'sparc'"),
        (["--environment", "../x"], "--environment '../x'"),
        (["--ami", "not-an-ami"], "is not an AMI id"),
        (["--bogus"], "unknown option '--bogus'"),
        (["--type"], "--type needs a value"),
        (["--arch", "arm64", "--ami", AMI], f"AMI {AMI} is x86_64, not arm64"),
        (["--min", "2"], "--min and --max size a fleet: add --fleet"),
        (["--fleet", "--min", "3", "--max", "2"], "0 <= min <= max"),
        (["--fleet", "--max", "101"], "1 <= max <= 100"),
        (["--fleet", "--min", "1+1"], "whole numbers"),
        (["--fleet", "--warm-pool", "frozen"], "--warm-pool 'frozen'"),
    ):
        proc = account.run(*args)
        assert proc.returncode == 1 and message in proc.stderr, (args, proc.stderr)


def test_keys_in_the_environment_are_used_without_a_profile(account: Account) -> None:
    keep = ("AWS_ENDPOINT_URL", "AWS_EC2_METADATA_DISABLED")
    env = {k: v for k, v in account.env.items() if not k.startswith("AWS_") or k in keep}
    env |= {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": REGION}
    env |= {"AWS_CONFIG_FILE": "/nonexistent", "AWS_SHARED_CREDENTIALS_FILE": "/nonexistent"}
    proc = subprocess.run(
        ["bash", str(SCRIPT), "--name", "absent", "--delete", "--dry-run"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert "profile none (default credential chain)" in proc.stderr
    assert "[dry-run] reading: aws --region us-east-1 --output json sts get-caller-identity" in proc.stderr
    assert "no instance tagged ec2-sandbox:name=absent" in proc.stderr


def test_delete_removes_everything_tagged(account: Account) -> None:
    (instance,) = account.live_instances()
    before = account.snapshot()
    dry = account.run("--delete", "--dry-run")
    assert dry.returncode == 0, dry.stderr
    prefix = "[dry-run] would run: aws --region us-east-1 --profile default --output json"
    for call in (
        f"ec2 terminate-instances --instance-ids {instance['InstanceId']}",
        "ec2 delete-security-group",
        f"iam remove-role-from-instance-profile --instance-profile-name {NAME}-profile",
        f"iam delete-instance-profile --instance-profile-name {NAME}-profile",
        f"iam detach-role-policy --role-name {NAME}-role --policy-arn {SSM_CORE}",
        f"iam delete-role --role-name {NAME}-role",
    ):
        assert f"{prefix} {call}" in dry.stderr, call
    assert account.snapshot() == before

    proc = account.run("--delete")
    assert proc.returncode == 0, proc.stderr
    assert account.live_instances() == []
    assert account.tagged_groups() == []
    iam = account.client("iam")
    assert f"{NAME}-role" not in [r["RoleName"] for r in iam.list_roles()["Roles"]]
    profiles = iam.list_instance_profiles()["InstanceProfiles"]
    assert f"{NAME}-profile" not in [p["InstanceProfileName"] for p in profiles]
    state = account.client("ec2").describe_instances(InstanceIds=[instance["InstanceId"]])
    assert state["Reservations"][0]["Instances"][0]["State"]["Name"] == "terminated"
    # Deleting again finds nothing and succeeds.
    again = account.run("--delete")
    assert again.returncode == 0, again.stderr
    assert "no instance tagged" in again.stderr and "no security group tagged" in again.stderr


# ---------------------------------------------------------------------------------------------- fleets
FLEET = "sbx-fleet"
FLEET_WRITES = (
    "ec2 create-launch-template",
    "autoscaling create-auto-scaling-group",
    "autoscaling put-warm-pool",
    "autoscaling put-scaling-policy",
    "dynamodb create-table",
    "dynamodb update-time-to-live",
)


def fleet_group(account: Account) -> dict[str, Any] | None:
    groups = account.client("autoscaling").describe_auto_scaling_groups(AutoScalingGroupNames=[FLEET])
    return (groups["AutoScalingGroups"] or [None])[0]


def test_fleet_dry_run_prints_the_fleet_and_makes_nothing(account: Account) -> None:
    before = account.snapshot()
    proc = account.run("--fleet", "--min", "2", "--max", "5", "--dry-run", name=FLEET)
    assert proc.returncode == 0, proc.stderr
    for call in FLEET_WRITES:
        assert (
            f"[dry-run] would run: aws --region us-east-1 --profile default --output json {call}"
            in proc.stderr
        )
    assert "ec2 run-instances" not in proc.stderr  # the group launches the instances, not the script
    assert account.snapshot() == before and fleet_group(account) is None


def test_fleet_end_to_end(account: Account) -> None:
    from ec2_sandbox.testing import ssm_fleet_standin

    ssm_fleet_standin.install()  # multi-target commands for the fleet's status (same server, more of SSM)
    account.config.write_text(
        json.dumps(
            {"agents": {"base_sandbox_dir": str(account.base_dir), "instance_id": "i-0123456789abcdef0"}}
        )
    )
    proc = account.run("--fleet", "--min", "2", "--max", "5", "--environment", "agents", name=FLEET)
    assert proc.returncode == 0, proc.stderr
    assert "hello-world: hello from ec2-sandbox" in proc.stderr
    assert "2 of 2 member(s) healthy" in proc.stderr  # the fleet's status part, from every member

    ec2 = account.client("ec2")
    (template,) = ec2.describe_launch_templates(Filters=[{"Name": f"tag:{TAG_KEY}", "Values": [FLEET]}])[
        "LaunchTemplates"
    ]
    assert template["LaunchTemplateName"] == f"{FLEET}-lt"
    data = ec2.describe_launch_template_versions(LaunchTemplateId=template["LaunchTemplateId"])[
        "LaunchTemplateVersions"
    ][0]["LaunchTemplateData"]
    assert data["MetadataOptions"]["HttpTokens"] == "required"
    assert data["MetadataOptions"]["HttpPutResponseHopLimit"] == 1
    assert data["IamInstanceProfile"] == {"Name": f"{FLEET}-profile"}
    (ebs,) = [m["Ebs"] for m in data["BlockDeviceMappings"]]
    assert ebs["Encrypted"] is True and ebs["VolumeType"] == "gp3"
    assert gzip.decompress(base64.b64decode(data["UserData"])) == USER_DATA.read_bytes()
    (sg,) = account.tagged_groups(FLEET)
    assert data["SecurityGroupIds"] == [sg["GroupId"]] and sg["IpPermissions"] == []
    assert rules(sg["IpPermissionsEgress"]) == INSTANCE_EGRESS

    group = fleet_group(account)
    assert group is not None
    assert (group["MinSize"], group["MaxSize"], group["DesiredCapacity"]) == (2, 5, 2)
    assert {"Key": TAG_KEY, "Value": FLEET} in [{"Key": t["Key"], "Value": t["Value"]} for t in group["Tags"]]
    members = [i["InstanceId"] for i in group["Instances"] if i["LifecycleState"] == "InService"]
    assert len(members) == 2
    autoscaling = account.client("autoscaling")
    warm = autoscaling.describe_warm_pool(AutoScalingGroupName=FLEET)["WarmPoolConfiguration"]
    assert warm["PoolState"] == "Stopped"
    (policy,) = autoscaling.describe_policies(AutoScalingGroupName=FLEET)["ScalingPolicies"]
    tracking = policy["TargetTrackingConfiguration"]
    assert policy["PolicyType"] == "TargetTrackingScaling" and tracking["TargetValue"] == 60.0
    assert tracking["PredefinedMetricSpecification"]["PredefinedMetricType"] == "ASGAverageCPUUtilization"
    ddb = account.client("dynamodb")
    table = ddb.describe_table(TableName=f"{FLEET}-fleet")["Table"]
    assert {k["AttributeName"]: k["KeyType"] for k in table["KeySchema"]} == {"pk": "HASH", "sk": "RANGE"}
    ttl = ddb.describe_time_to_live(TableName=f"{FLEET}-fleet")["TimeToLiveDescription"]
    assert ttl["AttributeName"] == "ttl"

    config = json.loads(account.config.read_text())
    assert config["agents"] == {
        "base_sandbox_dir": str(account.base_dir),
        "transport": "fleet",
        "fleet_auto_scaling_group": FLEET,
        "fleet_table": f"{FLEET}-fleet",
        "region": REGION,
        "aws_profile": "default",
    }  # the single instance it named before is gone from it: an environment is one or the other


def test_fleet_rerun_resizes_and_restores_the_template(account: Account) -> None:
    ec2 = account.client("ec2")
    (template,) = ec2.describe_launch_templates(LaunchTemplateNames=[f"{FLEET}-lt"])["LaunchTemplates"]
    proc = account.run(
        "--fleet", "--min", "1", "--max", "6", "--skip-test", "--environment", "agents", name=FLEET
    )
    assert proc.returncode == 0, proc.stderr
    group = fleet_group(account)
    assert group is not None and (group["MinSize"], group["MaxSize"]) == (1, 6)
    (again,) = ec2.describe_launch_templates(LaunchTemplateNames=[f"{FLEET}-lt"])["LaunchTemplates"]
    assert again["DefaultVersionNumber"] == template["DefaultVersionNumber"] + 1
    assert "table sbx-fleet-fleet exists" in proc.stderr


def test_fleet_delete_removes_group_template_table_and_the_rest(account: Account) -> None:
    group = fleet_group(account)
    assert group is not None
    members = [i["InstanceId"] for i in group["Instances"]]
    proc = account.run("--delete", name=FLEET)
    assert proc.returncode == 0, proc.stderr
    assert fleet_group(account) is None
    ec2 = account.client("ec2")
    left = ec2.describe_launch_templates(Filters=[{"Name": f"tag:{TAG_KEY}", "Values": [FLEET]}])
    assert left["LaunchTemplates"] == []
    assert f"{FLEET}-fleet" not in account.client("dynamodb").list_tables()["TableNames"]
    states = ec2.describe_instances(InstanceIds=members)["Reservations"]
    assert all(i["State"]["Name"] == "terminated" for r in states for i in r["Instances"])
    assert account.live_instances(FLEET) == [] and account.tagged_groups(FLEET) == []
    assert f"{FLEET}-role" not in [r["RoleName"] for r in account.client("iam").list_roles()["Roles"]]
