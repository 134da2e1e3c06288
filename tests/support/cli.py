"""The ``ec2-sandbox`` command as a real subprocess, with an environment of the test's own."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from collections.abc import Mapping
from typing import Any

EXE = [sys.executable, "-m", "ec2_sandbox.cli"]
#: A hang guard: every CLI test waits on the process, never on a guessed delay.
DEADLINE = 120


def clean_env(base_dir: str, **extra: str) -> dict[str, str]:
    """This process's environment without the developer's ec2-sandbox or AWS settings, the base dir set."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("EC2_SANDBOX", "AWS_"))}
    env["EC2_SANDBOX_BASE_SANDBOX_DIR"] = base_dir
    if os.environ.get("EC2_SANDBOX_NO_SKIPS"):
        env["EC2_SANDBOX_NO_SKIPS"] = os.environ["EC2_SANDBOX_NO_SKIPS"]
    env.update(extra)
    return env


def cli(
    env: Mapping[str, str], *args: str, stdin: bytes | None = None, **kwargs: Any
) -> subprocess.CompletedProcess[bytes]:
    """Run ``ec2-sandbox ARGS`` to the end; what it wrote is captured unless ``stdout``/``stderr`` say
    otherwise."""
    if "stdout" not in kwargs and "stderr" not in kwargs:
        kwargs["capture_output"] = True
    return subprocess.run([*EXE, *args], env=dict(env), input=stdin, timeout=DEADLINE, **kwargs)


async def start_cli(env: Mapping[str, str], *args: str) -> asyncio.subprocess.Process:
    """Start ``ec2-sandbox ARGS``, its stdout and stderr piped to the test to read as they come."""
    return await asyncio.create_subprocess_exec(
        *EXE, *args, env=dict(env), stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
