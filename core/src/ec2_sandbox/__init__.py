"""ec2-sandbox: run AI-agent code safely on your EC2 instance or on this machine.

>>> from ec2_sandbox import Sandbox
>>> Sandbox().execute_code("print(1 + 1)").stdout
'2\\n'
"""

from __future__ import annotations

import logging

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

logging.getLogger("ec2_sandbox").addHandler(logging.NullHandler())

#: The name the original tool used; the same class.
EC2SandboxTool = Sandbox

__version__ = "0.1.0"

__all__ = [
    "TOOLS",
    "AsyncSandbox",
    "CleanupResult",
    "ConfigError",
    "EC2SandboxTool",
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
