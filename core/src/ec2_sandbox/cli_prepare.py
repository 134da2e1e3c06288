"""``ec2-sandbox prepare-instance``: give an existing SSM-managed instance the sandbox's instance-side setup.

It sends the very script a new instance gets as user-data (``provisioning/user-data.sh``, shipped inside this
package) over SSM Run Command, waits for it, and reports each step the script took. The script is idempotent,
so running this again on a prepared instance changes nothing and says so.

The script travels gzip-compressed and base64-encoded inside the command: SSM substitutes ``{{...}}`` in
command text, and the encoded form keeps the script byte-exact whatever it contains.
"""

from __future__ import annotations

import argparse
import base64
import gzip
import re
import sys
import time
from dataclasses import asdict, dataclass
from importlib import resources
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError

from . import cli
from .aws_session import client
from .config import INSTANCE_ID_RE, SandboxConfig
from .errors import ConfigError, InvalidInputError, SandboxError
from .hookspecs import Subparsers

#: Seconds the setup may run on the instance (package installs on a fresh instance take a few minutes).
DEFAULT_TIMEOUT = 1800
STEP_RE = re.compile(r"^ec2-sandbox-setup: (?P<step>[a-z-]+): (?P<status>[a-z]+): (?P<detail>.*)$")
FINAL_STATUSES = ("Success", "Failed", "TimedOut", "Cancelled")
#: SendCommand's TimeoutSeconds. The agent may take the command until TimeoutSeconds + executionTimeout
#: (AWS's "total timeout"), so that, plus the run, bounds the wait.
DELIVERY_TIMEOUT = 60
SSH_SUDO_NOTE = (
    "the eic and ssh transports need ssh_sudo: true for per-session uids and the metadata guard "
    "(the guard covers the sandbox uids, which only a runner started as root hands out)"
)


@dataclass
class Step:
    step: str
    status: str
    detail: str


def setup_script() -> bytes:
    """The instance setup script, as shipped in the package."""
    return resources.files("ec2_sandbox").joinpath("provisioning/user-data.sh").read_bytes()


def build_commands(cleanup_hours: int, setup_root: str | None = None) -> list[str]:
    """The AWS-RunShellScript commands that run the setup script on the instance."""
    packed = base64.b64encode(gzip.compress(setup_script(), mtime=0)).decode("ascii")
    env = [f"EC2_SANDBOX_CLEANUP_HOURS={int(cleanup_hours)}"]
    if setup_root is not None:
        if not setup_root.startswith("/") or not re.fullmatch(r"[A-Za-z0-9._/-]+", setup_root):
            raise InvalidInputError(
                f"--setup-root {setup_root!r} must be an absolute path of plain characters"
            )
        env.append(f"SANDBOX_ROOT={setup_root}")
    return [
        "#!/bin/bash",
        "set -euo pipefail",
        'script=$(mktemp "${TMPDIR:-/tmp}/ec2-sandbox-setup.XXXXXX")',
        "trap 'rm -f \"$script\"' EXIT",
        f"printf '%s' '{packed}' | base64 -d | gunzip > \"$script\"",
        f'env {" ".join(env)} bash "$script"',
    ]


def parse_steps(stdout: str) -> list[Step]:
    steps = []
    for line in stdout.splitlines():
        match = STEP_RE.match(line.strip())
        if match:
            steps.append(Step(**match.groupdict()))
    return steps


def register(sub: Subparsers) -> None:
    p = sub.add_parser(
        "prepare-instance",
        help="apply the sandbox's instance-side setup to an existing SSM-managed instance",
        description=(
            "Run the instance setup (packages, sandbox uid range, base dir, metadata firewall rule, cleanup "
            "timer, marker) on an existing instance over SSM Run Command, and report each step. Idempotent. "
            "Region and credentials come from the environment chosen with -E, unless given here. "
            "Exit status 0 when every step succeeded, 1 otherwise."
        ),
    )
    p.add_argument(
        "instance_id",
        metavar="INSTANCE_ID",
        nargs="?",
        help="the instance (none: every member of -E's fleet)",
    )
    p.add_argument("--region", help="AWS region (default: the environment's)")
    p.add_argument("--profile", help="AWS profile (default: the environment's)")
    p.add_argument(
        "--cleanup-hours",
        type=int,
        default=None,
        help="age in hours after which the cleanup timer removes work dirs (default: the environment's)",
    )
    p.add_argument(
        "--timeout",
        type=int,
        default=DEFAULT_TIMEOUT,
        help=f"seconds the setup may run on the instance (default: {DEFAULT_TIMEOUT})",
    )
    p.add_argument("--json", action="store_true", help="print the steps as JSON")
    # For tests against a local SSM stand-in: write below this directory instead of / (see user-data.sh).
    p.add_argument("--setup-root", help=argparse.SUPPRESS)
    p.set_defaults(handler=cmd_prepare)


def _config(args: argparse.Namespace) -> SandboxConfig:
    overrides: dict[str, Any] = {"instance_id": args.instance_id}
    if args.region:
        overrides["region"] = args.region
    if args.profile:
        overrides["aws_profile"] = args.profile
    return cli.environment_config(args, **overrides)


def _progress(message: str) -> None:
    print(f"prepare-instance: {message}", file=sys.stderr, flush=True)


def _aws_error(exc: Exception, doing: str) -> SandboxError:
    if isinstance(exc, ClientError):
        err = exc.response.get("Error", {})
        return SandboxError(f"{doing}: {err.get('Code', 'error')}: {err.get('Message', exc)}")
    return SandboxError(f"{doing}: {exc}")


def _call(fn: Any, doing: str, **kwargs: Any) -> dict[str, Any]:
    """One API call, retried with backoff while AWS throttles."""
    delay = 0.5
    for attempt in range(8):
        try:
            return fn(**kwargs)
        except ClientError as exc:
            code = exc.response.get("Error", {}).get("Code", "")
            if code in ("ThrottlingException", "Throttling", "TooManyRequestsException") and attempt < 7:
                time.sleep(delay)
                delay = min(delay * 2, 8.0)
                continue
            raise _aws_error(exc, doing) from None
        except BotoCoreError as exc:
            raise _aws_error(exc, doing) from None
    raise AssertionError("unreachable")


def check_managed(ssm: Any, instance_id: str) -> None:
    info = _call(
        ssm.describe_instance_information,
        f"asking SSM about {instance_id}",
        Filters=[{"Key": "InstanceIds", "Values": [instance_id]}],
    )
    entries = info.get("InstanceInformationList") or []
    if not entries:
        raise SandboxError(
            f"{instance_id} is not managed by SSM in this account and region: it needs the SSM agent and an "
            "instance profile with AmazonSSMManagedInstanceCore (docs/manual-setup.md)"
        )
    ping = entries[0].get("PingStatus")
    if ping != "Online":
        raise SandboxError(f"the SSM agent on {instance_id} is {ping}, not Online; start the instance first")
    platform = entries[0].get("PlatformType")
    if platform and platform != "Linux":
        raise SandboxError(f"{instance_id} runs {platform}; the sandbox setup needs Linux")


def run_setup(ssm: Any, instance_id: str, commands: list[str], timeout: int) -> dict[str, Any]:
    """Send the setup and wait for its invocation to finish; return the final invocation."""
    sent = _call(
        ssm.send_command,
        f"sending the setup to {instance_id}",
        InstanceIds=[instance_id],
        DocumentName="AWS-RunShellScript",
        Comment="ec2-sandbox prepare-instance",
        Parameters={"commands": commands, "executionTimeout": [str(timeout)]},
        TimeoutSeconds=DELIVERY_TIMEOUT,
    )
    command_id = sent["Command"]["CommandId"]
    _progress(f"setup sent to {instance_id} (command {command_id}); waiting for it to finish")
    start = time.monotonic()
    deadline = start + DELIVERY_TIMEOUT + 2 * timeout + 60
    delay = 0.2
    last_report = start
    while True:
        try:
            inv = ssm.get_command_invocation(CommandId=command_id, InstanceId=instance_id)
        except ClientError as exc:
            code = exc.response.get("Error", {}).get("Code", "")
            if code not in ("InvocationDoesNotExist", "ThrottlingException", "Throttling"):
                raise _aws_error(exc, "reading the setup's result") from None
            inv = {"Status": "Pending"}
        except BotoCoreError as exc:
            raise _aws_error(exc, "reading the setup's result") from None
        if inv.get("Status") in FINAL_STATUSES:
            return inv
        now = time.monotonic()
        if now > deadline:
            raise SandboxError(f"the setup on {instance_id} did not finish within {deadline - start:.0f} s")
        if now - last_report >= 15:
            _progress(f"still {inv.get('Status', 'Pending')} after {now - start:.0f} s")
            last_report = now
        time.sleep(delay)
        delay = min(delay * 1.5, 5.0)


def ssh_notes(config: SandboxConfig) -> list[str]:
    """What to know before using eic/ssh with this instance, and whether the environment already does."""
    if config.transport in ("eic", "ssh") and not config.ssh_sudo:
        return [f"this environment uses {config.transport} without ssh_sudo: {SSH_SUDO_NOTE}"]
    return [SSH_SUDO_NOTE]


def cmd_prepare(args: argparse.Namespace) -> int:
    if args.instance_id is None:
        from .fleet.prepare import cmd_prepare_fleet

        return cmd_prepare_fleet(args)
    if not INSTANCE_ID_RE.match(args.instance_id):
        raise InvalidInputError(f"{args.instance_id!r} is not an instance id (i- and 8 or 17 hex digits)")
    if not 60 <= args.timeout <= 172800:
        raise InvalidInputError("--timeout must be between 60 and 172800 seconds")
    config = _config(args)
    if not config.region:
        raise ConfigError("no region: pass --region or set one in the environment (or AWS_REGION)")
    hours = args.cleanup_hours if args.cleanup_hours is not None else config.cleanup_after_hours
    if not 1 <= hours <= 8760:
        raise InvalidInputError("--cleanup-hours must be between 1 and 8760")
    commands = build_commands(hours, args.setup_root)  # checks --setup-root before any AWS call
    ssm = client(config, "ssm")
    check_managed(ssm, args.instance_id)
    inv = run_setup(ssm, args.instance_id, commands, args.timeout)
    steps = parse_steps(inv.get("StandardOutputContent", ""))
    completed = any(s.step == "complete" and s.status == "ok" for s in steps)
    ok = inv.get("Status") == "Success" and completed
    if args.json:
        cli.print_json(
            {
                "instance_id": args.instance_id,
                "ok": ok,
                "status": inv.get("Status"),
                "steps": [asdict(s) for s in steps],
                "stderr": inv.get("StandardErrorContent", ""),
                "notes": ssh_notes(config) if ok else [],
            }
        )
    else:
        for s in steps:
            print(f"  [{s.status}] {s.step}: {s.detail}")
    if not ok:
        failed = next((s for s in steps if s.status == "failed"), None)
        reason = (
            f"step {failed.step} failed: {failed.detail}"
            if failed
            else f"SSM status {inv.get('Status')} ({inv.get('StatusDetails')})"
        )
        stderr = inv.get("StandardErrorContent", "").strip()
        if stderr and not args.json:
            print(stderr, file=sys.stderr)
        print(f"ec2-sandbox: prepare-instance {args.instance_id}: {reason}", file=sys.stderr)
        return 1
    if not args.json:
        print(f"{args.instance_id} is prepared for ec2-sandbox")
        for note in ssh_notes(config):
            print(f"note: {note}")
    return 0
