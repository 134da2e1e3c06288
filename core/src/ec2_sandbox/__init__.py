"""ec2-sandbox: run AI-agent code safely on your EC2 instance or on this machine.

>>> from ec2_sandbox import Sandbox
>>> Sandbox().execute_code("print(1 + 1)").stdout
'2\\n'
"""

from __future__ import annotations

import logging
import warnings
from typing import Any

from .config import SandboxConfig
from .errors import (
    ConfigError,
    InvalidInputError,
    PluginError,
    SandboxError,
    TaskNotFoundError,
    TransportError,
)
from .hookspecs import hookimpl
from .runtimes import Runtime
from .sandbox import AsyncSandbox, Sandbox
from .schema import CleanupResult, ExecutionResult, FileContent, InstanceStatus
from .tools import TOOLS, ToolSpec

logging.getLogger(__name__).addHandler(logging.NullHandler())


def __getattr__(name: str) -> Any:
    # The original tool's name for the sandbox. ec2_sandbox_langchain.EC2SandboxTool is a LangChain tool,
    # something else entirely: the alias stays for code written for the original tool, and says so.
    if name == "EC2SandboxTool":
        warnings.warn(
            "ec2_sandbox.EC2SandboxTool is deprecated: use ec2_sandbox.Sandbox (the same class). "
            "For LangChain tools use ec2_sandbox_langchain.create_langchain_tools().",
            DeprecationWarning,
            stacklevel=2,
        )
        return Sandbox
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__version__ = "0.1.0"

__all__ = [
    "TOOLS",
    "AsyncSandbox",
    "CleanupResult",
    "ConfigError",
    "ExecutionResult",
    "FileContent",
    "InstanceStatus",
    "InvalidInputError",
    "PluginError",
    "Runtime",
    "Sandbox",
    "SandboxConfig",
    "SandboxError",
    "TaskNotFoundError",
    "ToolSpec",
    "TransportError",
    "hookimpl",
]
