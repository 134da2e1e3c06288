"""The four ec2-sandbox tools for LangChain and LangGraph.

>>> from ec2_sandbox_langchain import create_langchain_tools
>>> tools = create_langchain_tools()  # local sandbox; or a SandboxConfig / environment name
>>> model_with_tools = chat_model.bind_tools(tools)

Each tool is rendered from the core's registry (:data:`ec2_sandbox.tools.TOOLS`). The input schema is
given to LangChain as a JSON-schema dict, not a pydantic model: LangGraph's ``ToolNode`` (and so
``create_agent``) injects its own object into any tool argument named ``runtime``, which a pydantic
schema with a ``runtime`` field would trigger. Input is validated with the core's pydantic model instead.

Results use ``response_format="content_and_artifact"``: the content is text for the model (plus image
blocks for images a run saved), the artifact is the structured result with the image bytes. A bad call
raises :class:`ToolException`, which the tool turns into a tool message saying how to fix the call.

Synchronous calls (``invoke``) run on the private event loop of a :class:`Sandbox` facade shared by the
four tools (the caller's own ``Sandbox`` when one was given): a transport that keeps a connection (SSH,
EIC) opens it on the first sync call and every later one reuses it, where a throwaway loop per call would
open a new one each time and leave the old one open.

:class:`EC2SandboxBackend` (``pip install 'ec2-sandbox-langchain[deepagents]'``) is a Deep Agents sandbox
backend on one session of the same sandbox.
"""

from __future__ import annotations

from typing import Any, Literal

from langchain_core.callbacks import AsyncCallbackManagerForToolRun, CallbackManagerForToolRun
from langchain_core.tools import BaseTool, BaseToolkit, ToolException
from pydantic import ConfigDict, Field, PrivateAttr

from ec2_sandbox import AsyncSandbox, Sandbox, SandboxConfig
from ec2_sandbox.presentation import Rendered, call_tool, sandbox_for
from ec2_sandbox.tools import TOOLS, ToolSpec

__all__ = [
    "EC2SandboxBackend",
    "EC2SandboxTool",
    "EC2SandboxToolkit",
    "create_langchain_tools",
    "to_content_and_artifact",
]


def __getattr__(name: str) -> Any:
    # The Deep Agents backend is imported on first use: the tools work without Deep Agents installed, and
    # the backend's module names the extra to install when it is missing.
    if name == "EC2SandboxBackend":
        from .deepagents import EC2SandboxBackend

        return EC2SandboxBackend
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def to_content_and_artifact(rendered: Rendered) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """LangChain content blocks (text, then images) and the artifact (structured data and image bytes)."""
    content: list[dict[str, Any]] = [{"type": "text", "text": rendered.text}]
    for image in rendered.images:
        content.append({"type": "image", "base64": image.b64, "mime_type": image.mime_type})
    artifact = {
        "data": rendered.data,
        "images": [{"path": i.path, "mime_type": i.mime_type, "data": i.data} for i in rendered.images],
    }
    return content, artifact


def _error_text(error: ToolException) -> str:
    return str(error)


class EC2SandboxTool(BaseTool):
    """One ec2-sandbox tool as a LangChain tool (async ``_arun``; ``_run`` for synchronous callers)."""

    model_config = ConfigDict(arbitrary_types_allowed=True)

    spec: ToolSpec = Field(exclude=True)
    sandbox: AsyncSandbox = Field(exclude=True)
    #: Runs the synchronous calls on its loop; its ``aio`` is ``sandbox``, so both paths share one transport.
    sync_sandbox: Sandbox = Field(exclude=True)
    response_format: Literal["content", "content_and_artifact"] = "content_and_artifact"
    handle_tool_error: Any = _error_text

    @classmethod
    def from_spec(cls, spec: ToolSpec, sandbox: Sandbox) -> EC2SandboxTool:
        return cls(
            name=spec.name,
            description=spec.description,
            args_schema=spec.input_schema(sandbox.aio),
            spec=spec,
            sandbox=sandbox.aio,
            sync_sandbox=sandbox,
        )

    async def _arun(
        self, run_manager: AsyncCallbackManagerForToolRun | None = None, **kwargs: Any
    ) -> tuple[list[dict[str, Any]], dict[str, Any]]:
        rendered = await call_tool(self.sandbox, self.spec, kwargs)
        if rendered.is_error:
            raise ToolException(rendered.text)
        return to_content_and_artifact(rendered)

    def _run(
        self, run_manager: CallbackManagerForToolRun | None = None, **kwargs: Any
    ) -> tuple[list[dict[str, Any]], dict[str, Any]]:
        # The facade's loop lives on its own thread: this works whether or not the caller is inside an event
        # loop, and it outlives the call, so the transport's connection does too.
        return self.sync_sandbox.run(self._arun(**kwargs))


def create_langchain_tools(
    config: SandboxConfig | AsyncSandbox | Sandbox | str | None = None,
) -> list[EC2SandboxTool]:
    """The four tools, sharing one sandbox.

    ``config``: a :class:`SandboxConfig`, an environment name from the configuration file, an existing
    ``AsyncSandbox``/``Sandbox``, or None for the local default.
    """
    sandbox = _sync_facade(config)
    return [EC2SandboxTool.from_spec(spec, sandbox) for spec in TOOLS]


def _sync_facade(config: SandboxConfig | AsyncSandbox | Sandbox | str | None) -> Sandbox:
    """The :class:`Sandbox` whose loop serves the tools' sync calls, over the sandbox ``config`` names."""
    if isinstance(config, Sandbox):
        return config
    sandbox = sandbox_for(config)
    facade = Sandbox(sandbox.config, registry=sandbox.registry)
    facade.aio = sandbox  # the caller's AsyncSandbox itself: one transport for async and sync calls
    return facade


class EC2SandboxToolkit(BaseToolkit):
    """The four ec2-sandbox tools as a LangChain toolkit.

    >>> toolkit = EC2SandboxToolkit(config="production")
    >>> tools = toolkit.get_tools()
    """

    model_config = ConfigDict(arbitrary_types_allowed=True)

    config: SandboxConfig | AsyncSandbox | Sandbox | str | None = None
    _tools: list[EC2SandboxTool] | None = PrivateAttr(default=None)

    def get_tools(self) -> list[BaseTool]:
        if self._tools is None:
            self._tools = create_langchain_tools(self.config)
        return list(self._tools)
