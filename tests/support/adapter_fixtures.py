"""Fixtures for the adapter tests: a local sandbox whose registry holds a runtime added by a real plugin.

Each folder of adapter tests takes them in with a star import in its conftest.py (``adapters/conftest.py``
for the adapters' own folders, ``tests/adapters/conftest.py`` for the tests of all adapters together).
"""

from __future__ import annotations

import shutil
import sys
import tempfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from ec2_sandbox import AsyncSandbox, SandboxConfig
from ec2_sandbox.plugins import Registry, load_registry
from support.scenario import PLUGIN_RUNTIME

PLUGIN_MODULE = f'''\
"""A test-only ec2-sandbox plugin: one extra runtime."""
from ec2_sandbox import Runtime, hookimpl


@hookimpl
def register_runtimes(register):
    register(
        Runtime(
            name="{PLUGIN_RUNTIME}",
            description="Python 3 in UTF-8 mode (added by a test plugin).",
            filename="main.py",
            argv=["python3", "-X", "utf8", "{{file}}"],
            version_argv=["python3", "--version"],
        )
    )
'''


@pytest.fixture(scope="session")
def plugin_path() -> Iterator[str]:
    """A directory holding an installed-looking distribution whose entry point is the plugin above."""
    root = Path(tempfile.mkdtemp(prefix="ec2sb-plugin-", dir="/tmp"))
    (root / "ec2_sandbox_testplugin.py").write_text(PLUGIN_MODULE)
    info = root / "ec2_sandbox_testplugin-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: ec2-sandbox-testplugin\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text("[ec2_sandbox]\ntestplugin = ec2_sandbox_testplugin\n")
    yield str(root)
    shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="session")
def plugin_registry(plugin_path: str) -> Registry:
    """The registry as the plugin manager loads it with the test plugin installed."""
    sys.path.insert(0, plugin_path)
    try:
        registry = load_registry()
    finally:
        sys.path.remove(plugin_path)
    assert PLUGIN_RUNTIME in registry.runtimes, registry.errors
    return registry


@pytest.fixture
def base_dir(tmp_base_dir: str) -> str:
    """The suite-wide sandbox base dir (the root conftest.py), under the name these tests use."""
    return tmp_base_dir


@pytest.fixture
def config(base_dir: str) -> SandboxConfig:
    return SandboxConfig(base_sandbox_dir=base_dir, max_output_chars=4000, max_execution_time=60)


@pytest.fixture
async def sandbox(config: SandboxConfig, plugin_registry: Registry) -> AsyncIterator[AsyncSandbox]:
    box = AsyncSandbox(config, registry=plugin_registry)
    yield box
    await box.aclose()
