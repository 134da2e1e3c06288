"""Every adapter's factory takes the same configuration forms and renders the same registry."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from mcp.client import Client
from support.scenario import PLUGIN_RUNTIME

from ec2_sandbox import AsyncSandbox, SandboxConfig
from ec2_sandbox.tools import TOOLS
from ec2_sandbox_langchain import create_langchain_tools
from ec2_sandbox_mcp import create_mcp_server
from ec2_sandbox_openai_agents import create_openai_tools
from ec2_sandbox_strands import create_strands_tools


def _enum(schema: dict[str, Any]) -> list[str]:
    prop = schema["properties"]["runtime"]
    if "anyOf" in prop:  # strict mode: nullable
        prop = prop["anyOf"][0]
    return prop["enum"]


async def strands_schemas(config: Any) -> dict[str, dict[str, Any]]:
    return {t.tool_name: t.tool_spec["inputSchema"]["json"] for t in create_strands_tools(config)}


async def langchain_schemas(config: Any) -> dict[str, dict[str, Any]]:
    return {t.name: t.args_schema for t in create_langchain_tools(config)}


async def openai_schemas(config: Any) -> dict[str, dict[str, Any]]:
    return {t.name: t.params_json_schema for t in create_openai_tools(config)}


async def mcp_schemas(config: Any) -> dict[str, dict[str, Any]]:
    async with Client(create_mcp_server(config)) as client:
        return {t.name: t.input_schema for t in (await client.list_tools()).tools}


RENDERERS: list[Callable[[Any], Any]] = [strands_schemas, langchain_schemas, openai_schemas, mcp_schemas]


@pytest.mark.parametrize("render", RENDERERS, ids=lambda f: f.__name__.split("_")[0])
async def test_environment_name_and_allowed_runtimes(
    render: Callable[[Any], Any], tmp_path: Path, base_dir: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An environment name is resolved by the configuration manager; its allowed_runtimes become the
    enum every framework shows."""
    path = tmp_path / "config.json"
    path.write_text(
        json.dumps({"lab": {"allowed_runtimes": ["node", "python3"], "base_sandbox_dir": base_dir}})
    )
    monkeypatch.setenv("EC2_SANDBOX_CONFIG", str(path))
    schemas = await render("lab")
    assert list(schemas) == [t.name for t in TOOLS]
    assert _enum(schemas["ec2_code_execution"]) == ["node", "python3"]


@pytest.mark.parametrize("render", RENDERERS, ids=lambda f: f.__name__.split("_")[0])
async def test_plugin_runtime_in_every_schema(render: Callable[[Any], Any], sandbox: AsyncSandbox) -> None:
    schemas = await render(sandbox)
    assert PLUGIN_RUNTIME in _enum(schemas["ec2_code_execution"])
    assert "Python 3 in UTF-8 mode (added by a test plugin)" in json.dumps(schemas["ec2_code_execution"])


@pytest.mark.parametrize("render", RENDERERS, ids=lambda f: f.__name__.split("_")[0])
async def test_descriptions_come_from_the_registry(
    render: Callable[[Any], Any], config: SandboxConfig
) -> None:
    schemas = await render(config)
    for spec in TOOLS:
        for name, field in spec.input_model.model_fields.items():
            assert field.description in schemas[spec.name]["properties"][name]["description"]
