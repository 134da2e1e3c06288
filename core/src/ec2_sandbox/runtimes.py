"""Runtimes are data: how to name a program, the argv that runs it, how to probe it, how to cap its memory.

The runner receives the runtime as part of each request, so a runtime added by a plugin needs nothing
installed on the target but its interpreter.
"""

from __future__ import annotations

import re
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from . import runner

RUNTIME_NAME_RE = re.compile(r"^[a-z][a-z0-9_.+-]{0,31}$")


class Runtime(BaseModel):
    """One language the sandbox can run.

    ``argv`` and ``version_argv`` are lists (never shell text). In ``argv`` the runner substitutes ``{file}``
    (the program's path), ``{memory_mb}`` and ``{heap_mb}`` (three quarters of the memory limit, for
    runtimes that size their own heap).
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str = Field(description="Name a caller passes as `runtime`, e.g. 'python3'.")
    description: str = Field(description="One line for humans and language models.")
    filename: str = Field(description="File name the code is saved under before it runs, e.g. 'main.py'.")
    argv: list[str] = Field(min_length=1, description="Command that runs the file; '{file}' is replaced.")
    version_argv: list[str] = Field(min_length=1, description="Command that prints the runtime's version.")
    rlimit_memory: Literal["data", "as"] | None = Field(
        default="data",
        description=(
            "Which rlimit caps memory when no memory cgroup is available: 'data' (heap and anonymous "
            "memory; safe for most runtimes), 'as' (all address space; breaks V8 and the JVM), or None "
            "(the runtime limits itself through a flag in argv such as --max-old-space-size={heap_mb})."
        ),
    )
    oom_markers: list[str] = Field(
        default_factory=list,
        description="Text in stderr that proves the program died of the memory limit.",
    )
    syscalls_allowed: list[str] = Field(
        default_factory=list,
        description=(
            "Calls the syscall filter refuses that this runtime truly needs (names as in the runner's "
            "SYSCALLS table, e.g. 'memfd_create'); allowed for this runtime's runs alone."
        ),
    )
    warm_start: Literal["python"] | None = Field(
        default=None,
        description=(
            "'python' when argv is a CPython interpreter, its flags and '{file}': a long-lived runner may "
            "then fork the program from an interpreter that is already running instead of starting one."
        ),
    )

    @field_validator("name")
    @classmethod
    def _name_form(cls, value: str) -> str:
        if not RUNTIME_NAME_RE.match(value):
            raise ValueError(
                "runtime names are 1-32 characters: a lowercase letter, then letters, digits, '_.+-'"
            )
        return value

    @field_validator("syscalls_allowed")
    @classmethod
    def _known_syscalls(cls, value: list[str]) -> list[str]:
        unknown = sorted(set(value) - set(runner.SYSCALLS))
        if unknown:
            raise ValueError(
                f"syscalls_allowed names calls the filter does not refuse: {', '.join(unknown)}; "
                f"it refuses {', '.join(sorted(runner.SYSCALLS))}"
            )
        return value

    @field_validator("filename")
    @classmethod
    def _plain_filename(cls, value: str) -> str:
        if "/" in value or value in ("", ".", "..") or "\x00" in value:
            raise ValueError("filename must be a plain file name such as 'main.rb'")
        return value

    def to_runner(self) -> dict:
        return self.model_dump(mode="json", exclude={"description"})

    def alias(self, name: str, description: str) -> Runtime:
        """This runtime under another name: one definition, so the two cannot drift apart."""
        return Runtime.model_validate({**self.model_dump(), "name": name, "description": description})


PYTHON3 = Runtime(
    name="python3",
    description="Python 3 (the target's system python3).",
    filename="main.py",
    argv=["python3", "{file}"],
    version_argv=["python3", "--version"],
    oom_markers=["MemoryError"],
    warm_start="python",
)

BUILTIN_RUNTIMES: tuple[Runtime, ...] = (
    PYTHON3,
    PYTHON3.alias("python", "Python 3, same as python3 (kept for callers that say 'python')."),
    Runtime(
        name="node",
        description="Node.js; its heap is sized from the memory limit.",
        filename="main.js",
        # V8 reserves far more address space than it uses: cap the heap by flag and the data segment by
        # rlimit, never RLIMIT_AS (which makes V8 abort at start-up).
        argv=["node", "--max-old-space-size={heap_mb}", "{file}"],
        version_argv=["node", "--version"],
        rlimit_memory="data",
        oom_markers=[
            "JavaScript heap out of memory",
            "Reached heap limit",
            "Fatal process out of memory",
        ],
    ),
    Runtime(
        name="bash",
        description="GNU Bash script.",
        filename="main.sh",
        argv=["bash", "{file}"],
        version_argv=["bash", "--version"],
    ),
    Runtime(
        name="sh",
        description="POSIX sh script (dash on Debian and Ubuntu).",
        filename="main.sh",
        argv=["sh", "{file}"],
        version_argv=["sh", "-c", "echo POSIX sh"],
    ),
)
