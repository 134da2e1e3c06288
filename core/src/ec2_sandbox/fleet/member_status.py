"""What each member reports for the fleet's status table: load, memory, disk, session and task dirs.

A fixed stdlib program (Python 3.8+, no quote character: the shell holds it in single quotes) reads its
one input - the base dir - as base64 JSON on stdin, and prints one JSON line. It reads and writes nothing
else: the runner's own probe (runtimes, isolation) still runs on one member through ``instance_status``.
"""

from __future__ import annotations

import json

from pydantic import BaseModel, ConfigDict, ValidationError

#: The base dir rule is the runner's (runner.default_base_dir): root's state dir, or the user's.
PROGRAM = r"""
import base64, json, os, shutil, sys
data = json.loads(base64.b64decode(sys.stdin.read().strip() or "e30="))
user_state = os.environ.get("XDG_STATE_HOME") or os.path.expanduser("~/.local/state")
root_base = "/var/lib/ec2-sandbox" if os.geteuid() == 0 else os.path.join(user_state, "ec2-sandbox")
base = data.get("base") or root_base
def count(sub):
    try:
        return sum(1 for e in os.scandir(os.path.join(base, sub)) if e.is_dir(follow_symlinks=False))
    except OSError:
        return 0
where = base
while not os.path.isdir(where) and os.path.dirname(where) != where:
    where = os.path.dirname(where)
disk = shutil.disk_usage(where)
mem = None
try:
    with open("/proc/meminfo") as fh:
        for line in fh:
            if line.startswith("MemAvailable:"):
                mem = int(line.split()[1]) * 1024
except OSError:
    pass
try:
    with open("/proc/uptime") as fh:
        uptime = float(fh.read().split()[0])
except (OSError, ValueError):
    uptime = None
print(json.dumps({"member_status": {
    "load": list(os.getloadavg()), "cpus": os.cpu_count(), "mem_available_bytes": mem,
    "disk_free_bytes": disk.free, "disk_total_bytes": disk.total, "sessions_on_disk": count("sessions"),
    "tasks_on_disk": count("tasks"), "uptime_seconds": uptime, "base_dir": base}}))
"""


class MemberLoad(BaseModel):
    """One member's answer to :data:`PROGRAM`."""

    model_config = ConfigDict(frozen=True)

    load: tuple[float, float, float]
    cpus: int | None = None
    mem_available_bytes: int | None = None
    disk_free_bytes: int
    disk_total_bytes: int
    sessions_on_disk: int
    tasks_on_disk: int
    uptime_seconds: float | None = None
    base_dir: str


def parse(stdout: str) -> MemberLoad | None:
    """The member's report from its output; None when there is none (the caller says why)."""
    for line in reversed(stdout.splitlines()):
        if line.startswith('{"member_status"'):
            try:
                return MemberLoad.model_validate(json.loads(line)["member_status"])
            except (ValueError, KeyError, ValidationError):
                return None
    return None
