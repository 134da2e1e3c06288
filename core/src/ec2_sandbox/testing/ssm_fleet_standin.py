"""The SSM stand-in (:mod:`.ssm_standin`) for several instances at once: a fleet on one machine.

On AWS every instance has its own disk; here every command runs on this machine. So each instance gets its
own directory ("disk") and each command runs in a private mount namespace (``unshare --mount``) where that
directory is bind-mounted over every path listed in :attr:`FleetStandIn.instance_paths` (the sandbox base
dir a test uses): a session's files are on the instance that ran it and nowhere else, as on AWS. This needs
root (CAP_SYS_ADMIN); :func:`usable` says whether it is available.

Beyond the single-instance stand-in, and as strict as the SSM API reference (its published limits are also
in the service model botocore ships, ``ssm/2014-11-06/service-2.json``):

* ``SendCommand`` reaches up to 50 ``InstanceIds`` ("you can specify up to 50 IDs", SendCommand API
  reference); more is refused with ``ValidationException``, as the service does for a list longer than its
  constraint. Each instance gets its own invocation, run by its own agent, on its own disk, with its own
  status (:mod:`.ssm_rate_controls` applies ``MaxConcurrency`` and ``MaxErrors`` and keeps the command's
  ``TargetCount``/``CompletedCount``/``ErrorCount``/``DeliveryTimedOutCount`` and status, which
  ``ListCommands`` reports).
* Throttling by rate, as many clients of one account meet it: :attr:`FleetStandIn.rate_limits` gives
  operations a token bucket (calls per second, a burst of one second's worth); a call beyond it is refused
  with ``ThrottlingException`` ("Rate exceeded"), as the service answers. SSM publishes no rate for
  SendCommand or GetCommandInvocation, so the rate is the test's to choose.
* ``DescribeInstanceInformation`` pages its answer: ``MaxResults`` must be 5 to 50 (else
  ``ValidationException``) and a filter holds 1 to 100 values; without ``MaxResults`` a page holds 10 items
  (AWS does not document its default page size: a small one makes callers that ignore ``NextToken`` fail
  here rather than at 51 instances in production). Unknown instance ids are left out of the answer, as the
  single-instance stand-in does (its tests pin that; the API reference's "you receive an error" for them is
  not applied here, so the fleet code must not rely on either reading).

EC2, Auto Scaling and DynamoDB are moto's own (moto 5.2: instances, groups that launch and replace
instances, conditional writes), with one correction: moto checks a write's condition and then writes with
no lock, so under its threaded server two concurrent conditional puts can both succeed. DynamoDB applies a
conditional write atomically - "conditional writes are helpful in cases where multiple users attempt to
modify the same item ... if the condition is not met, the write fails" (DynamoDB developer guide,
"Condition expressions" / "Conditional writes") - so the stand-in makes each write one atomic step.
``TransactWriteItems`` of puts, deletes and condition checks is likewise one step: every condition checked,
then every write made, or none with a cancellation reason per item (moto copies every table the transaction
names before it starts, a cost that grows with the table and that DynamoDB does not have).

With a call log open (``--call-log``), every call to EC2, Auto Scaling and DynamoDB is logged too, as
"<unix time> <operation> <service> <ms spent answering>", beside the SSM calls the single-instance stand-in
logs: a benchmark counts what each path calls from the stand-in's own record.
"""

from __future__ import annotations

import base64
import contextlib
import functools
import os
import shutil
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from moto.core.responses import ActionResult, BaseResponse
from moto.dynamodb.comparisons import get_filter_expression
from moto.dynamodb.exceptions import (
    MultipleTransactionsException,
    TooManyTransactionsException,
    TransactionCanceledException,
)
from moto.dynamodb.models import DynamoDBBackend
from moto.ssm.models import Command, SimpleSystemManagerBackend
from moto.ssm.responses import SimpleSystemManagerResponse

from . import ssm_rate_controls, ssm_standin
from .ssm_standin import STANDIN, Invocation, SSMError, StandIn

#: SendCommand: "you can specify up to 50 IDs".
MAX_INSTANCE_IDS = 50
#: DescribeInstanceInformation: MaxResults 5-50; filter values 1-100; the page size assumed when not given.
MAX_RESULTS_MIN, MAX_RESULTS_MAX, FILTER_VALUES_MAX, DEFAULT_PAGE = 5, 50, 100, 10
#: Mounts the (disk, path) pairs that precede "--", then runs the rest; everything is argv, never text.
MOUNTER = 'while [ "$1" != "--" ]; do mount --bind "$1" "$2" || exit 125; shift 2; done; shift; exec "$@"'


@dataclass
class FleetStandIn:
    """Per-instance disks. ``root`` holds one directory per instance that has run a command."""

    root: str = ""
    #: Paths that are each instance's own (bind-mounted from its disk for every command it runs).
    instance_paths: list[str] = field(default_factory=list)
    #: Calls per second each operation admits (token bucket, a burst of one second's worth); beyond it,
    #: ThrottlingException. Empty: no rate limit.
    rate_limits: dict[str, float] = field(default_factory=dict)
    #: Calls refused by a rate limit, by operation.
    throttled: Counter[str] = field(default_factory=Counter)
    _buckets: dict[str, tuple[float, float]] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def admit(self, operation: str) -> None:
        """Take a token for ``operation``, or refuse the call as the service does past its rate."""
        with self._lock:
            rate = self.rate_limits.get(operation)
            if not rate:
                return
            now = time.monotonic()
            tokens, then = self._buckets.get(operation, (rate, now))
            tokens = min(rate, tokens + (now - then) * rate)
            if tokens < 1.0:
                self._buckets[operation] = (tokens, now)
                self.throttled[operation] += 1
                refused = True
            else:
                self._buckets[operation] = (tokens - 1.0, now)
                refused = False
        if refused:
            raise SSMError("ThrottlingException", "Rate exceeded")

    def unthrottle(self) -> None:
        with self._lock:
            self.rate_limits.clear()
            self._buckets.clear()
            self.throttled.clear()

    def disk(self, instance_id: str, path: str) -> str:
        """The directory that ``path`` is on ``instance_id``, made on first use with mode 0711: runs drop to
        per-session uids that must traverse to their work dirs, as under a base dir on an instance."""
        with self._lock:
            if not self.root:
                self.root = tempfile.mkdtemp(prefix="ssm-fleet-disks-")
                os.chmod(self.root, 0o711)  # noqa: S103 - traversal only, see above
            where = os.path.join(self.root, instance_id, path.strip("/").replace("/", "_") or "_root")
            os.makedirs(where, exist_ok=True)
            os.chmod(os.path.join(self.root, instance_id), 0o711)  # noqa: S103 - traversal only, see above
            os.chmod(where, 0o711)  # noqa: S103 - traversal only, see above
            return where

    def reset(self) -> None:
        with self._lock:
            if self.root:
                shutil.rmtree(self.root, ignore_errors=True)
            self.root = ""
            self.instance_paths = []
        self.unthrottle()


FLEET = FleetStandIn()
_installed = False
_install_lock = threading.Lock()


def usable() -> str | None:
    """None when per-instance disks work here, else why not."""
    if os.geteuid() != 0:
        return "per-instance disks need root (a private mount namespace with bind mounts)"
    if shutil.which("unshare") is None:
        return "per-instance disks need unshare (util-linux)"
    return None


def _launch(inv: Invocation, argv: list[str]) -> list[str]:
    paths = list(FLEET.instance_paths)
    if not paths:
        return argv
    pairs: list[str] = []
    for path in paths:
        pairs += [FLEET.disk(inv.instance_id, path), path]
    return [
        "unshare",
        "--mount",
        "--propagation",
        "private",
        "--",
        "/bin/sh",
        "-c",
        MOUNTER,
        "mount",
        *pairs,
        "--",
        *argv,
    ]


#: What the fleet's additions wrap, saved by :func:`install` before it puts them in place.
_base_send_command: Callable[..., Any]
_base_gate: Callable[[StandIn, str], None]
_base_list_commands: Callable[..., Any]
_base_transact: Callable[..., Any]
_base_call_action: Callable[..., Any]
#: Every DynamoDB write of the stand-in, one at a time (the correction above). Reentrant: a transaction
#: writes its items through the same (wrapped) methods.
_dynamodb_writes = threading.RLock()
DYNAMODB_WRITES = ("put_item", "update_item", "delete_item", "batch_write_item")


def _atomic(method: Any) -> Any:
    def write(*args: Any, **kwargs: Any) -> Any:
        with _dynamodb_writes:
            return method(*args, **kwargs)

    return functools.update_wrapper(write, method, assigned=(), updated=())  # only __wrapped__


def _transact_write_items(self: DynamoDBBackend, transact_items: list[dict[str, Any]]) -> None:
    """TransactWriteItems as DynamoDB applies it: every condition is checked, then every write is made, in
    one step; when a condition fails nothing is written and the call is refused with
    ``TransactionCanceledException``, one cancellation reason per item in order ("TransactWriteItems",
    DynamoDB API reference).

    moto makes the same decision but first deep-copies every table the transaction names (to roll back),
    a cost that grows with the table and that DynamoDB does not have; with the writes serialized here,
    nothing needs rolling back when the conditions are checked first. Transactions with an ``Update`` (whose
    expression could fail half-way) go to moto's own code."""
    if any(next(iter(item)) not in ("Put", "Delete", "ConditionCheck") for item in transact_items):
        with _dynamodb_writes:
            return _base_transact(self, transact_items)
    if len(transact_items) > 100:
        raise TooManyTransactionsException()
    with _dynamodb_writes:
        seen: set[tuple[str, str]] = set()
        plan: list[tuple[str, dict[str, Any], dict[str, Any]]] = []
        reasons: list[Any] = []
        for item in transact_items:
            kind, op = next(iter(item.items()))
            table = self.get_table(op["TableName"])
            if kind == "Put":
                attrs = op["Item"]
                key = {table.hash_key_attr: attrs[table.hash_key_attr]}
                if table.range_key_attr is not None:
                    key[table.range_key_attr] = attrs[table.range_key_attr]
            else:
                key = op["Key"]
            ident = (op["TableName"], str(dict(sorted(key.items()))))
            if ident in seen:
                raise MultipleTransactionsException()
            seen.add(ident)
            reason: Any = (None, None, None)
            if op.get("ConditionExpression") is not None:
                current = self.get_item(op["TableName"], key)
                holds = get_filter_expression(
                    op["ConditionExpression"],
                    op.get("ExpressionAttributeNames"),
                    op.get("ExpressionAttributeValues"),
                ).expr(current)
                if not holds:
                    old = None
                    if op.get("ReturnValuesOnConditionCheckFailure") == "ALL_OLD" and current:
                        old = current.to_json()["Attributes"]
                    reason = ("ConditionalCheckFailed", "The conditional request failed", old)
            reasons.append(reason)
            plan.append((kind, op, key))
        if any(code is not None for code, _, _ in reasons):
            raise TransactionCanceledException(reasons)
        for kind, op, key in plan:
            if kind == "Put":
                self.put_item(op["TableName"], op["Item"])
            elif kind == "Delete":
                self.delete_item(op["TableName"], key)
    return None


def _call_action(self: BaseResponse) -> Any:
    """Every call to a service other than SSM (whose calls the stand-in logs itself) written to the call
    log as "<unix time> <operation> <service> <ms spent answering>", when a call log is open."""
    if STANDIN.call_log is None or self.service_name == "ssm":
        return _base_call_action(self)
    started = time.perf_counter()
    try:
        return _base_call_action(self)
    finally:
        spent = (time.perf_counter() - started) * 1000
        line = f"{time.time():.6f} {self._get_action()} {self.service_name} {spent:.1f}\n"
        with STANDIN._lock:
            STANDIN.call_log.write(line)
            STANDIN.call_log.flush()


def _send_command(self: SimpleSystemManagerBackend, *args: Any, **kwargs: Any) -> Any:
    instance_ids = kwargs.get("instance_ids")
    if instance_ids is None and len(args) > 3:
        instance_ids = args[3]
    ssm_rate_controls.check(kwargs.get("max_concurrency"), kwargs.get("max_errors"))
    if instance_ids and len(instance_ids) > MAX_INSTANCE_IDS:
        STANDIN.gate("SendCommand")
        raise SSMError(
            "ValidationException",
            f"1 validation error detected: Value at 'instanceIds' failed to satisfy constraint: Member must "
            f"have length less than or equal to {MAX_INSTANCE_IDS}",
        )
    return _base_send_command(self, *args, **kwargs)


def _gate(self: StandIn, operation: str) -> None:
    _base_gate(self, operation)
    FLEET.admit(operation)


def _list_commands(self: SimpleSystemManagerBackend, command_id: str | None, instance_id: str | None) -> Any:
    STANDIN.gate("ListCommands")
    return _base_list_commands(self, command_id, instance_id)


def _resp_describe_instance_information(self: SimpleSystemManagerResponse) -> ActionResult:
    raw_max = self._get_param("MaxResults")
    page = DEFAULT_PAGE if raw_max is None else int(raw_max)
    if not MAX_RESULTS_MIN <= page <= MAX_RESULTS_MAX:
        STANDIN.gate("DescribeInstanceInformation")
        raise SSMError(
            "ValidationException",
            f"1 validation error detected: Value '{page}' at 'maxResults' failed to satisfy constraint: "
            f"Member must have value between {MAX_RESULTS_MIN} and {MAX_RESULTS_MAX}",
        )
    filters = self._get_param("Filters", []) or []
    for flt in self._get_param("InstanceInformationFilterList", []) or []:
        filters.append({"Key": flt.get("key"), "Values": flt.get("valueSet", [])})
    for flt in filters:
        values = flt.get("Values") or []
        if not 1 <= len(values) <= FILTER_VALUES_MAX:
            STANDIN.gate("DescribeInstanceInformation")
            raise SSMError(
                "ValidationException",
                f"a filter holds 1 to {FILTER_VALUES_MAX} values; {flt.get('Key')} has {len(values)}",
            )
    found = ssm_standin.patched_backend(self).describe_instance_information(filters)
    start = 0
    token = self._get_param("NextToken")
    if token:
        try:
            start = int(base64.b64decode(token).decode())
        except ValueError:
            raise SSMError("InvalidNextToken", "The specified token is not valid.") from None
    result: dict[str, Any] = {"InstanceInformationList": found[start : start + page]}
    if start + page < len(found):
        result["NextToken"] = base64.b64encode(str(start + page).encode()).decode()
    return ActionResult(result)


def install() -> FleetStandIn:
    """Install the single-instance stand-in, then the fleet's additions (idempotent)."""
    global _installed, _base_send_command, _base_gate, _base_list_commands, _base_transact, _base_call_action
    ssm_standin.install()
    with _install_lock:
        if not _installed:
            # Patching moto's and the stand-in's classes is the point: mypy flags each replaced method.
            _base_send_command = SimpleSystemManagerBackend.send_command
            SimpleSystemManagerBackend.send_command = _send_command  # type: ignore[method-assign]
            _base_list_commands = SimpleSystemManagerBackend.list_commands
            SimpleSystemManagerBackend.list_commands = _list_commands  # type: ignore[method-assign]
            _base_gate = StandIn.gate
            StandIn.gate = _gate  # type: ignore[method-assign]
            Command.response_object = ssm_rate_controls.response_object(Command.response_object)  # type: ignore[method-assign]
            STANDIN.dispatcher = ssm_rate_controls.dispatch
            SimpleSystemManagerResponse.describe_instance_information = _resp_describe_instance_information  # type: ignore[attr-defined]
            ssm_standin._clear_method_cache()
            STANDIN.launcher = _launch
            for name in DYNAMODB_WRITES:
                if hasattr(DynamoDBBackend, name):
                    setattr(DynamoDBBackend, name, _atomic(getattr(DynamoDBBackend, name)))
            _base_transact = DynamoDBBackend.transact_write_items
            DynamoDBBackend.transact_write_items = _transact_write_items  # type: ignore[method-assign]
            _base_call_action = BaseResponse.call_action
            BaseResponse.call_action = _call_action  # type: ignore[method-assign]
            _installed = True
    return FLEET


@contextlib.contextmanager
def serve(port: int = 0) -> Iterator[ssm_standin.Server]:
    """A stand-in server with the fleet additions; per-instance disks are removed when it stops."""
    install()
    with ssm_standin.serve(port) as server:
        try:
            yield server
        finally:
            FLEET.reset()
