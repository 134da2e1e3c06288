"""The core's conformance suite with exactly the two first-party plugins loaded (EC2_SANDBOX_PLUGINS), and
with every plugin disabled: the plugins add to the core without changing any of its behaviour."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from support.plugins import registry_with

from ec2_sandbox import AsyncSandbox, SandboxConfig
from ec2_sandbox.testing.conformance import ConformanceSuite


class TestWithFirstPartyPlugins(ConformanceSuite):
    @pytest.fixture
    async def sandbox(
        self, tmp_base_dir: str, monkeypatch: pytest.MonkeyPatch
    ) -> AsyncIterator[AsyncSandbox]:
        registry = registry_with(monkeypatch, "perl,keep-newest")
        assert registry.errors == []
        assert [p.name for p in registry.plugins][1:] == ["keep-newest", "perl"]
        async with AsyncSandbox(SandboxConfig(base_sandbox_dir=tmp_base_dir), registry=registry) as sandbox:
            yield sandbox


class TestWithoutPlugins(ConformanceSuite):
    @pytest.fixture
    async def sandbox(
        self, tmp_base_dir: str, monkeypatch: pytest.MonkeyPatch
    ) -> AsyncIterator[AsyncSandbox]:
        registry = registry_with(monkeypatch, "")
        assert [p.name for p in registry.plugins] == ["ec2_sandbox.builtins"]
        async with AsyncSandbox(SandboxConfig(base_sandbox_dir=tmp_base_dir), registry=registry) as sandbox:
            yield sandbox
