"""The conformance suite through the local transport, in both of its modes."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from ec2_sandbox import AsyncSandbox, SandboxConfig
from ec2_sandbox.testing.conformance import ConformanceSuite
from ec2_sandbox.transports.local import LocalTransport


class TestLocalInProcess(ConformanceSuite):
    @pytest.fixture
    async def sandbox(self, tmp_base_dir: str) -> AsyncIterator[AsyncSandbox]:
        async with AsyncSandbox(SandboxConfig(base_sandbox_dir=tmp_base_dir)) as sandbox:
            yield sandbox


class TestLocalSubprocess(ConformanceSuite):
    @pytest.fixture
    async def sandbox(self, tmp_base_dir: str) -> AsyncIterator[AsyncSandbox]:
        config = SandboxConfig(base_sandbox_dir=tmp_base_dir)
        async with AsyncSandbox(config, transport=LocalTransport(mode="subprocess")) as sandbox:
            yield sandbox
