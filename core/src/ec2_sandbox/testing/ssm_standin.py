"""A local stand-in for AWS Systems Manager Run Command, built on moto, as strict as AWS.

moto's own SSM backend accepts ``send_command`` and executes nothing. This module replaces its Run Command
methods so that commands really run on this machine the way the SSM agent runs them on an instance. Each
behaviour follows a document; where a document left room, the stand-in takes the harsher reading.

Running (the AWS-RunShellScript document; amazon-ssm-agent ``agent/plugins/runscript``,
``agent/executers/executers.go``):

* the ``commands`` joined with newlines into ``_script.sh``, run with ``sh`` (dash on Debian/Ubuntu) unless
  the first line is a shebang, working dir ``/usr/bin``, as the current user (root in CI), in a process group
  of its own (``Setpgid``, executers_unix.go), with the agent's plain system ``PATH``;
* the command ends when the script exited and its output pipes closed (a background child that keeps stdout
  open keeps it InProgress);
* at most five commands run at once on one instance: the agent's worker pool, ``Mds.CommandWorkersLimit``,
  "Default: 5" (amazon-ssm-agent README, agent/appconfig DefaultConfig); later commands wait for a worker
  (InProgress, not started) - commands sent in parallel do not all run in parallel;
* ``executionTimeout`` (AWS-RunShellScript: 1 to 172800, default 3600) enforced by SIGKILL to the group; the
  agent then reports exit code 137 (``CommandStoppedPreemptivelyExitCode``, executers_unix.go) and
  ``GetStatus(137)`` makes that Status ``TimedOut`` (agent/plugins/pluginutil/pluginutil_unix.go): so a
  timeout is ``TimedOut``/``ExecutionTimedOut`` with ResponseCode **137**, and so is a script that exits 137
  by itself; any other non-zero exit is ``Failed`` with its output;

Results (GetCommandInvocation API reference):

* ``ResponseCode`` -1 and empty output until the plugin ends; ``ExecutionStartDateTime`` empty until the
  plugin starts ("If the plugin hasn't started to run, the string is empty");
* ``StandardOutputContent`` is "the first 24,000 characters" of stdout and ``StandardErrorContent`` "the first
  8,000 characters" of stderr, with a truncation marker;
* ``InvocationDoesNotExist`` for the first polls of a new command (eventual consistency; configurable),
  injectable throttling and errors, an optional delivery latency and a random extra latency per command
  (``delivery_jitter``: commands sent in one order may start, and end, in another);

Delivery (SendCommand API reference; "Understanding command statuses" and "Understanding command timeout
values", https://docs.aws.amazon.com/systems-manager/latest/userguide/monitor-commands.html):

* ``TimeoutSeconds`` must be 30 to 2592000 (default 3600), else ``InvalidParameters`` (harsher than AWS's
  ValidationException wording, same refusal);
* an instance moto does not know, one shutting down or terminated, or one marked unmanaged is refused with
  ``InvalidInstanceId``; running, pending, stopping and stopped instances are valid targets;
* the delivery deadline is ``TimeoutSeconds`` **plus** ``executionTimeout`` ("Total timeout"); the command's
  ``ExpiresAfter`` says so;
* a command the agent cannot take (instance stopped, agent ``ConnectionLost``) is **InProgress**, not
  Pending: "If the agent isn't running or available on the node, the command status remains at In Progress
  until the agent is available again, or until the execution timeout limit is reached"; at the deadline it
  ends ``TimedOut``/``DeliveryTimedOut``; if the agent comes back before, the command runs;
* terminal details that are not statuses of their own end as Status ``Failed`` with that StatusDetails:
  ``InvalidPlatform`` (a Windows instance: AWS-RunShellScript targets Linux), ``Undeliverable`` (the instance
  was terminated before the agent took the command: "The node might not exist or might not be responding"),
  and, on demand for one instance (:attr:`StandIn.outcome`), ``AccessDenied`` and ``Terminated``;
* the parameters are refused with ``MaxDocumentSizeExceeded`` above 64 KB (the only documented limit: the SSM
  document size);

Cancelling and reading (CancelCommand, ListCommandInvocations, DescribeInstanceInformation API references):

* ``cancel_command`` stops a running script (SIGTERM, then SIGKILL) and ends it ``Cancelled``; a command not
  yet delivered is cancelled at once;
* with ``OutputS3BucketName``, the complete stdout and stderr uploaded to (moto's) S3 under
  ``<prefix>/<command>/<instance>/awsrunShellScript/0.awsrunShellScript/``, as the agent does;
* ``describe_instance_information`` reports ``PingStatus`` (``ConnectionLost`` for a stopped instance) -
  which moto leaves unimplemented, as it does ``list_command_invocations`` and ``cancel_command``.

EC2 state (``run_instances``, ``stop_instances``) stays moto's, and requests go through botocore for real:
serialisation, error parsing and retries are exercised as they would be against AWS.

In-process, use :func:`serve` (a moto server on 127.0.0.1 and a free port) and point clients at it with
``AWS_ENDPOINT_URL``. As a separate process: ``python -m ec2_sandbox.testing.ssm_standin --port N``.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import logging
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, Protocol, cast

from moto.core.exceptions import ServiceException
from moto.core.responses import ActionResult, EmptyResult
from moto.ec2.models import ec2_backends
from moto.moto_server.threaded_moto_server import ThreadedMotoServer
from moto.ssm.models import Command, SimpleSystemManagerBackend
from moto.ssm.responses import SimpleSystemManagerResponse

from . import eic_endpoints

STDOUT_CAP = 24_000
STDERR_CAP = 8_000
TRUNCATION_MARKER = "\n---Output truncated---"
#: Roughly what SSM accepts in one command's parameters before ``MaxDocumentSizeExceeded``.
MAX_PARAMETERS_BYTES = 64 * 1024
AGENT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
#: What the agent reports for a script it killed (CommandStoppedPreemptivelyExitCode, executers_unix.go).
KILLED_EXIT = 137
#: SendCommand's TimeoutSeconds: "Minimum value of 30. Maximum value of 2592000"; 3600 when not given.
TIMEOUT_SECONDS_MIN, TIMEOUT_SECONDS_MAX, TIMEOUT_SECONDS_DEFAULT = 30, 2_592_000, 3600
#: StatusDetails that end an invocation as Status Failed without running it (monitor-commands.html).
FAILED_DETAILS = ("Undeliverable", "AccessDenied", "InvalidPlatform", "Terminated")
AGENT_VERSION = "3.3.1142.0"
FINAL = ("Success", "Failed", "TimedOut", "Cancelled")


class SSMError(ServiceException):
    """An error the stand-in returns, serialised by moto the way AWS sends it."""


@dataclass
class Invocation:
    """One command on one instance, as the agent runs it."""

    command_id: str
    instance_id: str
    script: str
    execution_timeout: float
    delivery_timeout: float
    comment: str
    missing_polls: int
    account_id: str = "123456789012"
    region: str = "us-east-1"
    #: OutputS3BucketName / OutputS3KeyPrefix: where the agent uploads the full output, if set.
    output_bucket: str = ""
    output_prefix: str = ""
    stdout_url: str = ""
    stderr_url: str = ""
    requested: datetime.datetime = field(default_factory=lambda: datetime.datetime.now(datetime.UTC))
    status: str = "Pending"
    details: str = "Pending"
    response_code: int = -1
    stdout: str = ""
    stderr: str = ""
    started: datetime.datetime | None = None
    ended: datetime.datetime | None = None
    proc: subprocess.Popen[bytes] | None = None
    cancelled: bool = False
    done: threading.Event = field(default_factory=threading.Event)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def response(self) -> dict[str, Any]:
        elapsed = ((self.ended or self.started or self.requested) - self.requested).total_seconds()
        final = self.status in FINAL
        return {
            "CommandId": self.command_id,
            "InstanceId": self.instance_id,
            "Comment": self.comment,
            "DocumentName": "AWS-RunShellScript",
            "DocumentVersion": "$DEFAULT",
            "PluginName": "aws:runShellScript",
            "ResponseCode": self.response_code,
            "ExecutionStartDateTime": self.started.isoformat() if self.started else "",
            "ExecutionElapsedTime": f"PT{elapsed:.3f}S",
            "ExecutionEndDateTime": self.ended.isoformat() if self.ended else "",
            "Status": self.status,
            "StatusDetails": self.details,
            "StandardOutputContent": self.stdout if final else "",
            "StandardOutputUrl": self.stdout_url if final else "",
            "StandardErrorContent": self.stderr if final else "",
            "StandardErrorUrl": self.stderr_url if final else "",
        }


@dataclass
class StandIn:
    """The stand-in's knobs and state. One instance, :data:`STANDIN`, serves every moto backend."""

    #: Seconds between send_command and the script starting (the agent picking the command up).
    delivery_latency: float = 0.0
    #: Up to this many more seconds, drawn at random per command: commands overtake one another.
    delivery_jitter: float = 0.0
    #: Commands one instance's agent runs at once (Mds.CommandWorkersLimit, default 5).
    workers_limit: int = 5
    #: get_command_invocation answers InvocationDoesNotExist this many times for each new command.
    missing_polls: int = 0
    #: When set, replaces every command's delivery deadline (on AWS TimeoutSeconds + executionTimeout, so
    #: at least 31 s): tests of a command that is never delivered need not wait that long.
    delivery_timeout: float | None = None
    #: Instances whose invocations end Status Failed with this StatusDetails (one of FAILED_DETAILS).
    outcome: dict[str, str] = field(default_factory=dict)
    #: Instances whose agent reports this ping status (default Online for running instances).
    ping_status: dict[str, str] = field(default_factory=dict)
    #: Instances that exist in EC2 but are not registered with SSM.
    unmanaged: set[str] = field(default_factory=set)
    #: SSM API calls seen, by operation name.
    calls: Counter[str] = field(default_factory=Counter)
    #: Where each call is also written as a line "<unix time> <operation>" (``--call-log``), if anywhere.
    call_log: Any = None
    invocations: dict[tuple[str, str], Invocation] = field(default_factory=dict)
    #: Extension point (kept by :meth:`reset`): maps the argv the agent would run for an invocation to the
    #: argv actually started, so that a stand-in of several instances can give each its own filesystem.
    launcher: Callable[[Invocation, list[str]], list[str]] | None = None
    #: Extension point (kept by :meth:`reset`): hands a new command's invocations to their agents (default:
    #: all at once), so that a stand-in of several instances can apply MaxConcurrency and MaxErrors.
    dispatcher: Callable[[Command, list[Invocation]], None] | None = None
    _faults: dict[str, list[tuple[str, str]]] = field(default_factory=dict)
    _workers: dict[str, threading.BoundedSemaphore] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    #: Most commands seen running at once on one instance (what the worker limit allowed).
    peak_running: int = 0
    _running: Counter[str] = field(default_factory=Counter)

    def reset(self) -> None:
        """Back to defaults; commands still running are killed."""
        for inv in list(self.invocations.values()):
            _kill(inv, signal.SIGKILL)
        with self._lock:
            self.delivery_latency = 0.0
            self.delivery_jitter = 0.0
            self.workers_limit = 5
            self._workers.clear()
            self._running.clear()
            self.peak_running = 0
            self.missing_polls = 0
            self.delivery_timeout = None
            self.ping_status.clear()
            self.outcome.clear()
            self.unmanaged.clear()
            self.calls.clear()
            self.invocations.clear()
            self._faults.clear()

    def throttle(self, operation: str, times: int = 1) -> None:
        """The next ``times`` calls of ``operation`` (e.g. 'GetCommandInvocation') are throttled."""
        self.fail(operation, "ThrottlingException", "Rate exceeded", times)

    def fail(self, operation: str, code: str, message: str, times: int = 1) -> None:
        """The next ``times`` calls of ``operation`` fail with the AWS error ``code``."""
        with self._lock:
            self._faults.setdefault(operation, []).extend([(code, message)] * times)

    def gate(self, operation: str) -> None:
        """Count a call (and log it, when a call log is open), and raise the fault queued for it, if any."""
        with self._lock:
            self.calls[operation] += 1
            if self.call_log is not None:
                self.call_log.write(f"{time.time():.6f} {operation}\n")
                self.call_log.flush()
            queue = self._faults.get(operation)
            fault = queue.pop(0) if queue else None
        if fault is not None:
            raise SSMError(*fault)

    def ssm_calls(self) -> int:
        return sum(self.calls.values())

    @contextlib.contextmanager
    def worker(self, instance_id: str) -> Iterator[None]:
        """One of the instance agent's command workers, held while a script runs."""
        with self._lock:
            pool = self._workers.get(instance_id)
            if pool is None:
                pool = self._workers[instance_id] = threading.BoundedSemaphore(max(1, self.workers_limit))
        with pool:
            with self._lock:
                self._running[instance_id] += 1
                self.peak_running = max(self.peak_running, self._running[instance_id])
            try:
                yield
            finally:
                with self._lock:
                    self._running[instance_id] -= 1


STANDIN = StandIn()
_installed = False
_install_lock = threading.Lock()


# --------------------------------------------------------------------------------------------------
# Running a script the way the agent does
# --------------------------------------------------------------------------------------------------


def _cap(data: bytes, limit: int) -> str:
    text = data.decode("utf-8", "replace")
    if len(text) > limit:
        return text[:limit] + TRUNCATION_MARKER
    return text


def _kill(inv: Invocation, sig: int) -> None:
    proc = inv.proc
    if proc is not None and proc.poll() is None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, sig)


def _finish(
    inv: Invocation, status: str, details: str, code: int, out: bytes = b"", err: bytes = b""
) -> None:
    with inv.lock:
        if inv.status in FINAL:
            return
        inv.stdout = _cap(out, STDOUT_CAP)
        inv.stderr = _cap(err, STDERR_CAP)
        if inv.output_bucket and inv.started is not None:
            _upload_output(inv, out, err)
        inv.response_code = code
        inv.ended = datetime.datetime.now(datetime.UTC)
        inv.details = details
        inv.status = status
    inv.done.set()


def output_key(prefix: str, command_id: str, instance_id: str, stream: str) -> str:
    """Where the agent puts a command's full output in S3 (``stream``: stdout or stderr)."""
    parts = [prefix.strip("/")] if prefix.strip("/") else []
    parts += [command_id, instance_id, "awsrunShellScript", "0.awsrunShellScript", stream]
    return "/".join(parts)


def _upload_output(inv: Invocation, out: bytes, err: bytes) -> None:
    """The agent's upload of the complete output (as with the instance profile's s3:PutObject)."""
    from moto.s3.models import s3_backends

    backend = s3_backends[inv.account_id]["global"]
    try:
        backend.get_bucket(inv.output_bucket)
    except Exception:
        return  # the agent logs the failed upload; the invocation keeps its truncated output only
    for stream, data in (("stdout", out), ("stderr", err)):
        key = output_key(inv.output_prefix, inv.command_id, inv.instance_id, stream)
        backend.put_object(inv.output_bucket, key, data)
        url = f"https://s3.{inv.region}.amazonaws.com/{inv.output_bucket}/{key}"
        if stream == "stdout":
            inv.stdout_url = url
        else:
            inv.stderr_url = url


def _deliverable(instance_id: str, region: str, account: str) -> bool:
    state = _instance_state(instance_id, region, account)
    return state == "running" and STANDIN.ping_status.get(instance_id, "Online") == "Online"


def _instance(instance_id: str, region: str, account: str) -> Any:
    try:
        return ec2_backends[account][region].get_instance(instance_id)
    except Exception:
        return None


def _instance_state(instance_id: str, region: str, account: str) -> str | None:
    instance = _instance(instance_id, region, account)
    return None if instance is None else instance.state


def _failure(instance_id: str, region: str, account: str) -> str | None:
    """The StatusDetails an invocation on ``instance_id`` ends with as Status Failed, if any."""
    if instance_id in STANDIN.outcome:
        return STANDIN.outcome[instance_id]
    instance = _instance(instance_id, region, account)
    if instance is None or instance.state in ("shutting-down", "terminated"):
        return "Undeliverable"
    if (getattr(instance, "platform", None) or "").lower() == "windows":
        return "InvalidPlatform"
    return None


def _waiting(inv: Invocation) -> None:
    """The service has the command but the agent has not taken it: InProgress, as AWS reports it."""
    with inv.lock:
        if inv.status == "Pending":
            inv.status = inv.details = "InProgress"


def _agent(inv: Invocation, region: str, account: str) -> None:
    """The agent's side: wait for delivery, run the script, record the outcome."""
    deadline = time.monotonic() + inv.delivery_timeout
    latency = STANDIN.delivery_latency + random.uniform(0.0, STANDIN.delivery_jitter)  # noqa: S311 (timing, not secrets)
    if latency:
        time.sleep(latency)
    while True:
        if inv.cancelled:
            return
        failure = _failure(inv.instance_id, region, account)
        if failure is not None:
            _finish(inv, "Failed", failure, -1)
            return
        if _deliverable(inv.instance_id, region, account):
            break
        _waiting(inv)
        if time.monotonic() >= deadline:
            _finish(inv, "TimedOut", "DeliveryTimedOut", -1)
            return
        time.sleep(0.05)
    with STANDIN.worker(inv.instance_id):
        if inv.cancelled:
            return
        workdir = tempfile.mkdtemp(prefix=f"ssm-{inv.command_id[:8]}-")
        try:
            _execute(inv, workdir)
        finally:
            shutil.rmtree(workdir, ignore_errors=True)


def _execute(inv: Invocation, workdir: str) -> None:
    path = os.path.join(workdir, "_script.sh")
    with open(path, "w", encoding="utf-8") as fh:
        fh.write(inv.script)
    os.chmod(path, 0o700)
    argv = [path] if inv.script.startswith("#!") else ["/bin/sh", path]
    if STANDIN.launcher is not None:
        argv = STANDIN.launcher(inv, argv)
    env = {
        "PATH": AGENT_PATH,
        "AWS_SSM_INSTANCE_ID": inv.instance_id,
        "AWS_SSM_REGION_NAME": os.environ.get("AWS_DEFAULT_REGION", "us-east-1"),
    }
    with inv.lock:
        if inv.cancelled:
            return
        inv.proc = subprocess.Popen(
            argv,
            cwd="/usr/bin",
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            start_new_session=True,
        )
        inv.started = datetime.datetime.now(datetime.UTC)
        inv.status = inv.details = "InProgress"
    proc = inv.proc
    stdout_pipe, stderr_pipe = proc.stdout, proc.stderr
    assert stdout_pipe is not None and stderr_pipe is not None  # started with both PIPE just above
    out: list[bytes] = []
    err: list[bytes] = []
    readers = [
        threading.Thread(target=lambda: out.append(stdout_pipe.read()), daemon=True),
        threading.Thread(target=lambda: err.append(stderr_pipe.read()), daemon=True),
    ]
    for reader in readers:
        reader.start()
    deadline = time.monotonic() + inv.execution_timeout
    timed_out = False
    # Like the agent: the command ends when the script exited and its output pipes closed.
    for reader in readers:
        reader.join(max(0.0, deadline - time.monotonic()))
    if any(r.is_alive() for r in readers) or proc.poll() is None:
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(max(0.0, deadline - time.monotonic()))
        if any(r.is_alive() for r in readers) or proc.poll() is None:
            timed_out = True
            _kill(inv, signal.SIGKILL)
            proc.wait()
            for reader in readers:
                reader.join(2.0)
    rc = proc.wait()
    stdout_pipe.close()
    stderr_pipe.close()
    stdout, stderr = b"".join(out), b"".join(err)
    if inv.cancelled:
        _finish(inv, "Cancelled", "Cancelled", -1, stdout, stderr)
    elif timed_out:
        _finish(inv, "TimedOut", "ExecutionTimedOut", KILLED_EXIT, stdout, stderr)
    else:
        code = 128 - rc if rc < 0 else rc
        if code == KILLED_EXIT:
            _finish(inv, "TimedOut", "ExecutionTimedOut", code, stdout, stderr)
        elif code == 0:
            _finish(inv, "Success", "Success", 0, stdout, stderr)
        else:
            _finish(inv, "Failed", "Failed", code, stdout, stderr)


# --------------------------------------------------------------------------------------------------
# The patched backend and responses
# --------------------------------------------------------------------------------------------------


def _send_command(
    self: SimpleSystemManagerBackend,
    comment: str,
    document_name: str | None,
    timeout_seconds: int,
    instance_ids: list[str],
    max_concurrency: str,
    max_errors: str,
    notification_config: dict[str, Any] | None,
    output_s3_bucket_name: str,
    output_s3_key_prefix: str,
    output_s3_region: str,
    parameters: dict[str, list[str]],
    service_role_arn: str,
    targets: list[dict[str, Any]],
) -> Command:
    STANDIN.gate("SendCommand")
    if document_name != "AWS-RunShellScript":
        raise SSMError("InvalidDocument", f"document {document_name!r} is not supported by the stand-in")
    if targets or not instance_ids:
        raise SSMError("InvalidParameters", "the stand-in needs InstanceIds (Targets are not supported)")
    if len(json.dumps(parameters or {}).encode()) > MAX_PARAMETERS_BYTES:
        raise SSMError("MaxDocumentSizeExceeded", "The content for the document exceeds the maximum size.")
    commands = (parameters or {}).get("commands")
    if not commands:
        raise SSMError("InvalidParameters", "Parameter 'commands' is required")
    raw_timeout = ((parameters or {}).get("executionTimeout") or ["3600"])[0]
    try:
        execution_timeout = int(raw_timeout)
    except ValueError:
        raise SSMError("InvalidParameters", f"executionTimeout {raw_timeout!r} is not a number") from None
    if not 1 <= execution_timeout <= 172800:
        raise SSMError("InvalidParameters", "executionTimeout must be between 1 and 172800")
    timeout_seconds = TIMEOUT_SECONDS_DEFAULT if timeout_seconds is None else int(timeout_seconds)
    if not TIMEOUT_SECONDS_MIN <= timeout_seconds <= TIMEOUT_SECONDS_MAX:
        raise SSMError(
            "InvalidParameters",
            f"TimeoutSeconds must be between {TIMEOUT_SECONDS_MIN} and {TIMEOUT_SECONDS_MAX}",
        )
    for instance_id in instance_ids:
        state = _instance_state(instance_id, self.region_name, self.account_id)
        if state in (None, "shutting-down", "terminated") or instance_id in STANDIN.unmanaged:
            raise SSMError(
                "InvalidInstanceId",
                f"Instances [[{instance_id}]] not in a valid state for account {self.account_id}",
            )
    command = Command(
        account_id=self.account_id,
        comment=comment,
        document_name=document_name,
        timeout_seconds=timeout_seconds,
        instance_ids=list(instance_ids),
        max_concurrency=max_concurrency,
        max_errors=max_errors,
        notification_config=notification_config,
        parameters=parameters,
        targets=[],
        backend_region=self.region_name,
    )
    command.instance_ids = list(instance_ids)
    command.status = "Pending"
    # "Total timeout": the agent has TimeoutSeconds + executionTimeout to take the command.
    total = timeout_seconds + execution_timeout
    command.expires_after = command.requested_date_time + datetime.timedelta(seconds=total)
    delivery = STANDIN.delivery_timeout or float(total)
    sent: list[Invocation] = []
    for instance_id in instance_ids:
        inv = Invocation(
            command_id=command.command_id,
            instance_id=instance_id,
            script="\n".join(commands),
            execution_timeout=execution_timeout,
            delivery_timeout=delivery,
            comment=comment or "",
            missing_polls=STANDIN.missing_polls,
            account_id=self.account_id,
            region=self.region_name,
            output_bucket=output_s3_bucket_name or "",
            output_prefix=output_s3_key_prefix or "",
        )
        if not _deliverable(instance_id, self.region_name, self.account_id):
            _waiting(inv)
        STANDIN.invocations[(command.command_id, instance_id)] = inv
        sent.append(inv)
    self._commands.append(command)
    (STANDIN.dispatcher or _start_agents)(command, sent)
    return command


def start_agent(inv: Invocation) -> None:
    """The instance's agent takes the invocation (in a thread of its own)."""
    threading.Thread(
        target=_agent, args=(inv, inv.region, inv.account_id), daemon=True, name="ssm-agent"
    ).start()


def _start_agents(command: Command, invocations: list[Invocation]) -> None:
    for inv in invocations:
        start_agent(inv)


def _invocation(command_id: str, instance_id: str) -> Invocation:
    inv = STANDIN.invocations.get((command_id, instance_id))
    if inv is None:
        raise SSMError("InvocationDoesNotExist", "")
    return inv


def _get_command_invocation(
    self: SimpleSystemManagerBackend, command_id: str, instance_id: str, plugin_name: str | None
) -> dict[str, Any]:
    STANDIN.gate("GetCommandInvocation")
    inv = _invocation(command_id, instance_id)
    with inv.lock:
        if inv.missing_polls > 0:
            inv.missing_polls -= 1
            raise SSMError("InvocationDoesNotExist", "")
        return inv.response()


def _cancel_command(self: SimpleSystemManagerBackend, command_id: str, instance_ids: list[str]) -> None:
    STANDIN.gate("CancelCommand")
    chosen = [
        inv
        for (cid, iid), inv in list(STANDIN.invocations.items())
        if cid == command_id and (not instance_ids or iid in instance_ids)
    ]
    if not chosen:
        raise SSMError("InvalidCommandId", "")
    for inv in chosen:
        with inv.lock:
            if inv.status in FINAL:
                continue
            inv.cancelled = True
            inv.status = inv.details = "Cancelling"
            started = inv.proc is not None
        if not started:
            _finish(inv, "Cancelled", "Cancelled", -1)
            continue
        threading.Thread(target=_terminate, args=(inv,), daemon=True).start()


def _terminate(inv: Invocation) -> None:
    _kill(inv, signal.SIGTERM)
    if not inv.done.wait(2.0):
        _kill(inv, signal.SIGKILL)


def _describe_instance_information(
    self: SimpleSystemManagerBackend, filters: list[dict[str, Any]]
) -> list[dict[str, Any]]:
    STANDIN.gate("DescribeInstanceInformation")
    wanted: set[str] | None = None
    for flt in filters:
        if flt.get("Key") in ("InstanceIds", "INSTANCE_IDS"):
            wanted = set(flt.get("Values") or flt.get("valueSet") or [])
    out = []
    for reservation in ec2_backends[self.account_id][self.region_name].all_reservations():
        for instance in reservation.instances:
            if wanted is not None and instance.id not in wanted:
                continue
            if instance.id in STANDIN.unmanaged or instance.state == "terminated":
                continue
            ping = STANDIN.ping_status.get(instance.id, "Online")
            if instance.state != "running":
                ping = "ConnectionLost"
            out.append(
                {
                    "InstanceId": instance.id,
                    "PingStatus": ping,
                    "LastPingDateTime": datetime.datetime.now(datetime.UTC),
                    "AgentVersion": AGENT_VERSION,
                    "IsLatestVersion": True,
                    "PlatformType": "Linux",
                    "PlatformName": "Ubuntu",
                    "PlatformVersion": "24.04",
                    "ResourceType": "EC2Instance",
                    "IPAddress": getattr(instance, "private_ip", None) or "10.0.0.1",
                }
            )
    return out


class PatchedBackend(Protocol):
    """The operations :func:`install` adds to moto's SSM backend (moto has none of them)."""

    def cancel_command(self, command_id: str, instance_ids: list[str]) -> None: ...

    def describe_instance_information(self, filters: list[dict[str, Any]]) -> list[dict[str, Any]]: ...


def patched_backend(response: SimpleSystemManagerResponse) -> PatchedBackend:
    """The response's SSM backend, with the operations :func:`install` added to its class."""
    return cast("PatchedBackend", response.ssm_backend)


def _resp_get_command_invocation(self: SimpleSystemManagerResponse) -> ActionResult:
    return ActionResult(
        self.ssm_backend.get_command_invocation(
            self._get_param("CommandId"), self._get_param("InstanceId"), self._get_param("PluginName")
        )
    )


def _resp_cancel_command(self: SimpleSystemManagerResponse) -> ActionResult:
    patched_backend(self).cancel_command(self._get_param("CommandId"), self._get_param("InstanceIds", []))
    return EmptyResult()


def _resp_describe_instance_information(self: SimpleSystemManagerResponse) -> ActionResult:
    filters = self._get_param("Filters", []) or []
    for flt in self._get_param("InstanceInformationFilterList", []) or []:
        filters.append({"Key": flt.get("key"), "Values": flt.get("valueSet", [])})
    found = patched_backend(self).describe_instance_information(filters)
    return ActionResult({"InstanceInformationList": found})


def _resp_list_command_invocations(self: SimpleSystemManagerResponse) -> ActionResult:
    STANDIN.gate("ListCommandInvocations")
    command_id = self._get_param("CommandId")
    instance_id = self._get_param("InstanceId")
    details = self._get_param("Details", False)
    found = []
    for (cid, iid), inv in list(STANDIN.invocations.items()):
        if (command_id and cid != command_id) or (instance_id and iid != instance_id):
            continue
        item = inv.response()
        entry = {
            "CommandId": cid,
            "InstanceId": iid,
            "Comment": inv.comment,
            "DocumentName": "AWS-RunShellScript",
            "Status": item["Status"],
            "StatusDetails": item["StatusDetails"],
            "RequestedDateTime": inv.requested,
        }
        if details:
            entry["CommandPlugins"] = [
                {
                    "Name": "aws:runShellScript",
                    "Status": item["Status"],
                    "StatusDetails": item["StatusDetails"],
                    "ResponseCode": item["ResponseCode"],
                    "Output": item["StandardOutputContent"][:2500],
                }
            ]
        found.append(entry)
    return ActionResult({"CommandInvocations": found})


def install() -> StandIn:
    """Patch moto's SSM backend, and add EC2 Instance Connect Endpoints (:mod:`.eic_endpoints`), to moto
    (idempotent); return the stand-in's state."""
    global _installed
    eic_endpoints.install()
    with _install_lock:
        if not _installed:
            # Patching moto's classes is the point: mypy flags each replaced or added method.
            SimpleSystemManagerBackend.send_command = _send_command  # type: ignore[method-assign]
            SimpleSystemManagerBackend.get_command_invocation = _get_command_invocation  # type: ignore[method-assign]
            SimpleSystemManagerBackend.cancel_command = _cancel_command  # type: ignore[attr-defined]
            SimpleSystemManagerBackend.describe_instance_information = _describe_instance_information  # type: ignore[attr-defined]
            SimpleSystemManagerResponse.get_command_invocation = _resp_get_command_invocation  # type: ignore[method-assign]
            SimpleSystemManagerResponse.cancel_command = _resp_cancel_command  # type: ignore[attr-defined]
            SimpleSystemManagerResponse.describe_instance_information = _resp_describe_instance_information  # type: ignore[attr-defined]
            SimpleSystemManagerResponse.list_command_invocations = _resp_list_command_invocations  # type: ignore[attr-defined]
            _clear_method_cache()
            _installed = True
    return STANDIN


def _clear_method_cache() -> None:
    """moto caches each response class's method names; forget them so the added ones are seen."""
    from moto.core import responses

    cached = getattr(responses, "method_names_from_class", None)
    if cached is not None and hasattr(cached, "cache_clear"):
        cached.cache_clear()


# --------------------------------------------------------------------------------------------------
# Serving
# --------------------------------------------------------------------------------------------------


@dataclass
class Server:
    """A running stand-in: its endpoint URL and state."""

    url: str
    port: int
    standin: StandIn
    moto: ThreadedMotoServer

    def stop(self) -> None:
        self.standin.reset()
        eic_endpoints.reset()
        self.moto.stop()


def start(port: int = 0) -> Server:
    """Start a moto server with the stand-in on 127.0.0.1 (``port`` 0: a free one)."""
    install()
    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    host, real_port = server.get_host_and_port()
    return Server(url=f"http://{host}:{real_port}", port=real_port, standin=STANDIN, moto=server)


@contextlib.contextmanager
def serve(port: int = 0) -> Iterator[Server]:
    """:func:`start` as a context manager."""
    server = start(port)
    try:
        yield server
    finally:
        server.stop()


def create_instance(endpoint_url: str, region: str = "us-east-1") -> str:
    """Launch a (moto) instance through the endpoint and return its id."""
    import boto3

    ec2 = boto3.client("ec2", region_name=region, endpoint_url=endpoint_url)
    # A Linux image: AWS-RunShellScript on a Windows instance ends InvalidPlatform, here as on AWS.
    images = ec2.describe_images(Filters=[{"Name": "architecture", "Values": ["x86_64"]}])["Images"]
    image = next(i["ImageId"] for i in images if i.get("Platform") != "windows")
    reply = ec2.run_instances(ImageId=image, MinCount=1, MaxCount=1, InstanceType="t3.micro")
    return reply["Instances"][0]["InstanceId"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m ec2_sandbox.testing.ssm_standin",
        description="Serve moto, with an SSM stand-in that really runs commands, on 127.0.0.1.",
    )
    parser.add_argument("--port", type=int, default=0, help="port to listen on (0: a free one)")
    parser.add_argument("--delivery-latency", type=float, default=0.0, help="seconds before a command starts")
    parser.add_argument(
        "--missing-polls", type=int, default=0, help="InvocationDoesNotExist answers per command"
    )
    parser.add_argument(
        "--delivery-jitter", type=float, default=0.0, help="extra seconds per command, at random"
    )
    parser.add_argument(
        "--workers-limit", type=int, default=5, help="commands the agent runs at once (CommandWorkersLimit)"
    )
    parser.add_argument("--call-log", help="append one line per SSM API call to this file")
    parser.add_argument(
        "--create-instance",
        metavar="REGION",
        help="launch one instance in REGION and print its id on the ready line",
    )
    args = parser.parse_args(argv)
    os.environ.setdefault("AWS_ACCESS_KEY_ID", "testing")
    os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "testing")
    server = start(args.port)
    server.standin.delivery_latency = args.delivery_latency
    server.standin.missing_polls = args.missing_polls
    server.standin.delivery_jitter = args.delivery_jitter
    server.standin.workers_limit = args.workers_limit
    if args.call_log:
        server.standin.call_log = open(args.call_log, "a", encoding="utf-8")  # noqa: SIM115
    ready = {"url": server.url, "port": server.port}
    if args.create_instance:
        ready["instance_id"] = create_instance(server.url, args.create_instance)
    print(json.dumps(ready), flush=True)
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    stop.wait()
    server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
