"""The four ec2-sandbox tools for the OpenAI Agents SDK.

>>> from agents import Agent
>>> from ec2_sandbox_openai_agents import create_openai_tools
>>> agent = Agent(name="coder", tools=create_openai_tools())  # or a SandboxConfig / environment name

Each tool is a :class:`agents.FunctionTool` rendered from the core's registry
(:data:`ec2_sandbox.tools.TOOLS`) in the SDK's strict JSON-schema mode. Strict mode refuses free-form maps
and optional properties, so for this framework:

- map-typed fields (``dict[str, str]`` in the core: ``files``, ``env_vars``, and any a tool gains later,
  found in its JSON schema) are lists of ``{"name": ..., "value": ...}`` pairs, mapped back to the core's
  dicts before validation;
- every property is required and nullable; ``null`` means "use the default" (named in the description).

An exception raised in a FunctionTool would fail the whole run, so every failure — a bad call, an
unreachable target — comes back to the model as the tool's output, saying how to fix the call.
Images a run saved come back as image outputs.

:class:`EC2SandboxClient` (module :mod:`.sandbox`) is the other way in: an ec2-sandbox session as the
sandbox of a ``SandboxAgent`` (``agents.sandbox``), whose shell, file and patch tools then work in it.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Collection
from typing import Any

from agents import FunctionTool, RunContextWrapper, ToolOutputImage, ToolOutputText

from ec2_sandbox import AsyncSandbox, Sandbox, SandboxConfig
from ec2_sandbox.errors import InvalidInputError
from ec2_sandbox.presentation import Rendered, call_tool, render_error, sandbox_for
from ec2_sandbox.tools import TOOLS, ToolSpec

from .sandbox import EC2SandboxClient, EC2SandboxClientOptions, EC2SandboxSession, EC2SandboxSessionState

__all__ = [
    "EC2SandboxClient",
    "EC2SandboxClientOptions",
    "EC2SandboxSession",
    "EC2SandboxSessionState",
    "create_openai_tools",
    "from_strict_arguments",
    "map_fields",
    "strict_schema",
    "to_tool_output",
]


def _map_values(prop: dict[str, Any]) -> dict[str, Any] | None:
    """The schema of a map's values when ``prop`` is a free-form map (or an optional one), else None."""
    for branch in prop.get("anyOf", [prop]):
        values = branch.get("additionalProperties")
        if branch.get("type") == "object" and isinstance(values, dict) and not branch.get("properties"):
            return values
    return None


def map_fields(schema: dict[str, Any]) -> frozenset[str]:
    """The properties of an input schema that are free-form maps (``dict[str, X]``), which strict mode
    refuses: this adapter gives them as lists of name/value pairs."""
    return frozenset(name for name, prop in schema.get("properties", {}).items() if _map_values(prop))


def _pairs(values: dict[str, Any]) -> dict[str, Any]:
    return {
        "type": "array",
        "items": {
            "type": "object",
            "properties": {
                "name": {"type": "string", "description": "The key, as the description names it."},
                "value": {**values, "description": "Its value."},
            },
            "required": ["name", "value"],
            "additionalProperties": False,
        },
    }


#: JSON-schema keywords strict mode accepts; others (minLength, title, default, ...) are dropped here and
#: enforced by the core's validation instead.
STRICT_KEYWORDS = frozenset(
    {
        "type",
        "properties",
        "required",
        "additionalProperties",
        "items",
        "enum",
        "const",
        "anyOf",
        "description",
        "pattern",
        "format",
        "minimum",
        "maximum",
        "exclusiveMinimum",
        "exclusiveMaximum",
        "multipleOf",
        "minItems",
        "maxItems",
    }
)


def _supported(schema: Any) -> Any:
    """``schema`` with only the keywords strict mode accepts, recursively."""
    if isinstance(schema, list):
        return [_supported(s) for s in schema]
    if not isinstance(schema, dict):
        return schema
    out: dict[str, Any] = {}
    for key, value in schema.items():
        if key not in STRICT_KEYWORDS:
            continue
        if key == "properties":
            out[key] = {name: _supported(sub) for name, sub in value.items()}
        elif key in ("items", "anyOf"):
            out[key] = _supported(value)
        else:
            out[key] = value
    return out


def strict_schema(spec: ToolSpec, sandbox: AsyncSandbox) -> dict[str, Any]:
    """The tool's input schema in the form strict mode accepts: closed objects, all properties
    required, optional ones nullable, no free-form maps, no defaults."""
    schema = copy.deepcopy(spec.input_schema(sandbox))
    properties: dict[str, Any] = {}
    required = set(schema.get("required", []))
    for name, prop in schema.get("properties", {}).items():
        description = prop.get("description", "")
        values = _map_values(prop)
        if values is not None:
            body = _pairs(values)
            description += (
                ' Given here as a list of {"name": ..., "value": ...} pairs instead of an object, '
                'e.g. [{"name": "A", "value": "1"}].'
            )
        else:
            body = {k: v for k, v in prop.items() if k not in ("default", "description", "title")}
            if "anyOf" in body:  # Optional[X] in the core: keep the non-null branches
                branches = [b for b in body.pop("anyOf") if b.get("type") != "null"]
                body = branches[0] if len(branches) == 1 else {"anyOf": branches}
        if name not in required:
            default = prop.get("default")
            description += (
                f" Pass null for the default ({json.dumps(default)})."
                if default is not None
                else " Pass null to leave it unset."
            )
            body = {"anyOf": [body, {"type": "null"}]}
        properties[name] = {**body, "description": description.strip()}
    return _supported(
        {
            "type": "object",
            "properties": properties,
            "required": list(properties),
            "additionalProperties": False,
        }
    )


def from_strict_arguments(arguments: dict[str, Any], maps: Collection[str]) -> dict[str, Any]:
    """The model's strict-mode arguments as the core expects them: nulls dropped, the pairs of the map
    fields ``maps`` (:func:`map_fields`) made dicts."""
    out: dict[str, Any] = {}
    for name, value in arguments.items():
        if value is None:
            continue
        if name in maps and isinstance(value, list):
            mapping: dict[str, Any] = {}
            for item in value:
                if not isinstance(item, dict) or set(item) != {"name", "value"}:
                    raise InvalidInputError(f"{name}: each item must be an object {{name, value}}")
                if item["name"] in mapping:
                    raise InvalidInputError(f"{name}: {item['name']!r} is given twice")
                mapping[item["name"]] = item["value"]
            value = mapping
        out[name] = value
    return out


def to_tool_output(rendered: Rendered) -> Any:
    """Text, or text followed by images (data URLs) when the result carries images."""
    if not rendered.images:
        return rendered.text
    items: list[Any] = [ToolOutputText(text=rendered.text)]
    for image in rendered.images:
        items.append(ToolOutputImage(image_url=f"data:{image.mime_type};base64,{image.b64}"))
    return items


def _tool(spec: ToolSpec, sandbox: AsyncSandbox) -> FunctionTool:
    maps = map_fields(spec.input_schema(sandbox))

    async def on_invoke_tool(ctx: RunContextWrapper[Any], raw: str) -> Any:
        try:
            try:
                parsed = json.loads(raw or "{}")
            except ValueError as exc:
                raise InvalidInputError(f"the arguments are not valid JSON ({exc})") from None
            if not isinstance(parsed, dict):
                raise InvalidInputError("the arguments must be a JSON object")
            rendered = await call_tool(sandbox, spec, from_strict_arguments(parsed, maps))
        except Exception as exc:  # never fail the run: the model reads the error and retries
            rendered = render_error(exc, spec)
        return to_tool_output(rendered)

    return FunctionTool(
        name=spec.name,
        description=spec.description,
        params_json_schema=strict_schema(spec, sandbox),
        on_invoke_tool=on_invoke_tool,
        strict_json_schema=True,
    )


def create_openai_tools(
    config: SandboxConfig | AsyncSandbox | Sandbox | str | None = None,
) -> list[FunctionTool]:
    """The four tools as strict-mode ``FunctionTool``s, sharing one sandbox.

    ``config``: a :class:`SandboxConfig`, an environment name from the configuration file, an existing
    ``AsyncSandbox``/``Sandbox``, or None for the local default.
    """
    sandbox = sandbox_for(config)
    return [_tool(spec, sandbox) for spec in TOOLS]
