"""What a model of the OpenAI Agents SDK was given for each tool call, read from the items of its input: for
the Agents SDK adapter's tests and the MCP tests that drive the SDK's MCP client."""

from __future__ import annotations

import base64
from typing import Any

from support.scenario import Received


def _item(entry: Any) -> dict[str, Any]:
    return entry if isinstance(entry, dict) else entry.model_dump()


def received_from(items: Any) -> dict[str, Received]:
    out: dict[str, Received] = {}
    for raw in items if isinstance(items, list) else []:
        item = _item(raw)
        if item.get("type") != "function_call_output":
            continue
        output = item["output"]
        if isinstance(output, str):
            out[item["call_id"]] = Received(output)
            continue
        texts, images = [], []
        for part in output:
            part = _item(part)
            if part.get("type") == "input_text":
                texts.append(part["text"])
            elif part.get("type") == "input_image":
                header, data = part["image_url"].split(",", 1)
                images.append((header.removeprefix("data:").removesuffix(";base64"), base64.b64decode(data)))
        out[item["call_id"]] = Received("\n".join(texts), images)
    return out
