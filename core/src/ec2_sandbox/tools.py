"""The registry of the four tools: the ONLY place they are named and described.

Adapters render every framework's tools from :data:`TOOLS`: name, description (written for a language
model), input model, and a handler that takes an :class:`AsyncSandbox` and a validated input.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel

from .sandbox import AsyncSandbox
from .schema import (
    CleanupInput,
    CleanupResult,
    CodeExecutionInput,
    ExecutionResult,
    GetFilesInput,
    GetFilesResult,
    InstanceStatus,
    InstanceStatusInput,
)

Handler = Callable[[AsyncSandbox, Any], Awaitable[BaseModel]]


@dataclass(frozen=True)
class ToolSpec:
    name: str
    description: str
    input_model: type[BaseModel]
    output_model: type[BaseModel]
    handler: Handler

    def input_schema(self, sandbox: AsyncSandbox | None = None) -> dict[str, Any]:
        """JSON schema of the input; with a sandbox, ``runtime`` lists exactly the allowed runtimes."""
        schema = self.input_model.model_json_schema()
        if sandbox is not None and "runtime" in schema.get("properties", {}):
            allowed = sandbox.allowed_runtimes()
            prop = schema["properties"]["runtime"]
            prop["enum"] = allowed
            prop["default"] = sandbox.default_runtime()
            prop["description"] = f"{prop['description']} One of: " + "; ".join(
                f"{n} ({sandbox.registry.runtimes[n].description})" for n in allowed
            )
        return schema

    async def invoke(self, sandbox: AsyncSandbox, arguments: Mapping[str, Any] | BaseModel) -> BaseModel:
        """Validate ``arguments`` with the input model and run the handler."""
        data = (
            arguments
            if isinstance(arguments, self.input_model)
            else self.input_model.model_validate(arguments)
        )
        return await self.handler(sandbox, data)


async def _execute(sandbox: AsyncSandbox, data: CodeExecutionInput) -> ExecutionResult:
    # The tool's input is a RunRequest, already checked by its model: it goes through as it is.
    return await sandbox.execute(data)


async def _get_files(sandbox: AsyncSandbox, data: GetFilesInput) -> GetFilesResult:
    return await sandbox.get_files_for_model(
        data.task_hash, data.filename, data.offset, session_id=data.session_id
    )


async def _cleanup(sandbox: AsyncSandbox, data: CleanupInput) -> CleanupResult:
    return await sandbox.cleanup_tasks(data.hours)


async def _status(sandbox: AsyncSandbox, data: InstanceStatusInput) -> InstanceStatus:
    return await sandbox.instance_status()


TOOLS: tuple[ToolSpec, ...] = (
    ToolSpec(
        name="ec2_code_execution",
        description=(
            "Run a complete program in an isolated sandbox and get its stdout, stderr and exit code. "
            "Each call starts a fresh process in its own work dir; nothing from the caller is inherited. "
            "Pass input files with `files` and settings with `env_vars`. Use the same `session_id` across "
            "calls to keep files between them; add `stateful: true` to run Python as a cell of the "
            "session's persistent interpreter instead, where variables, imports and loaded data stay from "
            "one call to the next and a final expression's value (tables, charts) comes back. Long output "
            "is shown as head and tail: read the rest, and any file the program wrote, with ec2_get_files "
            "and the returned task_hash (or session_id)."
        ),
        input_model=CodeExecutionInput,
        output_model=ExecutionResult,
        handler=_execute,
    ),
    ToolSpec(
        name="ec2_get_files",
        description=(
            "Read files produced by an earlier ec2_code_execution call: give its task_hash, and a filename "
            "for one file (or omit it for all files). '@stdout' and '@stderr' return the run's complete "
            "output. Large files come in pages: call again with the returned next_offset."
        ),
        input_model=GetFilesInput,
        output_model=GetFilesResult,
        handler=_get_files,
    ),
    ToolSpec(
        name="ec2_cleanup_tasks",
        description=(
            "Delete sandbox work dirs (tasks and sessions) not used for more than `hours` hours, and "
            "report what was removed."
        ),
        input_model=CleanupInput,
        output_model=CleanupResult,
        handler=_cleanup,
    ),
    ToolSpec(
        name="ec2_instance_status",
        description=(
            "Check that the sandbox target is reachable and healthy: instance state, agent or SSH "
            "reachability, available runtimes and versions, free disk, and the isolation in force."
        ),
        input_model=InstanceStatusInput,
        output_model=InstanceStatus,
        handler=_status,
    ),
)

TOOLS_BY_NAME = {tool.name: tool for tool in TOOLS}
