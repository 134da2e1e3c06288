"""SSM Run Command's rate controls for the fleet stand-in: one command, many instances.

When a command reaches several instances, SSM sends it to them a few at a time and stops when too many have
failed. What this module does, each from the documentation ("Run commands at scale", "Understanding command
statuses", and the SendCommand/Command API references; where they leave room, the harsher reading):

* ``MaxConcurrency``: "the maximum number of managed nodes that are allowed to run the command at the same
  time ... a number such as 10 or a percentage such as 10%. The default value is 50." An invocation not yet
  sent stays ``Pending`` ("The command hasn't been sent to the managed node"). A percentage is rounded down,
  but never below one instance (the documentation does not say how it rounds; down is the slower reading).
* ``MaxErrors``: "When the command fails one more time beyond the value of MaxErrors, the systems stops
  sending the command to additional targets"; default 0 (so the first error stops it); a percentage of the
  targets, rounded down (fewer errors allowed). Invocations already running are allowed to finish; those
  never sent end ``Terminated`` ("The parent command exceeded its MaxErrors limit and subsequent command
  invocations were canceled by the system"), reported as Status ``Failed`` like the stand-in's other
  never-ran details.
* What counts as an error: Status ``Failed`` from a run ("Invocation failures count against the MaxErrors
  limit") and ``Execution Timed Out`` ("Execution timeouts count against the MaxErrors limit"); ``Delivery
  Timed Out`` does not ("Delivery timeouts don't count against the parent command's MaxErrors limit"), nor
  ``Undeliverable`` or ``Terminated``.
* The command's counts (Command API reference): ``TargetCount``; ``CompletedCount``, "the number of targets
  for which the command invocation reached a terminal state ... Success, Failed, Execution Timed Out,
  Delivery Timed Out, Cancelled, Terminated, or Undeliverable"; ``ErrorCount``, "the number of targets for
  which the status is Failed or Execution Timed Out"; ``DeliveryTimedOutCount``.
* The command's status: ``Pending`` until one invocation is sent, ``InProgress`` until all are terminal,
  then ``Success`` when every invocation succeeded, ``Failed`` when more than MaxErrors failed, ``TimedOut``
  when more than MaxErrors timed out, ``Cancelled`` when it was cancelled, and otherwise StatusDetails
  ``Incomplete`` ("attempted on all managed nodes and one or more invocations doesn't have a value of
  Success but not enough invocations failed for the status to be Failed"), with Status ``Failed`` here:
  the guide names only the detail, and a client must not read a mixed outcome as a success.
* ``MaxConcurrency`` and ``MaxErrors`` must match the patterns of the service model
  (``^([1-9][0-9]*|[1-9][0-9]%|[1-9]%|100%)$`` and ``^([1-9][0-9]*|[0]|[1-9][0-9]%|[0-9]%|100%)$``);
  botocore does not check patterns, the service does: ``ValidationException``.
"""

from __future__ import annotations

import re
import threading
from typing import Any

from . import ssm_standin
from .ssm_standin import STANDIN, Invocation, SSMError

MAX_CONCURRENCY_RE = re.compile(r"^([1-9][0-9]*|[1-9][0-9]%|[1-9]%|100%)$")
MAX_ERRORS_RE = re.compile(r"^([1-9][0-9]*|[0]|[1-9][0-9]%|[0-9]%|100%)$")
#: Seconds between the dispatcher's looks at running invocations.
TICK = 0.01


def check(max_concurrency: str | None, max_errors: str | None) -> None:
    """Refuse rate controls the service model's patterns refuse."""
    for name, value, pattern in (
        ("maxConcurrency", max_concurrency, MAX_CONCURRENCY_RE),
        ("maxErrors", max_errors, MAX_ERRORS_RE),
    ):
        if value is not None and not pattern.match(str(value)):
            STANDIN.gate("SendCommand")
            raise SSMError(
                "ValidationException",
                f"1 validation error detected: Value '{value}' at '{name}' failed to satisfy constraint: "
                f"Member must satisfy regular expression pattern: {pattern.pattern}",
            )


def limit(value: str, targets: int, minimum: int) -> int:
    """A count or a percentage of ``targets``, rounded down, at least ``minimum``."""
    if value.endswith("%"):
        return max(minimum, targets * int(value[:-1]) // 100)
    return max(minimum, int(value))


def is_error(inv: Invocation) -> bool:
    if inv.status == "TimedOut":
        return inv.details == "ExecutionTimedOut"
    return inv.status == "Failed" and inv.details not in ("Undeliverable", "Terminated")


def dispatch(command: Any, invocations: list[Invocation]) -> None:
    """Hand the invocations to their agents under the command's rate controls (in a thread)."""
    command.target_count = len(invocations)
    command.completed_count = command.error_count = command.delivery_timed_out_count = 0
    command.status, command.status_details = "Pending", "Pending"
    threading.Thread(target=_drive, args=(command, invocations), daemon=True, name="ssm-dispatch").start()


def _drive(command: Any, invocations: list[Invocation]) -> None:
    targets = len(invocations)
    concurrency = limit(command.max_concurrency or "50", targets, 1)
    allowed = limit(command.max_errors or "0", targets, 0)
    waiting = list(invocations)
    running: list[Invocation] = []
    while waiting or running:
        errors = sum(1 for inv in invocations if is_error(inv))
        if errors > allowed:
            for inv in waiting:
                ssm_standin._finish(inv, "Failed", "Terminated", -1)
            waiting = []
        while waiting and len(running) < concurrency:
            inv = waiting.pop(0)
            running.append(inv)
            ssm_standin.start_agent(inv)
        _count(command, invocations, allowed)
        if running:
            running[0].done.wait(TICK)
        running = [inv for inv in running if not inv.done.is_set()]
    _count(command, invocations, allowed)


def _count(command: Any, invocations: list[Invocation], allowed: int) -> None:
    final = [inv for inv in invocations if inv.status in ssm_standin.FINAL]
    errors = [inv for inv in invocations if is_error(inv)]
    command.completed_count = len(final)
    command.error_count = len(errors)
    command.delivery_timed_out_count = sum(1 for inv in final if inv.details == "DeliveryTimedOut")
    if len(final) < len(invocations):
        sent = any(inv.status != "Pending" for inv in invocations)
        command.status = command.status_details = "InProgress" if sent else "Pending"
        return
    if all(inv.status == "Success" for inv in invocations):
        command.status = command.status_details = "Success"
    elif any(inv.status == "Cancelled" for inv in invocations):
        command.status = command.status_details = "Cancelled"
    elif len(errors) > allowed:
        timed_out = sum(1 for inv in errors if inv.status == "TimedOut")
        command.status = "TimedOut" if timed_out > allowed else "Failed"
        command.status_details = "Execution Timed Out" if timed_out > allowed else "Failed"
    else:
        command.status, command.status_details = "Failed", "Incomplete"


def response_object(base: Any) -> Any:
    """moto's Command.response_object with the delivery-timeout count this module keeps."""

    def respond(self: Any) -> dict[str, Any]:
        reply = base(self)
        reply["DeliveryTimedOutCount"] = getattr(self, "delivery_timed_out_count", 0)
        return reply

    return respond
