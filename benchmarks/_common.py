"""What the benchmarks share: the SSM stand-in started as its own process, its call log, and summaries.

Imported by the scripts beside it (``python benchmarks/<script>.py`` puts this directory on ``sys.path``).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass

#: Fake credentials and no profile, metadata or config file: nothing can reach AWS.
FAKE_ENV = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
    "AWS_CONFIG_FILE": "/dev/null",
    "AWS_SHARED_CREDENTIALS_FILE": "/dev/null",
    "AWS_EC2_METADATA_DISABLED": "true",
}
REGION = "us-east-1"


class CallLog:
    """The stand-in's own log of API calls, one line "<unix time> <operation>" per call."""

    def __init__(self, path: str) -> None:
        self.path = path

    def lines(self) -> list[str]:
        with open(self.path, encoding="utf-8") as fh:
            return fh.read().splitlines()

    def mark(self) -> int:
        return len(self.lines())

    def since(self, mark: int) -> Counter[str]:
        """Calls by operation logged after ``mark`` (a value of :meth:`mark`)."""
        return Counter(line.split()[1] for line in self.lines()[mark:] if line.strip())


@dataclass
class StandIn:
    url: str
    instance_id: str
    base: str
    log: CallLog


@contextlib.contextmanager
def ssm_standin(
    latency: float,
    jitter: float = 0.0,
    *,
    program: tuple[str, ...] = ("-m", "ec2_sandbox.testing.ssm_standin"),
    extra: tuple[str, ...] = (),
) -> Iterator[StandIn]:
    """The stand-in in its own process (like a remote service), one instance, a fresh base dir.

    The environment is pointed at it with fake credentials for as long as the block runs.
    """
    for key in ("AWS_PROFILE", "AWS_DEFAULT_PROFILE", "AWS_REGION"):
        os.environ.pop(key, None)
    os.environ.update(FAKE_ENV)
    base = tempfile.mkdtemp(prefix="ec2sb-bench-", dir="/tmp")
    os.chmod(base, 0o711)
    log = os.path.join(base, "calls.log")
    open(log, "w").close()
    server = subprocess.Popen(
        [
            sys.executable,
            *program,
            *extra,
            "--delivery-latency",
            str(latency),
            "--delivery-jitter",
            str(jitter),
            "--call-log",
            log,
            "--create-instance",
            REGION,
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert server.stdout is not None
        ready = json.loads(server.stdout.readline())  # the ready line: it listens and the instance exists
        os.environ["AWS_ENDPOINT_URL"] = ready["url"]
        yield StandIn(ready["url"], ready["instance_id"], base, CallLog(log))
    finally:
        os.environ.pop("AWS_ENDPOINT_URL", None)
        server.terminate()
        server.wait(10)
        shutil.rmtree(base, ignore_errors=True)


def summary(values: list[float], scale: float = 1000.0, unit: str = "ms") -> str:
    """Median, then the spread (min-max) and the count."""
    return (
        f"median {statistics.median(values) * scale:8.1f} {unit} "
        f"(min {min(values) * scale:.1f}, max {max(values) * scale:.1f}, n={len(values)})"
    )


def ratio(subject: list[float], baseline: list[float]) -> float:
    """Ratio of medians, subject over baseline."""
    return statistics.median(subject) / statistics.median(baseline)
