"""A Strands model that plays a scripted conversation (Strands ships none): for the Strands adapter's tests
and the MCP tests that drive Strands' MCP client."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

from strands.models.model import Model

from support.scenario import Received, Script


class ScriptedModel(Model):
    """A Strands model that plays a :class:`Script`, reading tool results from the messages it is sent."""

    def __init__(self, script: Script) -> None:
        self.script = script
        self.config: dict[str, Any] = {}

    def update_config(self, **model_config: Any) -> None:
        self.config.update(model_config)

    def get_config(self) -> Any:
        return self.config

    async def structured_output(self, output_model, prompt, system_prompt=None, **kwargs):  # type: ignore[no-untyped-def]
        raise NotImplementedError
        yield {}

    async def stream(  # type: ignore[override]
        self, messages, tool_specs=None, system_prompt=None, **kwargs: Any
    ) -> AsyncIterator[dict[str, Any]]:
        self.script.tool_names_seen.append([spec["name"] for spec in tool_specs or []])
        for spec in tool_specs or []:
            self.script.schemas_seen[spec["name"]] = spec["inputSchema"]["json"]
        received: dict[str, Received] = {}
        for message in messages:
            for block in message["content"]:
                result = block.get("toolResult")
                if result is None:
                    continue
                texts = [c["text"] for c in result["content"] if "text" in c]
                images = [
                    (f"image/{c['image']['format']}", c["image"]["source"]["bytes"])
                    for c in result["content"]
                    if "image" in c
                ]
                received[result["toolUseId"]] = Received(
                    "\n".join(texts), images, is_error=result["status"] == "error"
                )
        calls = self.script.next_turn(received)
        yield {"messageStart": {"role": "assistant"}}
        if calls is None:
            yield {"contentBlockStart": {"start": {}}}
            yield {"contentBlockDelta": {"delta": {"text": "All done."}}}
            yield {"contentBlockStop": {}}
            yield {"messageStop": {"stopReason": "end_turn"}}
            return
        for call in calls:
            yield {"contentBlockStart": {"start": {"toolUse": {"toolUseId": call.id, "name": call.name}}}}
            yield {"contentBlockDelta": {"delta": {"toolUse": {"input": json.dumps(call.args)}}}}
            yield {"contentBlockStop": {}}
        yield {"messageStop": {"stopReason": "tool_use"}}
