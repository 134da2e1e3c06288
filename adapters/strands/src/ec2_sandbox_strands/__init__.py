"""The four ec2-sandbox tools for Strands Agents.

>>> from strands import Agent
>>> from ec2_sandbox_strands import create_strands_tools
>>> agent = Agent(tools=create_strands_tools())  # local sandbox; or a SandboxConfig / environment name

Each tool is rendered from the core's registry (:data:`ec2_sandbox.tools.TOOLS`): name, description and
input schema (with the allowed runtimes as an enum) are never written here. Strands does not validate
tool input against the schema, so every call is validated with the core's pydantic model; a bad call
comes back to the model as an error result that says how to fix it. Results carry text, JSON and, for
images a run saved, Strands image blocks.

``EC2CodeInterpreter`` (extra ``code-interpreter``) is Strands' own ``code_interpreter`` tool on the same
target: ``Agent(tools=[EC2CodeInterpreter(config).code_interpreter])``.
"""

from __future__ import annotations

import contextlib
import json
from typing import Any

from strands.types.tools import AgentTool, ToolGenerator, ToolResult, ToolUse
from strands.types.tools import ToolSpec as StrandsToolSpec

from ec2_sandbox import AsyncSandbox, Sandbox, SandboxConfig
from ec2_sandbox.presentation import Rendered, call_tool, sandbox_for
from ec2_sandbox.tools import TOOLS, ToolSpec

__all__ = [
    "EC2CodeInterpreter",
    "EC2SandboxStrandsTool",
    "create_strands_tool",
    "create_strands_tools",
    "to_tool_result",
]


def __getattr__(name: str) -> Any:
    # Imported on first use: the code_interpreter platform needs the optional strands-agents-tools, and the
    # four tools must import without it. Without it, this raises ImportError naming the extra to install.
    if name == "EC2CodeInterpreter":
        from .code_interpreter import EC2CodeInterpreter

        return EC2CodeInterpreter
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def to_tool_result(tool_use_id: str, rendered: Rendered) -> ToolResult:
    """A Strands ToolResult: text for the model, the JSON form, and image blocks."""
    content: list[Any] = [{"text": rendered.text}]
    if not rendered.is_error:
        # the text already holds stdout and file contents: the JSON leaves them out
        content.append({"json": rendered.compact()})
    for image in rendered.images:
        content.append({"image": {"format": image.format, "source": {"bytes": image.data}}})
    return {
        "toolUseId": tool_use_id,
        "status": "error" if rendered.is_error else "success",
        "content": content,
    }


class EC2SandboxStrandsTool(AgentTool):
    """One ec2-sandbox tool as a Strands ``AgentTool`` (async, so concurrent tool calls run concurrently)."""

    def __init__(self, spec: ToolSpec, sandbox: AsyncSandbox) -> None:
        super().__init__()
        self.spec = spec
        self.sandbox = sandbox

    @property
    def tool_name(self) -> str:
        return self.spec.name

    @property
    def tool_spec(self) -> StrandsToolSpec:
        # Computed on each read: the runtime enum follows the sandbox's registry and configuration.
        return {
            "name": self.spec.name,
            "description": self.spec.description,
            "inputSchema": {"json": self.spec.input_schema(self.sandbox)},
        }

    @property
    def tool_type(self) -> str:
        return "ec2_sandbox"

    async def stream(
        self, tool_use: ToolUse, invocation_state: dict[str, Any], **kwargs: Any
    ) -> ToolGenerator:
        arguments = tool_use.get("input")
        if isinstance(arguments, str):  # some providers hand over unparsed JSON
            with contextlib.suppress(ValueError):
                arguments = json.loads(arguments or "{}")
        rendered = await call_tool(self.sandbox, self.spec, arguments)
        # The last value a tool yields is its result (Strands' convention for AgentTools).
        yield to_tool_result(tool_use["toolUseId"], rendered)


def create_strands_tools(
    config: SandboxConfig | AsyncSandbox | Sandbox | str | None = None,
) -> list[EC2SandboxStrandsTool]:
    """The four tools for ``Agent(tools=...)``, all sharing one sandbox.

    ``config``: a :class:`SandboxConfig`, an environment name from the configuration file, an existing
    ``AsyncSandbox``/``Sandbox``, or None for the local default.
    """
    sandbox = sandbox_for(config)
    return [EC2SandboxStrandsTool(spec, sandbox) for spec in TOOLS]


#: The name the original tool used.
create_strands_tool = create_strands_tools
