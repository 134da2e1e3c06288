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
    "--name", "--type", "--arch", "--ami", "--subnet", "--region", "--profile",
    "--environment", "--config", "--skip-test", "--dry-run", "--delete", "--help",
)  # fmt: skip

pytestmark = pytest.mark.skipif(
    shutil.which("aws", path=str(BIN)) is None or shutil.which("jq") is None,
    reason="needs the AWS CLI (dev group) and jq",
)


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
        self.env = {
            "PATH": f"{BIN}:{os.environ.get('PATH', '/usr/bin:/bin')}",
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

    def run(self, *args: str, timeout: float = 240) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["bash", str(SCRIPT), "--name", NAME, "--config", str(self.config), *args],
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
    from moto.ec2.models import ec2_backends
    from moto.ssm.models import Parameter, ssm_backends

    from ec2_sandbox.testing import ssm_standin

    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MOTO_IAM_LOAD_MANAGED_POLICIES", "true")
        with ssm_standin.serve() as server:
            # Fresh backends, so IAM is built with the AWS managed policies loaded.
            urllib.request.urlopen(urllib.request.Request(f"{server.url}/moto-api/reset", method="POST"))
            # moto has neither the EC2 Instance Connect prefix list nor Canonical's public AMI parameter.
            ec2_backends[ACCOUNT][REGION]._create_aws_managed_prefix_list(
                name=f"com.amazonaws.{REGION}.ec2-instance-connect",
                address_family="IPv4",
                entries=[{"Cidr": "18.206.107.24/29", "Description": "default"}],
            )
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


@pytest.fixture(scope="module")
def eic_prefix_list(account: Account) -> str:
    lists = account.client("ec2").describe_managed_prefix_lists(
        Filters=[{"Name": "prefix-list-name", "Values": [f"com.amazonaws.{REGION}.ec2-instance-connect"]}]
    )
    return lists["PrefixLists"][0]["PrefixListId"]


def test_dry_run_prints_every_change_and_makes_none(account: Account) -> None:
    before = account.snapshot()
    proc = account.run("--dry-run")
    assert proc.returncode == 0, proc.stderr
    out = proc.stderr
    for call in (
        "iam create-role",
        "iam attach-role-policy",
        "iam create-instance-profile",
        "iam add-role-to-instance-profile",
        "ec2 create-security-group",
        "ec2 authorize-security-group-ingress",
        "ec2 revoke-security-group-egress",
        "ec2 authorize-security-group-egress",
        "ec2 run-instances",
    ):
        assert f"[dry-run] would run: aws --region us-east-1 --profile default --output json {call}" in out
    assert "[dry-run] reading:" in out and "sts get-caller-identity" in out
    assert account.snapshot() == before
    assert not account.config.exists()


def test_create_end_to_end(account: Account, eic_prefix_list: str, monkeypatch: pytest.MonkeyPatch) -> None:
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
    assert len(group["IpPermissions"]) == 1
    (ssh,) = group["IpPermissions"]
    assert (ssh["IpProtocol"], ssh["FromPort"], ssh["ToPort"]) == ("tcp", 22, 22)
    assert [p["PrefixListId"] for p in ssh["PrefixListIds"]] == [eic_prefix_list]
    assert not ssh.get("IpRanges") and not ssh.get("Ipv6Ranges") and not ssh.get("UserIdGroupPairs")
    assert "0.0.0.0/0" not in json.dumps(group["IpPermissions"])
    egress = {
        (p["IpProtocol"], p.get("FromPort"), p.get("ToPort"), r["CidrIp"])
        for p in group["IpPermissionsEgress"]
        for r in p.get("IpRanges", [])
    }
    assert egress == {
        ("tcp", 443, 443, "0.0.0.0/0"),
        ("tcp", 80, 80, "0.0.0.0/0"),
        ("udp", 53, 53, "0.0.0.0/0"),
        ("tcp", 53, 53, "0.0.0.0/0"),
    }

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


def test_rerun_reuses_everything_and_repairs_drift(account: Account, eic_prefix_list: str) -> None:
    ec2 = account.client("ec2")
    (instance,) = account.live_instances()
    (group,) = account.tagged_groups()
    before = account.snapshot()
    # Someone opened ssh to the world and relaxed the metadata options.
    ec2.authorize_security_group_ingress(
        GroupId=group["GroupId"],
        IpPermissions=[
            {"IpProtocol": "tcp", "FromPort": 22, "ToPort": 22, "IpRanges": [{"CidrIp": "0.0.0.0/0"}]}
        ],
    )
    ec2.modify_instance_metadata_options(
        InstanceId=instance["InstanceId"], HttpTokens="optional", HttpPutResponseHopLimit=2
    )
    assert account.snapshot() != before
    proc = account.run("--skip-test")
    assert proc.returncode == 0, proc.stderr
    out = proc.stderr
    for word in ("created", "launched", "attached", "added ingress", "added egress", "started"):
        assert word not in out, out
    assert "revoked ingress rules not ours" in out and "0.0.0.0/0" in out
    assert "IMDSv2 now required" in out
    # Back to exactly what the first run made: same role, profile, group rules and instance.
    assert account.snapshot() == before
    (again,) = account.live_instances()
    assert again["MetadataOptions"]["HttpTokens"] == "required"
    assert again["MetadataOptions"]["HttpPutResponseHopLimit"] == 1
    (group,) = account.tagged_groups()
    assert [p["PrefixListId"] for p in group["IpPermissions"][0]["PrefixListIds"]] == [eic_prefix_list]


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
