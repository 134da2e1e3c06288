"""The Agents SDK tools in ``Runner.run`` with the SDK's own scripted model."""

from __future__ import annotations

import os
from typing import Any

os.environ.setdefault("OPENAI_AGENTS_DISABLE_TRACING", "1")

from agents import Agent, Runner
from agents.strict_schema import ensure_strict_json_schema
from agents.testing import ModelCall, ModelStep, ScriptedModel, assistant_message, function_call
from pydantic import BaseModel, ConfigDict, Field
from support.agents_sdk import received_from
from support.scenario import PLUGIN_RUNTIME, TOOL_NAMES, Script

from ec2_sandbox import AsyncSandbox, SandboxConfig
from ec2_sandbox.tools import TOOLS_BY_NAME, ToolSpec
from ec2_sandbox_openai_agents import (
    STRICT_KEYWORDS,
    create_openai_tools,
    from_strict_arguments,
    map_fields,
    strict_schema,
)


def assert_strict(schema: dict[str, Any]) -> None:
    """OpenAI's strict-mode rules, checked on every object of the schema."""
    if schema.get("type") == "object":
        assert schema.get("additionalProperties") is False, schema
        assert sorted(schema.get("required", [])) == sorted(schema.get("properties", {})), schema
    assert "default" not in schema, schema
    assert set(schema) <= STRICT_KEYWORDS, set(schema) - STRICT_KEYWORDS
    for sub in schema.get("properties", {}).values():
        assert_strict(sub)
    for sub in schema.get("anyOf", []):
        assert_strict(sub)
    if isinstance(schema.get("items"), dict):
        assert_strict(schema["items"])


def responder(script: Script, tools: list[Any]):  # type: ignore[no-untyped-def]
    params = {t.name: t.params_json_schema for t in tools}

    def respond(call: ModelCall) -> list[Any]:
        script.tool_names_seen.append([t.name for t in call.tools])
        for t in call.tools:
            script.schemas_seen[t.name] = t.params_json_schema
        calls = script.next_turn(received_from(call.input))
        if calls is None:
            return [assistant_message("All done.")]
        out = []
        for c in calls:
            # a strict-mode model sends every property; null where it wants the default
            args = {name: c.args.get(name) for name in params[c.name]["properties"]}
            out.append(function_call(c.name, args, call_id=c.id))
        return out

    return respond


async def test_runner_loop(sandbox: AsyncSandbox) -> None:
    script = Script(pairs=True)
    tools = create_openai_tools(sandbox)
    model = ScriptedModel([ModelStep.respond(responder(script, tools)) for _ in range(5)])
    agent = Agent(name="coder", instructions="Run code.", model=model, tools=tools)
    result = await Runner.run(agent, "Run some code for me.", max_turns=10)
    assert result.final_output == "All done."
    script.check(images=True)
    model.assert_complete()
    assert script.tool_names_seen[0] == TOOL_NAMES
    execution = script.schemas_seen["ec2_code_execution"]
    runtime = execution["properties"]["runtime"]["anyOf"][0]
    assert PLUGIN_RUNTIME in runtime["enum"]
    for schema in script.schemas_seen.values():
        assert_strict(schema)
    assert execution["properties"]["env_vars"]["anyOf"][0]["type"] == "array"


def test_schemas_pass_the_sdk_strict_check(config: SandboxConfig) -> None:
    for tool in create_openai_tools(config):
        assert tool.strict_json_schema
        ensure_strict_json_schema(dict(tool.params_json_schema), _reject_open_objects=True)
        assert_strict(tool.params_json_schema)


async def test_tool_errors_are_outputs_not_exceptions(config: SandboxConfig) -> None:
    execute = create_openai_tools(config)[0]
    out = await execute.on_invoke_tool(None, "{not json")  # type: ignore[arg-type]
    assert "not valid JSON" in out
    out = await execute.on_invoke_tool(
        None,  # type: ignore[arg-type]
        '{"code": "print(1)", "env_vars": [{"name": "A", "value": "1"}, {"name": "A", "value": "2"}]}',
    )
    assert "'A' is given twice" in out
    out = await execute.on_invoke_tool(
        None, '{"code": "print(1)", "env_vars": [{"name": "1BAD", "value": "x"}]}'
    )  # type: ignore[arg-type]
    assert "1BAD" in out and "call" in out


def test_pairs_mapping() -> None:
    maps = map_fields(TOOLS_BY_NAME["ec2_code_execution"].input_schema())
    assert maps == {"files", "env_vars"}
    args = from_strict_arguments(
        {"code": "x", "runtime": None, "files": [{"name": "a.txt", "value": "A"}], "env_vars": []}, maps
    )
    assert args == {"code": "x", "files": {"a.txt": "A"}, "env_vars": {}}


class Point(BaseModel):
    model_config = ConfigDict(extra="forbid")

    x: int
    y: int


class Labelled(BaseModel):
    """A tool input with maps of its own: required, optional, non-string values; and a nested object."""

    model_config = ConfigDict(extra="forbid")

    labels: dict[str, str] = Field(description="Labels: name -> text.")
    weights: dict[str, int] | None = Field(default=None, description="Weights: name -> integer.")
    point: Point = Field(description="A point (an object, not a map).")


async def test_map_fields_are_found_in_the_schema(config: SandboxConfig) -> None:
    """A map field the adapter has never heard of is rendered as pairs, and mapped back."""

    async def handler(sandbox: AsyncSandbox, data: Labelled) -> Labelled:
        return data

    spec = ToolSpec("labelled", "Echo the labels.", Labelled, Labelled, handler)
    schema = spec.input_schema()
    assert map_fields(schema) == {"labels", "weights"}  # not 'point': an object with properties
    strict = strict_schema(spec, AsyncSandbox(config))
    ensure_strict_json_schema(dict(strict), _reject_open_objects=True)
    assert_strict(strict)
    assert strict["properties"]["labels"]["type"] == "array"
    weight = strict["properties"]["weights"]["anyOf"][0]["items"]["properties"]["value"]
    assert weight["type"] == "integer"
    args = from_strict_arguments(
        {"labels": [{"name": "a", "value": "b"}], "weights": [{"name": "w", "value": 3}], "point": None},
        map_fields(schema),
    )
    assert args == {"labels": {"a": "b"}, "weights": {"w": 3}}
