"""The one schema: inputs and outputs of the four tools, as pydantic models.

Adapters render every framework's tool definitions from these models (through :mod:`ec2_sandbox.tools`);
nothing here is written twice. The field rules are the runner's own (:mod:`ec2_sandbox.runner`), so a
request refused here would be refused on the target too.
"""

from __future__ import annotations

import base64
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from . import runner

TerminationReason = Literal[
    "exited",
    "timeout",
    "memory_limit",
    "cpu_time_limit",
    "file_size_limit",
    "output_limit",
    "process_limit",
    "disk_limit",
    "signal",
    "not_started",
]

TASK_HASH_RULE = "12-64 lowercase hex characters, as returned in `task_hash` by ec2_code_execution"
SESSION_ID_RULE = "1-64 characters: letters, digits, '.', '_' or '-', starting with a letter or digit"


def check_task_hash(value: str) -> str:
    if not runner.TASK_HASH_RE.match(value):
        raise ValueError(f"must be {TASK_HASH_RULE}")
    return value


def check_session_id(value: str | None) -> str | None:
    if value is not None and not runner.SESSION_ID_RE.match(value):
        raise ValueError(f"must be {SESSION_ID_RULE}")
    return value


def check_filename(value: str) -> str:
    try:
        runner.check_relative_path(value)
    except runner.RunnerError as exc:
        raise ValueError(exc.message) from None
    return value


def check_file_to_read(value: str) -> str:
    """A file to read back: ``@stdout``/``@stderr``, or a work-dir path (``./`` before one that starts with
    '@', as listings write it, so that a file named ``@stdout`` is never the stream)."""
    if value in runner.STREAMS or runner.DISPLAY_RE.match(value):
        return value
    check_filename(value[2:] if value.startswith("./") else value)
    return value


def check_env_name(value: str) -> str:
    if not runner.ENV_NAME_RE.match(value):
        raise ValueError(f"env var name {value!r} must match [A-Za-z_][A-Za-z0-9_]*")
    return value


class _Input(BaseModel):
    model_config = ConfigDict(extra="forbid")


class RunRequest(_Input):
    """One run of code, as the Python API and the ec2_code_execution tool both ask for it.

    Built once, on the client, and checked here by every rule that needs no environment; the sandbox
    adds the environment's own (which runtimes are allowed, the longest timeout) and the runner, on the
    target, checks the request again as the trust boundary.
    """

    code: str = Field(min_length=1, description="The complete program to run, as source text.")
    runtime: str | None = Field(
        default=None,
        description="Language to run the code with; None: the environment's default (python3 where allowed).",
    )
    session_id: str | None = Field(
        default=None,
        description=(
            "Reuse one persistent work dir across calls: files written by one call are there for the next. "
            f"Omit for a fresh dir. Form: {SESSION_ID_RULE}."
        ),
    )
    files: dict[str, str | bytes] | None = Field(
        default=None,
        description="Input files to create in the work dir before the code runs: relative path -> content.",
    )
    env_vars: dict[str, str] | None = Field(
        default=None,
        description="Environment variables for the program: NAME -> value. Nothing else is inherited.",
    )
    create_filesystem: bool = Field(
        default=True,
        description=(
            "Keep the task's work dir after the run so its files can be fetched with ec2_get_files. "
            "False: use a scratch dir that is deleted when the run ends."
        ),
    )
    # An int stays one, as the caller wrote it. Its range (1 s to max_execution_time) is the
    # environment's, checked by the sandbox.
    timeout: int | float | None = Field(
        default=None,
        description="Wall-clock limit in seconds; defaults to the environment's max_execution_time.",
    )
    stateful: bool = Field(
        default=False,
        description=(
            "Run the code as a cell in the session's persistent Python interpreter (needs session_id; "
            "python only): variables, imports and loaded data stay for the next stateful call, and the "
            "value of a final expression, charts and tables come back as results. A cell past its timeout "
            "is interrupted and the state kept."
        ),
    )

    @model_validator(mode="after")
    def _stateful_needs_session(self) -> RunRequest:
        if self.stateful and self.session_id is None:
            raise ValueError("stateful: a stateful call needs a session_id (the state is the session's)")
        return self

    @field_validator("code")
    @classmethod
    def _code(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("must be a non-empty program")
        return value

    @field_validator("session_id")
    @classmethod
    def _session(cls, value: str | None) -> str | None:
        return check_session_id(value)

    @field_validator("files")
    @classmethod
    def _files(cls, value: dict[str, str | bytes] | None) -> dict[str, str | bytes] | None:
        for name in value or {}:
            check_filename(name)
        return value

    @field_validator("env_vars")
    @classmethod
    def _env(cls, value: dict[str, str] | None) -> dict[str, str] | None:
        for name, item in (value or {}).items():
            check_env_name(name)
            if "\x00" in item:
                raise ValueError(f"env var {name} has a NUL character in its value")
        return value

    def runtime_or(self, default: str) -> str:
        """The runtime asked for, or ``default`` (the environment's) when none was: a tool call that
        leaves ``runtime`` out means the default its schema advertised."""
        if self.runtime is None or "runtime" not in self.model_fields_set:
            return default
        return self.runtime


class CodeExecutionInput(RunRequest):
    """Input of ec2_code_execution."""

    # A run request as a model writes it: text files, whole seconds, a runtime the schema names.

    runtime: str = Field(  # never None: the schema names the default
        default="python3",
        description="Language to run the code with (see the allowed values).",
    )
    files: dict[str, str] | None = Field(  # type: ignore[assignment]  # JSON carries text only
        default=None,
        description=(
            "Input files to create in the work dir before the code runs: relative path -> text content, "
            "e.g. {'data/in.csv': 'a,b\\n1,2'}."
        ),
    )
    timeout: int | None = Field(  # whole seconds, as the schema says
        default=None,
        ge=1,
        le=86400,
        description="Wall-clock limit in seconds; defaults to the environment's max_execution_time.",
    )


class GetFilesInput(_Input):
    """Input of ec2_get_files."""

    task_hash: str | None = Field(
        default=None, description=f"The task to read from: {TASK_HASH_RULE}. Or give session_id."
    )
    session_id: str | None = Field(
        default=None,
        description="Read a session's work dir instead of a task's (give task_hash or session_id).",
    )
    filename: str | None = Field(
        default=None,
        description=(
            "One file to read, relative to the work dir (e.g. 'out/result.csv'), or '@stdout' / '@stderr' "
            "for the run's full captured output (of a task). Omit to get every file."
        ),
    )
    offset: int = Field(
        default=0,
        ge=0,
        description="Byte offset to start reading at, to page through a large file.",
    )

    @field_validator("task_hash")
    @classmethod
    def _hash(cls, value: str | None) -> str | None:
        return value if value is None else check_task_hash(value)

    @field_validator("session_id")
    @classmethod
    def _session(cls, value: str | None) -> str | None:
        return check_session_id(value)

    @model_validator(mode="after")
    def _one_source(self) -> GetFilesInput:
        if (self.task_hash is None) == (self.session_id is None):
            raise ValueError("give exactly one of task_hash (a task's files) and session_id (a session's)")
        return self

    @field_validator("filename")
    @classmethod
    def _filename(cls, value: str | None) -> str | None:
        return value if value is None else check_file_to_read(value)


class CleanupInput(_Input):
    """Input of ec2_cleanup_tasks."""

    hours: float | None = Field(
        default=None,
        ge=0,
        le=87600,
        description=(
            "Delete task and session dirs last used more than this many hours ago. "
            "Defaults to the environment's cleanup_after_hours."
        ),
    )


class InstanceStatusInput(_Input):
    """Input of ec2_instance_status (it takes no arguments)."""


# ---------------------------------------------------------------------------------------------------
# Outputs
# ---------------------------------------------------------------------------------------------------


class RichResult(BaseModel):
    """One thing a stateful cell showed: the value of its last expression, or a display() / figure."""

    main: bool = Field(
        default=False,
        description="True for the value of the cell's final expression (Jupyter's execute_result).",
    )
    data: dict[str, str] = Field(
        default_factory=dict,
        description=(
            "MIME type -> content: text for text types (text/plain, text/html, text/markdown, "
            "image/svg+xml, application/json as JSON text), base64 for image/png and image/jpeg."
        ),
    )
    files: dict[str, str] = Field(
        default_factory=dict,
        description=(
            "MIME type -> the file of the cell's task that holds it ('@display-N.EXT'), readable with "
            "ec2_get_files; the only place of content too large to come inline."
        ),
    )

    @property
    def text(self) -> str | None:
        return self.data.get("text/plain")


class CellError(BaseModel):
    """The exception a stateful cell raised (its interpreter and state live on)."""

    name: str = Field(description="Exception class, e.g. 'ZeroDivisionError'; 'interrupted' for a timeout.")
    value: str = Field(default="", description="The exception's message.")
    traceback: list[str] = Field(default_factory=list, description="Formatted traceback lines.")


class StateLoss(BaseModel):
    """Why the session's interpreter state is gone."""

    reason: str = Field(
        description=(
            "idle, interrupt (a cell did not stop after its interrupt), memory_limit, disk_limit, exited, "
            "killed, channel, host_gone, lifetime, cleanup, start"
        )
    )
    message: str = Field(description="The same in words.")


class ExecutionResult(BaseModel):
    """What one run did. A failed or killed run is a result too, with whatever output it made."""

    success: bool = Field(description="True only when the program exited with status 0 within its limits.")
    stdout: str = Field(
        default="",
        description=(
            "Standard output, as UTF-8 text; when stdout_truncated, its first stdout_head_chars characters "
            "followed directly by its last ones, with nothing written between them."
        ),
    )
    stderr: str = Field(
        default="", description="Standard error, as stdout is (see stderr_truncated, stderr_head_chars)."
    )
    return_code: int | None = Field(
        default=None,
        description="Exit status; negative N when killed by signal N; None if it never ran.",
    )
    execution_time: float = Field(default=0.0, description="Wall-clock seconds the program ran.")
    task_hash: str | None = Field(default=None, description="Unique id of this run, for ec2_get_files.")
    session_id: str | None = Field(default=None, description="The session the run belonged to, if any.")
    runtime: str | None = Field(default=None, description="Runtime that ran the code.")
    working_directory: str | None = Field(default=None, description="Work dir on the target.")
    files_created: list[str] = Field(
        default_factory=list, description="Files the run created or changed in the work dir."
    )
    error_message: str | None = Field(default=None, description="Why the run failed, in words.")
    timed_out: bool = Field(default=False, description="True when the wall-clock limit killed the run.")
    termination_reason: TerminationReason = Field(default="exited", description="Why the run ended.")
    signal: int | None = Field(default=None, description="Signal that killed the program, if any.")
    stdout_truncated: bool = Field(default=False, description="Inline stdout is only head and tail.")
    stderr_truncated: bool = Field(default=False, description="Inline stderr is only head and tail.")
    stdout_bytes: int = Field(default=0, description="Full size of stdout in bytes (kept on the target).")
    stderr_bytes: int = Field(default=0, description="Full size of stderr in bytes (kept on the target).")
    stdout_head_chars: int | None = Field(
        default=None,
        description="When stdout_truncated: how many characters of stdout are its head (the rest: its tail).",
    )
    stderr_head_chars: int | None = Field(
        default=None,
        description="When stderr_truncated: how many characters of stderr are its head (the rest: its tail).",
    )
    stdout_omitted_bytes: int = Field(
        default=0,
        description=(
            "Bytes of stdout between its head and its tail that are not inline; all of it is one "
            "ec2_get_files call away (filename '@stdout')."
        ),
    )
    stderr_omitted_bytes: int = Field(
        default=0, description="Bytes of stderr between its head and its tail (filename '@stderr')."
    )
    cpu_time: float = Field(default=0.0, description="CPU seconds (user + system) the run used.")
    peak_memory_mb: float = Field(
        default=0.0,
        description=(
            "Peak resident memory of the run in MB: exact where a memory cgroup is in force "
            "('cgroup:memory' in limits_enforced); otherwise the kernel's high-water mark, an upper bound "
            "that can include the memory of the process that started the run."
        ),
    )
    isolation: str | None = Field(default=None, description="Isolation in force: 'bwrap' or 'none'.")
    limits_enforced: list[str] = Field(
        default_factory=list,
        description="Which limits were really in force (rlimit:*, cgroup:*, ...).",
    )
    warnings: list[str] = Field(
        default_factory=list, description="Protections that were missing for this run, in words."
    )
    transport: str | None = Field(default=None, description="Transport that carried the run.")
    stateful: bool = Field(default=False, description="True for a cell run in the session's interpreter.")
    execution_count: int | None = Field(
        default=None, description="Stateful: the cell's number in its interpreter (1 for a fresh one)."
    )
    results: list[RichResult] = Field(
        default_factory=list,
        description="Stateful: the final expression's value and what the cell displayed.",
    )
    error: CellError | None = Field(default=None, description="Stateful: the exception the cell raised.")
    state: Literal["new", "kept", "lost"] | None = Field(
        default=None,
        description=(
            "Stateful: 'new' (a fresh interpreter ran the cell), 'kept' (variables of earlier cells were "
            "there), 'lost' (the interpreter ended during the cell; the next call starts a fresh one)."
        ),
    )
    state_lost: StateLoss | None = Field(
        default=None,
        description="Stateful: why earlier state is gone, when it is (read it before relying on it).",
    )

    @property
    def output(self) -> str:
        """stdout and stderr together, for quick printing."""
        return self.stdout + self.stderr

    def head_and_tail(self, stream: Literal["stdout", "stderr"]) -> tuple[str, str]:
        """``stream``'s inline text as (head, tail): the tail is empty unless the stream was cut."""
        text: str = getattr(self, stream)
        head_chars = getattr(self, f"{stream}_head_chars")
        if not getattr(self, f"{stream}_truncated") or head_chars is None:
            return text, ""
        return text[:head_chars], text[head_chars:]


class FileContent(BaseModel):
    """One file (or one page of it) read back from a task."""

    path: str = Field(description="Path relative to the work dir, or '@stdout' / '@stderr'.")
    size: int = Field(description="Full size of the file in bytes.")
    offset: int = Field(default=0, description="Byte offset this content starts at.")
    encoding: Literal["utf-8", "base64"] = Field(
        description="'utf-8': content is the text; 'base64': content is base64 of binary bytes."
    )
    content: str = Field(description="The bytes read, as text or base64 (see encoding).")
    truncated: bool = Field(default=False, description="More bytes follow; read on from next_offset.")
    next_offset: int | None = Field(default=None, description="Offset to read the rest from.")
    mime_type: str | None = Field(default=None, description="Guessed from the file name.")

    def data(self) -> bytes:
        """The bytes read."""
        if self.encoding == "base64":
            return base64.b64decode(self.content)
        return self.content.encode("utf-8")

    def value(self) -> str | bytes:
        """Text as ``str``, binary as ``bytes``."""
        return self.content if self.encoding == "utf-8" else self.data()


class SkippedFile(BaseModel):
    path: str
    reason: str


class GetFilesResult(BaseModel):
    """Output of ec2_get_files."""

    task_hash: str | None = None
    session_id: str | None = None
    files: list[FileContent] = Field(default_factory=list)
    skipped: list[SkippedFile] = Field(
        default_factory=list, description="Entries not returned (symlinks, special files) and why."
    )
    not_shown: list[str] = Field(
        default_factory=list,
        description="Files left out once the output budget was spent; fetch each with its filename.",
    )


class RemovedEntry(BaseModel):
    kind: Literal["task", "session", "run"]
    id: str


class SkippedEntry(BaseModel):
    kind: Literal["task", "session", "run"]
    id: str
    reason: str = Field(description="Why it was kept, e.g. a run in progress.")


class UnreachedTarget(BaseModel):
    target: str = Field(description="The instance (a fleet's member) that did not answer.")
    error: str = Field(description="What went wrong reaching it.")


class CleanupResult(BaseModel):
    """Output of ec2_cleanup_tasks: exactly what was removed, what was chosen but kept in use, and which
    targets could not be looked at."""

    policy: str = Field(description="Cleanup policy that chose what to remove.")
    hours: float | None = Field(default=None, description="Age threshold used, in hours.")
    removed: list[RemovedEntry] = Field(default_factory=list)
    skipped: list[SkippedEntry] = Field(
        default_factory=list,
        description="Chosen but not removed: in use by a run in progress (it is removed by a later cleanup).",
    )
    unreached: list[UnreachedTarget] = Field(
        default_factory=list,
        description="Fleet members that did not answer: nothing of theirs was looked at or removed; clean "
        "up again once they are back.",
    )

    @property
    def removed_tasks(self) -> list[str]:
        return [e.id for e in self.removed if e.kind == "task"]

    @property
    def removed_sessions(self) -> list[str]:
        return [e.id for e in self.removed if e.kind == "session"]


class RuntimeStatus(BaseModel):
    name: str
    available: bool
    version: str | None = None
    executable: str | None = None
    error: str | None = None


class StatusPart(BaseModel):
    """One independently checked part of the target's health."""

    name: str = Field(description="What was checked, e.g. 'instance', 'ssm_agent', 'probe'.")
    ok: bool
    message: str = Field(description="What was found, or what failed and what to check.")
    details: dict[str, object] = Field(default_factory=dict)


class LiveInterpreter(BaseModel):
    """A session's interpreter that is up."""

    session_id: str
    busy: bool = Field(description="A cell is running in it (cleanup leaves its session alone).")
    executions: int | None = Field(default=None, description="Cells it has run.")
    idle_seconds: float = Field(default=0.0, description="Seconds since its last cell ended.")
    memory_kb: int | None = Field(
        default=None, description="Resident memory of its session's processes (None where runs share a uid)."
    )


class InstanceStatus(BaseModel):
    """Output of ec2_instance_status."""

    transport: str
    target: str = Field(description="Instance id, host, or 'local'.")
    healthy: bool = Field(description="True when every part is ok and code can run.")
    parts: list[StatusPart] = Field(default_factory=list)
    runtimes: list[RuntimeStatus] = Field(default_factory=list)
    disk_free_mb: float | None = None
    isolation: str | None = Field(default=None, description="'bwrap' or 'none'.")
    cgroup_limits: list[str] = Field(default_factory=list)
    interpreters: list[LiveInterpreter] = Field(
        default_factory=list, description="Sessions' persistent interpreters that are up on the target."
    )
    warnings: list[str] = Field(default_factory=list)
