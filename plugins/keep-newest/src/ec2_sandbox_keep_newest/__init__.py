"""The ``keep-newest`` cleanup policy: keep the newest N tasks per target and the newest N runs per session.

Select it per environment with ``"cleanup_policy": "keep-newest"``. N comes from the environment variable
``EC2_SANDBOX_KEEP_NEWEST`` of the process that runs the cleanup (default :data:`DEFAULT_KEEP`), read at
each cleanup.

What counts as one "task":

* a task run without a session: its work dir and its run record (output, metadata), removed together;
* a session: its work dir and the records of every run in it, removed together;
* a run inside a session: its record (the session's files are shared by all its runs, so they stay).

The policy keeps the N newest session-less tasks and the N newest sessions of the target, and the N newest
runs of every session. Of the rest, it removes what has not been used for ``hours`` hours: ``hours`` is a
grace period, so ``hours=0`` is a pure count limit and a larger value never removes recent work. Ties in
age are broken by id, so the choice is deterministic.
"""

from __future__ import annotations

import os
from collections import defaultdict

from ec2_sandbox import ConfigError, SandboxConfig, hookimpl
from ec2_sandbox.cleanup import Inventory, InventoryEntry
from ec2_sandbox.hookspecs import RegisterCleanupPolicy

ENV_VAR = "EC2_SANDBOX_KEEP_NEWEST"
DEFAULT_KEEP = 10


class KeepNewestPolicy:
    """Keep the newest ``keep`` tasks per target and runs per session (``keep=None``: from the env var)."""

    name = "keep-newest"
    needs_sizes = False

    def __init__(self, keep: int | None = None) -> None:
        if keep is not None and (isinstance(keep, bool) or not isinstance(keep, int) or keep < 0):
            raise ConfigError(f"keep-newest: keep must be a whole number >= 0, got {keep!r}")
        self.keep = keep

    def resolved_keep(self) -> int:
        if self.keep is not None:
            return self.keep
        raw = os.environ.get(ENV_VAR, "").strip()
        if not raw:
            return DEFAULT_KEEP
        if not raw.isdigit():
            raise ConfigError(f"{ENV_VAR}={raw!r}: expected a whole number >= 0 (tasks to keep)")
        return int(raw)

    def select(self, inventory: Inventory, hours: float, config: SandboxConfig) -> list[InventoryEntry]:
        keep = self.resolved_keep()
        cutoff = inventory.now - hours * 3600
        tasks: dict[str, list[InventoryEntry]] = defaultdict(list)
        sessions: dict[str, list[InventoryEntry]] = defaultdict(list)
        session_runs: dict[str, list[InventoryEntry]] = defaultdict(list)
        for entry in inventory.entries:
            if entry.kind == "task":
                tasks[entry.id].append(entry)
            elif entry.kind == "session":
                sessions[entry.id].append(entry)
            elif entry.session_id is None:
                tasks[entry.id].append(entry)  # the record of a session-less (or ephemeral) task
            else:
                sessions[entry.session_id].append(entry)
                session_runs[entry.session_id].append(entry)

        chosen: list[InventoryEntry] = []
        for units in (tasks, sessions):
            for _id, entries in _newest_first(units)[keep:]:
                if _last_used(entries) < cutoff:
                    chosen.extend(entries)
        kept_sessions = {sid for sid, _ in _newest_first(sessions)[:keep]}
        for sid in sorted(kept_sessions):
            runs = sorted(session_runs.get(sid, []), key=lambda e: (e.mtime, e.id), reverse=True)
            chosen.extend(run for run in runs[keep:] if run.mtime < cutoff)
        return chosen


def _last_used(entries: list[InventoryEntry]) -> float:
    return max(e.mtime for e in entries)


def _newest_first(units: dict[str, list[InventoryEntry]]) -> list[tuple[str, list[InventoryEntry]]]:
    return sorted(units.items(), key=lambda item: (_last_used(item[1]), item[0]), reverse=True)


@hookimpl
def register_cleanup_policies(register: RegisterCleanupPolicy) -> None:
    register(KeepNewestPolicy())
