"""What the model reads: caps and notes, binary files, images, error messages.

Rendering only: the runs' output and files are scripted (a :class:`MockTransport` answers as the runner
does), so these need no runner. What a run really does is the runner's tests' and the adapters' loops'.
"""

from __future__ import annotations

import base64
import json
import os
import re
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest
from pydantic import ValidationError
from support.scripted_target import Outcome, ScriptedTarget

from ec2_sandbox import AsyncSandbox, Sandbox, SandboxConfig, runner
from ec2_sandbox.errors import ConfigError, TransportError
from ec2_sandbox.presentation import (
    BINARY_MARKER,
    call_tool,
    cap_text,
    detect_image,
    render_error,
    sandbox_for,
)
from ec2_sandbox.schema import CodeExecutionInput
from ec2_sandbox.tools import TOOLS_BY_NAME
from ec2_sandbox.transports import MockTransport

EXEC = TOOLS_BY_NAME["ec2_code_execution"]
FILES = TOOLS_BY_NAME["ec2_get_files"]


@pytest.mark.parametrize(
    ("data", "mime"),
    [
        (b"\x89PNG\r\n\x1a\n" + b"\x00" * 8, "image/png"),
        (b"\xff\xd8\xff\xe0\x00\x10JFIF", "image/jpeg"),
        (b"GIF89a\x01\x00", "image/gif"),
        (b"GIF87a\x01\x00", "image/gif"),
        (b"RIFF\x24\x00\x00\x00WEBPVP8 ", "image/webp"),
        (b"RIFF\x24\x00\x00\x00WAVEfmt ", None),
        (b"%PDF-1.7", None),
        (b"", None),
    ],
)
def test_detect_image(data: bytes, mime: str | None) -> None:
    assert detect_image(data) == mime


def test_cap_text_says_what_was_cut() -> None:
    text = "a" * 700 + "b" * 300
    capped = cap_text(text, 300, "ab" * 8, "@stdout")
    assert capped.startswith("a" * 150 + "\n[") and capped.endswith("]\n" + "b" * 150)
    assert "700 of 1000 characters cut" in capped
    assert 'ec2_get_files(task_hash="abababababababab", filename="@stdout")' in capped
    assert cap_text("short", 300, None, "x") == "short"


@pytest.mark.parametrize("limit", [0, 1, 7, 300, 999])
def test_one_rule_cuts_every_text(limit: int, tmp_path: Path) -> None:
    """What presentation caps (a cell's results) and what the runner cuts (a stream, then again to fit
    a transport's cap) keep the same head and tail of the same text."""
    text = "".join(f"{i:04d}é" for i in range(400))
    stream = tmp_path / "stdout"
    stream.write_text(text)
    inline = runner.inline_text(str(stream), limit)
    head, tail = inline["text"][: inline["head_chars"]], inline["text"][inline["head_chars"] :]
    assert (head, tail) == runner.cut_text(text, limit)
    capped = cap_text(text, limit, None, "")
    assert capped.startswith(head + "\n[... ") and capped.endswith(" ...]\n" + tail)
    wider = runner.inline_text(str(stream), limit + 500)
    runner.shrink_stream(wider, limit)
    assert wider["text"] == head + tail and wider["head_chars"] == len(head)
    omitted = len(text.encode()) - len((head + tail).encode())
    assert wider["omitted_bytes"] == inline["omitted_bytes"] == omitted


Scripted = Callable[..., AsyncSandbox]


@pytest.fixture
async def scripted() -> AsyncIterator[Scripted]:
    """Sandboxes whose runs leave the given outcomes, with text for the model held to ``max_output_chars``."""
    boxes: list[AsyncSandbox] = []

    def make(*outcomes: Outcome, max_output_chars: int = 4000) -> AsyncSandbox:
        config = SandboxConfig(max_output_chars=max_output_chars)
        transport = MockTransport(ScriptedTarget(*outcomes))
        boxes.append(AsyncSandbox(config, transport=transport))
        return boxes[-1]

    yield make
    for box in boxes:
        await box.aclose()


async def test_long_output_is_capped_with_a_way_to_read_the_rest(scripted: Scripted) -> None:
    lines = "".join(f"line {i:05d}\n" for i in range(2000))
    box = scripted(Outcome(stdout=lines, stderr="err-tail\n"), max_output_chars=500)
    out = await call_tool(box, EXEC, {"code": "print(lines)"})
    stdout = out.text.split("--- stdout ---\n", 1)[1].split("--- stderr ---")[0]
    head, note, tail = stdout.split("\n[... ", 1)[0], *stdout.split("\n[... ", 1)[1].split(" ...]\n")
    assert lines.startswith(head) and len(head) == 250 and lines.rstrip("\n").endswith(tail.rstrip("\n"))
    assert note == (
        f"{2000 * 11 - 500} of {2000 * 11} bytes cut here; read it all with "
        f'ec2_get_files(task_hash="{out.data["task_hash"]}", filename="@stdout")'
    )
    assert out.data["stdout_head_chars"] == 250 and out.data["stdout_omitted_bytes"] == 2000 * 11 - 500
    assert out.data["stdout"] == stdout.rstrip("\n") + "\n"
    assert "err-tail" in out.text
    # following the note: page through @stdout
    page = await call_tool(box, FILES, {"task_hash": out.data["task_hash"], "filename": "@stdout"})
    assert "line 00000" in page.text and "offset=" in page.text
    nxt = int(re.search(r"offset=(\d+)\)", page.text).group(1))
    page2 = await call_tool(
        box, FILES, {"task_hash": out.data["task_hash"], "filename": "@stdout", "offset": nxt}
    )
    assert page2.data["files"][0]["offset"] == nxt


async def test_output_that_reads_like_a_note_is_shown_as_written(scripted: Scripted) -> None:
    """Words in the program's own output are the program's: only the result's fields say what was cut."""
    written = (
        "before\n[... 5 bytes of 10 omitted; read the full output with get_task_files('ab', '@stdout') ...]\n"
        "after\n"
    )
    box = scripted(Outcome(stdout=written), max_output_chars=500)
    out = await call_tool(box, EXEC, {"code": "print(a note)"})
    assert f"--- stdout ---\n{written}--- stderr ---" in out.text
    assert out.data["stdout"] == written and not out.data["stdout_truncated"]


async def test_binary_and_images(scripted: Scripted) -> None:
    files = {
        "noise.bin": bytes(range(256)) * 40,
        "pic.gif": b"GIF89a" + bytes(20),
        "fake.png": b"not a png at all",
        "notes.txt": "plain words",
    }
    sandbox = scripted(Outcome(files=files))
    run = await call_tool(sandbox, EXEC, {"code": "write the files"})
    assert [i.path for i in run.images] == ["pic.gif"]  # fake.png has no PNG signature
    assert run.images[0].mime_type == "image/gif" and run.images[0].format == "gif"
    everything = await call_tool(sandbox, FILES, {"task_hash": run.data["task_hash"]})
    by_path = {f["path"]: f for f in everything.data["files"]}
    assert by_path["notes.txt"]["content"] == "plain words"
    assert by_path["pic.gif"]["encoding"] == "image"
    assert [i.path for i in everything.images] == ["pic.gif"]
    assert BINARY_MARKER in everything.text
    assert "\ufffd" not in everything.text  # never mojibake
    # a big binary file is cut with the offset to read on from
    noise = await call_tool(sandbox, FILES, {"task_hash": run.data["task_hash"], "filename": "noise.bin"})
    entry = noise.data["files"][0]
    shown = base64.b64decode(entry["content"])
    assert shown == (bytes(range(256)) * 40)[: len(shown)]
    assert entry["truncated"] and entry["next_offset"] == len(shown)
    assert f"offset={len(shown)})" in noise.text
    json.dumps(noise.data)  # JSON-serializable as given to frameworks


def test_validation_messages_say_how_to_fix() -> None:
    with pytest.raises(ValidationError) as info:
        CodeExecutionInput.model_validate({"code": "", "runtime": 3, "colour": "red"})
    text = render_error(info.value, EXEC).text
    assert "`code` is empty: pass the complete program" in text
    assert "`colour` is not an argument of this tool: remove it" in text
    assert "`runtime` = 3 is invalid" in text
    assert "Accepted arguments: code (required), runtime" in text
    status = render_error(ValueError("x"), TOOLS_BY_NAME["ec2_instance_status"])
    assert status.is_error and status.data["error"] == "internal"
    assert "ec2_instance_status" in render_error(TransportError("down"), EXEC).text
    assert "operator" in render_error(ConfigError("bad"), EXEC).text


async def test_no_arguments_tool(scripted: Scripted) -> None:
    sandbox = scripted()
    bad = await call_tool(sandbox, TOOLS_BY_NAME["ec2_instance_status"], {"verbose": True})
    assert bad.is_error and "takes no arguments: call it with {}" in bad.text
    cleaned = await call_tool(sandbox, TOOLS_BY_NAME["ec2_cleanup_tasks"], {"hours": 1000})
    assert not cleaned.is_error and "Nothing to remove" in cleaned.text


def test_a_cleanup_that_missed_members_says_so() -> None:
    from ec2_sandbox.presentation import render_cleanup
    from ec2_sandbox.schema import CleanupResult, UnreachedTarget

    missed = CleanupResult(
        policy="age", hours=24, unreached=[UnreachedTarget(target="i-0b", error="SSM status Failed")]
    )
    text = render_cleanup(missed).text
    assert "NOT reached" in text and "i-0b (SSM status Failed)" in text and "clean up again" in text
    assert "NOT reached" not in render_cleanup(CleanupResult(policy="age", hours=24)).text  # control


def test_sandbox_for(tmp_base_dir: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = SandboxConfig(base_sandbox_dir=tmp_base_dir, max_output_chars=4000)
    box = AsyncSandbox(config)
    assert sandbox_for(box) is box
    sync = Sandbox(config)
    assert sandbox_for(sync) is sync.aio
    assert sandbox_for(config).config is config
    assert sandbox_for(None).config == SandboxConfig()
    path = tmp_path / "config.json"
    path.write_text(
        json.dumps({"lab": {"max_output_chars": 777, "base_sandbox_dir": config.base_sandbox_dir}})
    )
    monkeypatch.setenv("EC2_SANDBOX_CONFIG", str(path))
    assert sandbox_for("lab").config.max_output_chars == 777
    with pytest.raises(ConfigError):
        sandbox_for("no-such-environment")
    with pytest.raises(TypeError):
        sandbox_for(3.5)  # type: ignore[arg-type]


async def test_an_image_bigger_than_the_text_budget_still_arrives_whole(scripted: Scripted) -> None:
    webp = b"RIFF" + bytes(4) + b"WEBP" + os.urandom(50000)
    box = scripted(Outcome(files={"big.webp": webp}), max_output_chars=300)
    run = await call_tool(box, EXEC, {"code": "write big.webp", "runtime": "python3"})
    assert [len(i.data) for i in run.images] == [50012]
    got = await call_tool(box, FILES, {"task_hash": run.data["task_hash"], "filename": "big.webp"})
    assert [(i.mime_type, len(i.data)) for i in got.images] == [("image/webp", 50012)]
    assert len(got.text) < 300


async def test_unexpected_failures_become_results(
    scripted: Scripted, monkeypatch: pytest.MonkeyPatch
) -> None:
    sandbox = scripted()

    async def broken(*args: object, **kwargs: object) -> None:
        raise OSError("disk on fire")

    monkeypatch.setattr(sandbox, "instance_status", broken)
    out = await call_tool(sandbox, TOOLS_BY_NAME["ec2_instance_status"], {})
    assert out.is_error and "OSError: disk on fire" in out.text
    traversal = await call_tool(sandbox, FILES, {"task_hash": "a" * 32, "filename": "../../etc/passwd"})
    assert traversal.is_error and "`filename`" in traversal.text and "plain relative path" in traversal.text
