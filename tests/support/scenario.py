"""One scripted conversation, played by a fake model in each framework's own agent loop.

The script decides its next tool calls from the tool results the framework handed back to the model (so a
later call uses the task hash the model really saw), and records everything the model received, so the
assertions are on the model's side of the loop, not on what the tool function returned.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

PLUGIN_RUNTIME = "pyplug"
#: The tools every adapter offers the model, in this order.
TOOL_NAMES = ["ec2_code_execution", "ec2_get_files", "ec2_cleanup_tasks", "ec2_instance_status"]

PYTHON_MAIN = """\
import os, time
start = time.time()
with open("data/in.txt") as f:
    text = f.read()
os.makedirs("out", exist_ok=True)
with open("out/result.txt", "w") as f:
    f.write(text.upper() + " / " + os.environ["GREETING"])
time.sleep(1.5)
print("py read:", text, "greeting:", os.environ["GREETING"])
print("py window", start, time.time())
"""

NODE_MAIN = """\
const start = Date.now() / 1000;
setTimeout(() => {
  console.log("node says", process.env.NODE_GREETING, 6 * 7);
  console.log("node window", start, Date.now() / 1000);
}, 1500);
"""

FAILING = """\
def divide(a, b):
    return a / b

divide(1, 0)
"""

PNG_MAKER = """\
import struct, zlib
def chunk(kind, data):
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
rows = b"".join(b"\\x00" + b"\\xff\\x80\\x00" * 8 for _ in range(8))
png = (b"\\x89PNG\\r\\n\\x1a\\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", 8, 8, 8, 2, 0, 0, 0))
       + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b""))
with open("chart.png", "wb") as f:
    f.write(png)
with open("blob.bin", "wb") as f:
    f.write(bytes(range(256)))
print("wrote chart.png")
"""

PLUGIN_CODE = 'import sys; print("plugin runtime ok", sys.flags.utf8_mode)'

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@dataclass
class Call:
    id: str
    name: str
    args: dict[str, Any]


@dataclass
class Received:
    """What the model was given for one tool call."""

    text: str
    images: list[tuple[str, bytes]] = field(default_factory=list)  # (mime type, bytes)
    is_error: bool | None = None


def window(text: str, label: str) -> tuple[float, float]:
    match = re.search(rf"{label} window ([0-9.]+) ([0-9.]+)", text)
    assert match, f"no '{label} window' line in what the model received:\n{text}"
    return float(match.group(1)), float(match.group(2))


def task_hash(text: str) -> str:
    match = re.search(r"Task hash: ([0-9a-f]{12,64})", text)
    assert match, f"no task hash in what the model received:\n{text}"
    return match.group(1)


class Script:
    """Five turns of tool calls, then a final answer. ``files_as`` adapts to frameworks needing pairs."""

    def __init__(self, pairs: bool = False) -> None:
        self.pairs = pairs
        self.turn = 0
        self.calls: dict[str, Call] = {}
        self.received: dict[str, Received] = {}
        self.tool_names_seen: list[list[str]] = []
        self.schemas_seen: dict[str, dict[str, Any]] = {}
        self.finished = False

    def _map(self, mapping: dict[str, str]) -> Any:
        if self.pairs:
            return [{"name": k, "value": v} for k, v in mapping.items()]
        return mapping

    def _call(self, name: str, **args: Any) -> Call:
        call = Call(f"call_{len(self.calls) + 1}", name, args)
        self.calls[call.id] = call
        return call

    def by(self, call_id: str) -> Received:
        assert call_id in self.received, f"the model never received a result for {call_id}"
        return self.received[call_id]

    def next_turn(self, received: dict[str, Received]) -> list[Call] | None:
        """Record the results of the last turn; return the next calls, or None to answer in text."""
        for call_id, item in received.items():
            if call_id in self.calls:
                self.received.setdefault(call_id, item)
        self.turn += 1
        c = self._call
        if self.turn == 1:
            return [
                c(
                    "ec2_code_execution",
                    code=PYTHON_MAIN,
                    runtime="python3",
                    files=self._map({"data/in.txt": "hello files"}),
                    env_vars=self._map({"GREETING": "hi env"}),
                ),
                c(
                    "ec2_code_execution",
                    code=NODE_MAIN,
                    runtime="node",
                    env_vars=self._map({"NODE_GREETING": "from node"}),
                ),
            ]
        if self.turn == 2:
            first = task_hash(self.by("call_1").text)
            return [
                c("ec2_get_files", task_hash=first, filename="out/result.txt"),
                c("ec2_code_execution", code=FAILING, runtime="python3"),
                c("ec2_code_execution", code=PNG_MAKER),
            ]
        if self.turn == 3:
            return [
                c("ec2_code_execution", runtime="python3"),  # code missing
                c("ec2_code_execution", code="print(1)", runtime="cobol"),
                c("ec2_code_execution", code="print(1)", files=self._map({"../../etc/passwd": "x"})),
                c("ec2_code_execution", code=PLUGIN_CODE, runtime=PLUGIN_RUNTIME),
            ]
        if self.turn == 4:
            png_task = task_hash(self.by("call_5").text)
            return [
                c("ec2_get_files", task_hash=png_task, filename="chart.png"),
                c("ec2_get_files", task_hash=png_task, filename="blob.bin"),
                c("ec2_instance_status"),
            ]
        self.finished = True
        return None

    # ------------------------------------------------------------------ assertions
    def check_listing(self) -> None:
        """The model was first offered every tool, in order, and the code tool's runtime enum includes the
        plugin's runtime - with no adapter change."""
        assert self.tool_names_seen[0] == TOOL_NAMES
        assert PLUGIN_RUNTIME in self.schemas_seen["ec2_code_execution"]["properties"]["runtime"]["enum"]

    def check(self, *, images: bool) -> None:
        """Everything the model must have seen. ``images``: the framework passes image content."""
        assert self.finished, f"the run stopped after turn {self.turn}"
        py, node = self.by("call_1").text, self.by("call_2").text
        assert "Status: success" in py and "Exit code: 0" in py, py
        assert "py read: hello files greeting: hi env" in py, py
        assert "out/result.txt" in py, py
        assert "node says from node 42" in node, node
        # the two runs of turn 1 overlapped in time: each started before the other ended
        a, b = window(py, "py"), window(node, "node")
        assert a[0] < b[1] and b[0] < a[1], f"runs did not overlap: python {a}, node {b}"

        fetched = self.by("call_3").text
        assert "HELLO FILES / hi env" in fetched, fetched

        failing = self.by("call_4").text
        assert "Exit code: 1" in failing, failing
        assert "Traceback (most recent call last)" in failing and "ZeroDivisionError" in failing, failing

        missing = self.by("call_6")
        assert "`code` is required" in missing.text and "call the tool again" in missing.text, missing.text
        runtime = self.by("call_7").text
        assert "'cobol' is unknown" in runtime and "allowed runtimes:" in runtime, runtime
        assert PLUGIN_RUNTIME in runtime, runtime
        traversal = self.by("call_8").text
        assert "../../etc/passwd" in traversal and "plain relative path" in traversal, traversal
        for bad in ("call_6", "call_7", "call_8"):
            assert self.by(bad).is_error in (True, None), f"{bad} not flagged as an error"
        plugin = self.by("call_9").text
        assert "plugin runtime ok" in plugin, plugin

        png_run = self.by("call_5").text
        assert "chart.png" in png_run and "blob.bin" in png_run, png_run
        chart = self.by("call_10")
        blob = self.by("call_11").text
        assert "[binary file, base64-encoded]" in blob, blob
        assert "AAECAwQFBgc" in blob, blob  # base64 of bytes 0..7
        if images:
            pngs = [data for mime, data in chart.images if mime == "image/png"]
            assert pngs and pngs[0].startswith(PNG_MAGIC), f"no PNG image reached the model: {chart}"
            # the run that made it attached it too
            assert any(d.startswith(PNG_MAGIC) for _, d in self.by("call_5").images), "run image missing"
        else:
            assert "image/png" in chart.text, chart.text
        status = self.by("call_12").text
        assert "healthy" in status and "python3" in status, status
