"""Making what a runner keeps look old, for cleanup tests: its own records, which code cannot touch."""

from __future__ import annotations

import os
import time

from ec2_sandbox import runner


def age(base: str, kind: str, ident: str, hours: float) -> None:
    """Age a task, session or run record as the runner's inventory reads it: a task or session by its use
    lock (the runner's record of when it was last used: the run record's meta.json, the session's lock
    file), a run record by its dir."""
    when = time.time() - hours * 3600
    if kind == "run":
        path = runner.record_dir(base, ident)
    elif kind == "task":
        path = runner.task_lock_path(base, ident)
    else:
        path = runner.session_lock_path(base, ident)
    os.utime(path, (when, when))


def age_task(base: str, task_hash: str, hours: float) -> None:
    """Age a session-less task: its work dir's use and its run record, as they would age together."""
    age(base, "task", task_hash, hours)
    age(base, "run", task_hash, hours)
