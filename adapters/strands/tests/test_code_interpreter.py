"""EC2CodeInterpreter: Strands' code_interpreter tool on an ec2-sandbox target.

Actions are called the way a model calls them: through the tool's own ``stream`` (Strands validates the
input there and turns what the platform returns into the tool result), so what is asserted is what the
model would read. The scenario runs a real ``Agent`` loop with a scripted model.
"""

from __future__ import annotations

import asyncio
import base64
import importlib
import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from strands import Agent
from support.scenario import PNG_MAGIC, Call, Received
from support.sshd import Sshd, requires_sshd, running_sshd
from support.strands_model import ScriptedModel

from ec2_sandbox import Sandbox, SandboxConfig
from ec2_sandbox_strands import EC2CodeInterpreter
from ec2_sandbox_strands.code_interpreter import CodeInterpreter, LanguageType, ReadFilesAction

# A 1x1 PNG, shown by a cell through IPython's _repr_png_ protocol.
PIXEL = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNk+M9QDwADhgGAWjR9awAAAABJRU5ErkJggg=="
SHOW_PIXEL = f"""\
import base64
class Pixel:
    def _repr_png_(self):
        return base64.b64decode({PIXEL!r})
Pixel()
"""


def call(interpreter: EC2CodeInterpreter, action: dict[str, Any]) -> dict[str, Any]:
    """The tool result a model gets for ``action``, through Strands' own tool path."""

    async def run() -> dict[str, Any]:
        tool = interpreter.code_interpreter
        use = {
            "toolUseId": "t1",
            "name": "code_interpreter",
            "input": {"code_interpreter_input": {"action": action}},
        }
        last: Any = None
        async for event in tool.stream(use, {}):
            last = event
        return last["tool_result"]

    return asyncio.run(run())


def text(result: dict[str, Any]) -> str:
    return "\n".join(block["text"] for block in result["content"] if "text" in block)


def data(result: dict[str, Any]) -> dict[str, Any]:
    return next(block["json"] for block in result["content"] if "json" in block)


def images(result: dict[str, Any]) -> list[bytes]:
    return [block["image"]["source"]["bytes"] for block in result["content"] if "image" in block]


@pytest.fixture
def interpreter(config: SandboxConfig) -> Iterator[EC2CodeInterpreter]:
    platform = EC2CodeInterpreter(config, session_name="ci-main")
    yield platform
    platform.cleanup_platform()


# ------------------------------------------------------------------------------------------ the platform
def test_is_a_code_interpreter_platform_with_the_environments_languages(config: SandboxConfig) -> None:
    platform = EC2CodeInterpreter(config)
    assert isinstance(platform, CodeInterpreter)
    assert platform.code_interpreter.tool_name == "code_interpreter"
    assert platform.get_supported_languages() == [LanguageType.PYTHON, LanguageType.JAVASCRIPT]
    assert platform.default_session.startswith("session-")
    narrow = EC2CodeInterpreter(config.model_copy(update={"allowed_runtimes": ["python3", "bash"]}))
    assert narrow.get_supported_languages() == [LanguageType.PYTHON]
    with pytest.raises(ValueError, match="session"):
        EC2CodeInterpreter(config, session_name="../up")


def test_without_the_extra_the_import_names_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delitem(sys.modules, "ec2_sandbox_strands.code_interpreter")
    for name in [m for m in sys.modules if m.startswith("strands_tools")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "strands_tools", None)  # what an environment without it looks like
    package = importlib.import_module("ec2_sandbox_strands")
    with pytest.raises(ImportError, match=r"pip install 'ec2-sandbox-strands\[code-interpreter\]'"):
        package.EC2CodeInterpreter  # noqa: B018
    assert package.create_strands_tools  # the four tools do not need it


# ---------------------------------------------------------------------------------------------- sessions
def test_init_list_and_reattach_from_another_instance(config: SandboxConfig) -> None:
    first = EC2CodeInterpreter(config)
    made = call(first, {"type": "initSession", "description": "analysis", "session_name": "shared"})
    assert made["status"] == "success"
    assert data(made)["sessionName"] == "shared" and data(made)["reattached"] is False
    again = call(first, {"type": "initSession", "description": "again", "session_name": "shared"})
    assert again["status"] == "error" and "already exists" in text(again)
    call(first, {"type": "executeCode", "session_name": "shared", "code": "secret = 6 * 7"})
    listing = data(call(first, {"type": "listLocalSessions"}))
    assert listing["totalSessions"] == 1 and listing["sessions"][0]["description"] == "analysis"

    # A new instance (another process, or the agent after a crash) reaches the same interpreter.
    second = EC2CodeInterpreter(config, auto_create=False)
    result = call(second, {"type": "executeCode", "session_name": "shared", "code": "secret"})
    assert result["status"] == "success", text(result)
    assert "42" in text(result) and data(result)["state"] == "kept"
    assert data(call(second, {"type": "listLocalSessions"}))["sessions"][0]["reattached"] is True
    # Strict mode refuses a session the target does not hold, as an error result.
    missing = call(second, {"type": "executeCode", "session_name": "nowhere", "code": "1"})
    assert missing["status"] == "error" and "Create it first using initSession" in text(missing)
    bad = call(second, {"type": "initSession", "description": "x", "session_name": "../../etc"})
    assert bad["status"] == "error" and "session_name" in text(bad)
    for platform in (first, second):
        platform.persist_sessions = False
        platform.cleanup_platform()
    assert not Sandbox(config).session("shared").status()["live"]  # cleanup stopped the interpreter


# --------------------------------------------------------------------------------------------- execution
def test_execute_code_keeps_state_and_clear_context_restarts(interpreter: EC2CodeInterpreter) -> None:
    first = call(interpreter, {"type": "executeCode", "code": "import math\nr = 4\nprint('radius', r)"})
    assert first["status"] == "success", text(first)
    assert "radius 4" in text(first) and data(first)["state"] == "new"
    second = call(interpreter, {"type": "executeCode", "code": "round(math.pi * r ** 2, 3)"})
    assert "50.265" in text(second) and data(second)["executionCount"] == 2
    assert data(second)["state"] == "kept"
    cleared = call(interpreter, {"type": "executeCode", "code": "r", "clear_context": True})
    assert cleared["status"] == "error"
    assert data(cleared)["error"]["name"] == "NameError" and "NameError" in text(cleared)
    assert data(cleared)["executionCount"] == 1


def test_a_raising_cell_is_an_error_result_with_its_traceback_and_the_state_lives(
    interpreter: EC2CodeInterpreter,
) -> None:
    call(interpreter, {"type": "executeCode", "code": "kept = 'yes'"})
    failed = call(interpreter, {"type": "executeCode", "code": "def f(a):\n    return 1 / a\nf(0)"})
    assert failed["status"] == "error"
    assert "ZeroDivisionError: division by zero" in text(failed) and "in f" in text(failed)
    assert "yes" in text(call(interpreter, {"type": "executeCode", "code": "kept"}))


def test_rich_png_results_reach_the_model_as_image_content(interpreter: EC2CodeInterpreter) -> None:
    result = call(interpreter, {"type": "executeCode", "code": SHOW_PIXEL})
    assert result["status"] == "success", text(result)
    assert images(result) == [base64.b64decode(PIXEL)]
    assert "Out[0]: png image attached" in text(result)
    html = call(
        interpreter,
        {"type": "executeCode", "code": "class T:\n    def _repr_html_(self): return '<b>x</b>'\nT()"},
    )
    assert "<b>x</b>" in text(html) and not images(html)


def test_other_languages_run_statelessly_or_are_refused(
    config: SandboxConfig, interpreter: EC2CodeInterpreter
) -> None:
    node = call(
        interpreter,
        {
            "type": "executeCode",
            "language": "javascript",
            "code": "require('fs').writeFileSync('js.txt', 'hi'); console.log(6 * 7)",
        },
    )
    assert node["status"] == "success", text(node)
    assert "42" in text(node) and "statelessly" in text(node)
    # It ran in the session's work dir: Python there sees its file.
    assert "'hi'" in text(call(interpreter, {"type": "executeCode", "code": "open('js.txt').read()"}))
    ts = call(interpreter, {"type": "executeCode", "language": "typescript", "code": "let x: number = 1"})
    assert ts["status"] == "error" and "'typescript' is not available" in text(ts)
    assert "supported: python, javascript" in text(ts)
    narrow = EC2CodeInterpreter(config.model_copy(update={"allowed_runtimes": ["python3"]}))
    refused = call(narrow, {"type": "executeCode", "language": "javascript", "code": "1"})
    assert refused["status"] == "error" and "supported: python" in text(refused)
    # The environment's runtime list binds commands too: no bash, no executeCommand.
    denied = call(narrow, {"type": "executeCommand", "command": "echo hi"})
    assert denied["status"] == "error" and "'bash' is not allowed" in text(denied)


def test_execute_command_runs_bash_in_the_session_dir(interpreter: EC2CodeInterpreter) -> None:
    call(interpreter, {"type": "executeCode", "code": "open('from_python.txt', 'w').write('py')"})
    result = call(
        interpreter, {"type": "executeCommand", "command": "cat from_python.txt; echo; echo err >&2; pwd"}
    )
    assert result["status"] == "success", text(result)
    assert "py" in text(result) and "--- stderr ---\nerr" in text(result)
    assert data(result)["exitCode"] == 0
    failed = call(interpreter, {"type": "executeCommand", "command": "echo about to fail; exit 3"})
    assert failed["status"] == "error" and data(failed)["exitCode"] == 3
    assert "about to fail" in text(failed)


def test_the_environments_limits_hold(config: SandboxConfig) -> None:
    platform = EC2CodeInterpreter(config, timeout=2)
    slow = call(platform, {"type": "executeCode", "code": "import time\nbefore = 1\ntime.sleep(30)"})
    assert slow["status"] == "error"
    assert "KeyboardInterrupt" in text(slow) or "timeout" in text(slow).lower()
    assert "1" in text(call(platform, {"type": "executeCode", "code": "before"}))  # interrupted, state kept
    too_long = EC2CodeInterpreter(config, timeout=config.max_execution_time + 1)
    refused = call(too_long, {"type": "executeCommand", "command": "true"})
    assert refused["status"] == "error" and "max_execution_time" in text(refused)
    platform.persist_sessions = False
    platform.cleanup_platform()


# ------------------------------------------------------------------------------------------------- files
def test_write_read_list_remove(interpreter: EC2CodeInterpreter) -> None:
    blob = bytes(range(256))
    written = call(
        interpreter,
        {
            "type": "writeFiles",
            "content": [
                {"path": "data/in.csv", "text": "a,b\n1,2\n"},
                {"path": "./data/raw.bin", "blob": base64.b64encode(blob).decode()},
                {"path": "pixel.png", "blob": PIXEL},
            ],
        },
    )
    assert written["status"] == "success", text(written)
    assert {e["path"] for e in data(written)["written"]} == {"data/in.csv", "data/raw.bin", "pixel.png"}
    # Python sees them where the model put them.
    seen = call(interpreter, {"type": "executeCode", "code": "len(open('data/raw.bin', 'rb').read())"})
    assert "256" in text(seen)

    read = call(interpreter, {"type": "readFiles", "paths": ["data/in.csv", "pixel.png", "data/raw.bin"]})
    assert read["status"] == "success", text(read)
    assert "a,b\n1,2" in text(read)
    assert images(read) == [base64.b64decode(PIXEL)]
    assert base64.b64encode(blob).decode() in text(read) and "binary" in text(read)

    root = call(interpreter, {"type": "listFiles"})
    assert root["status"] == "success"
    entries = {e["name"]: e for e in data(root)["entries"]}
    assert entries["data"] == {"name": "data", "type": "directory", "size": 8 + 256}
    assert entries["pixel.png"]["type"] == "file"
    sub = data(call(interpreter, {"type": "listFiles", "path": "data/"}))["entries"]
    assert [(e["name"], e["size"]) for e in sub] == [("in.csv", 8), ("raw.bin", 256)]
    # The absolute path the model sees in pwd works as well.
    cwd = data(call(interpreter, {"type": "initSession", "description": "x", "session_name": "abs"}))
    workdir = cwd["workingDirectory"]
    call(
        interpreter,
        {"type": "writeFiles", "session_name": "abs", "content": [{"path": "f.txt", "text": "z"}]},
    )
    assert "z" in text(
        call(interpreter, {"type": "readFiles", "session_name": "abs", "paths": [f"{workdir}/f.txt"]})
    )

    removed = call(interpreter, {"type": "removeFiles", "paths": ["data", "pixel.png"]})
    assert removed["status"] == "success" and data(removed)["removed"] == ["data", "pixel.png"]
    left = data(call(interpreter, {"type": "listFiles"}))["entries"]
    assert [e["name"] for e in left] == []
    gone = call(interpreter, {"type": "removeFiles", "paths": ["pixel.png"]})
    assert gone["status"] == "error" and data(gone)["notFound"] == ["pixel.png"]
    missing = call(interpreter, {"type": "readFiles", "paths": ["nope.txt"]})
    assert missing["status"] == "error" and "no such file" in text(missing)
    empty = call(interpreter, {"type": "listFiles", "path": "nothing/here"})
    assert empty["status"] == "error"


def test_read_attaches_at_most_four_images(interpreter: EC2CodeInterpreter) -> None:
    names = [f"p{i}.png" for i in range(6)]
    interpreter.session().write_files({name: base64.b64decode(PIXEL) for name in names})
    read = call(interpreter, {"type": "readFiles", "paths": names})
    assert read["status"] == "success"
    assert len(images(read)) == 4 and text(read).count("binary") == 2


def test_exit_without_cleanup_does_not_hang(config: SandboxConfig) -> None:
    # Strands' base class cleans up in __del__, which may run while the interpreter shuts down.
    program = f"""
from ec2_sandbox import SandboxConfig
from ec2_sandbox_strands import EC2CodeInterpreter
platform = EC2CodeInterpreter(
    SandboxConfig(base_sandbox_dir={config.base_sandbox_dir!r}), session_name="exit", persist_sessions=False
)
action = {{"type": "executeCode", "code": "x = 1"}}
result = platform.code_interpreter(code_interpreter_input={{"action": action}})
assert result["status"] == "success", result
print("ran")
"""
    done = subprocess.run([sys.executable, "-c", program], timeout=60, capture_output=True, text=True)
    assert done.returncode == 0 and done.stdout == "ran\n", done.stderr


def test_large_files_are_cut_for_the_model_and_whole_for_the_app(interpreter: EC2CodeInterpreter) -> None:
    big = "".join(f"line {i}\n" for i in range(5000))  # ~49 KB, past max_output_chars (4000)
    interpreter.session().write_files({"big.txt": big})
    read = call(interpreter, {"type": "readFiles", "paths": ["big.txt"]})
    assert read["status"] == "success"
    assert len(text(read)) < 4500 and "more bytes; read them with executeCommand" in text(read)
    assert interpreter.session().read_bytes("big.txt") == big.encode()


HOSTILE_PATHS = ["../outside.txt", "/etc/passwd", "a/../../b", "data/../../../etc/shadow", "bad\x00name"]


@pytest.mark.parametrize("path", HOSTILE_PATHS)
def test_hostile_paths_are_error_results(interpreter: EC2CodeInterpreter, path: str) -> None:
    for action in (
        {"type": "readFiles", "paths": [path]},
        {"type": "writeFiles", "content": [{"path": path, "text": "x"}]},
        {"type": "removeFiles", "paths": [path]},
        {"type": "listFiles", "path": path},
    ):
        result = call(interpreter, action)
        assert result["status"] == "error", (action, text(result))
        assert "path" in text(result).lower()
    assert not Path("/tmp/outside.txt").exists()


def test_planted_links_are_never_followed(interpreter: EC2CodeInterpreter) -> None:
    planted = call(
        interpreter,
        {
            "type": "executeCommand",
            "command": "mkdir -p d && echo inside > d/f && ln -s /etc/passwd leak && ln -s / rootlink "
            "&& ln -s d dlink",
        },
    )
    assert planted["status"] == "success", text(planted)
    leak = call(interpreter, {"type": "readFiles", "paths": ["leak"]})
    assert leak["status"] == "error" and "symlink" in text(leak) and "root:" not in text(leak)
    through = call(interpreter, {"type": "readFiles", "paths": ["rootlink/etc/passwd"]})
    assert through["status"] == "error" and "root:" not in text(through)
    write = call(interpreter, {"type": "writeFiles", "content": [{"path": "dlink/evil", "text": "x"}]})
    assert write["status"] == "error"
    listing = {e["name"]: e for e in data(call(interpreter, {"type": "listFiles"}))["entries"]}
    assert listing["leak"]["type"] == "skipped" and "symlink" in listing["leak"]["reason"]
    assert listing["d"] == {"name": "d", "type": "directory", "size": 7}
    assert call(interpreter, {"type": "listFiles", "path": "rootlink"})["status"] == "error"
    # Removing a link removes the link, never what it points to.
    removed = call(interpreter, {"type": "removeFiles", "paths": ["rootlink", "leak"]})
    assert removed["status"] == "success", text(removed)
    assert Path("/etc/passwd").exists()
    assert "inside" in text(call(interpreter, {"type": "readFiles", "paths": ["d/f"]}))


def test_malformed_calls_are_error_results(interpreter: EC2CodeInterpreter) -> None:
    for action in (
        {"type": "executeCode"},  # no code
        {"type": "unknownAction"},
        {"type": "writeFiles", "content": [{"path": "x.txt"}]},  # neither text nor blob
        {"type": "executeCode", "code": "1", "language": "cobol"},
        {"type": "executeCode", "code": "1", "session_name": "../../x"},
        {"type": "readFiles", "paths": []},
    ):
        result = call(interpreter, action)
        assert result["status"] == "error", action
    not_b64 = call(interpreter, {"type": "writeFiles", "content": [{"path": "x.bin", "blob": "not base64!"}]})
    assert not_b64["status"] == "error" and "base64" in text(not_b64)
    # Called directly (not through the tool), a failing action still returns, never raises.
    direct = interpreter.read_files(ReadFilesAction(type="readFiles", paths=["../x"]))
    assert direct["status"] == "error"


# --------------------------------------------------------------------------------------- the agent loop
CSV = "region,amount\n" + "".join(f"zone-{i:03d}-q7x,{i}\n" for i in range(300))


class InterpreterScript:
    """The conversation the scripted model plays: load data once, answer from the variables, leave a file
    for the application; and one hostile path on the way, which must come back as an error it can read."""

    def __init__(self) -> None:
        self.tool_names_seen: list[list[str]] = []
        self.schemas_seen: dict[str, Any] = {}
        self.received: dict[str, Received] = {}
        self.turn = 0

    def _call(self, action: dict[str, Any]) -> Call:
        self.turn += 1
        action = {"session_name": "analysis", **action}
        return Call(f"call-{self.turn}", "code_interpreter", {"code_interpreter_input": {"action": action}})

    def next_turn(self, received: dict[str, Received]) -> list[Call] | None:
        self.received.update(received)
        steps = [
            {
                "type": "executeCode",
                "code": "import csv\nrows = list(csv.DictReader(open('in/sales.csv')))\nlen(rows)",
            },
            {
                "type": "executeCode",
                "code": "total = sum(int(r['amount']) for r in rows)\n"
                "open('out/report.txt', 'w').write(f'rows={len(rows)} total={total}')\n" + SHOW_PIXEL,
            },
            {"type": "executeCommand", "command": "ls out && wc -c < out/report.txt"},
            {"type": "readFiles", "paths": ["../../../etc/passwd"]},
        ]
        if self.turn >= len(steps):
            return None
        return [self._call(steps[self.turn])]


def test_agent_keeps_state_and_files_move_without_the_model(interpreter: EC2CodeInterpreter) -> None:
    app = interpreter.session("analysis")
    app.write_files({"in/sales.csv": CSV, "out/.keep": ""})  # in, by the application: no model involved
    script = InterpreterScript()
    agent = Agent(model=ScriptedModel(script), tools=[interpreter.code_interpreter], callback_handler=None)
    result = agent("Analyse in/sales.csv and leave a report in out/report.txt.")
    assert "All done." in str(result)
    assert script.tool_names_seen[0] == ["code_interpreter"]
    assert "code_interpreter_input" in json.dumps(script.schemas_seen["code_interpreter"])

    loaded, answered, listed, hostile = (script.received[f"call-{i}"] for i in range(1, 5))
    assert not loaded.is_error and "Out[0]:\n300" in loaded.text
    # The second cell used the first cell's variables: state kept across calls.
    assert not answered.is_error, answered.text
    assert "variables kept" in answered.text
    assert answered.images == [("image/png", base64.b64decode(PIXEL))]
    assert not listed.is_error and "report.txt" in listed.text
    assert hostile.is_error and "'..' component" in hostile.text

    # Out, by the application: byte-exact, never seen by the model.
    report = app.read_bytes("out/report.txt")
    assert report == f"rows=300 total={sum(range(300))}".encode()
    transcript = json.dumps(agent.messages, default=repr)
    assert "zone-150-q7x" not in transcript and report.decode() not in transcript
    assert PNG_MAGIC not in CSV.encode()


# ------------------------------------------------------------------------------------------------- SSH
@pytest.fixture(scope="module")
def sshd() -> Iterator[Sshd]:
    with running_sshd() as server:
        yield server


@requires_sshd
@pytest.mark.integration
def test_over_ssh(sshd: Sshd, tmp_base_dir: str, tmp_path: Path) -> None:
    config = SandboxConfig(
        transport="ssh",
        ssh_host="127.0.0.1",
        ssh_port=sshd.port,
        ssh_user="root",
        ssh_key_file=str(sshd.client_key_path),
        ssh_known_hosts=str(tmp_path / "known_hosts"),
        base_sandbox_dir=tmp_base_dir,
        max_output_chars=4000,
    )
    platform = EC2CodeInterpreter(config, session_name="over-ssh", persist_sessions=False)
    written = call(platform, {"type": "writeFiles", "content": [{"path": "n.txt", "text": "20"}]})
    assert written["status"] == "success", text(written)
    first = call(platform, {"type": "executeCode", "code": "n = int(open('n.txt').read())"})
    assert first["status"] == "success", text(first)
    second = call(platform, {"type": "executeCode", "code": "n + 22"})
    assert "42" in text(second) and data(second)["state"] == "kept"
    pixel = call(platform, {"type": "executeCode", "code": SHOW_PIXEL})
    assert images(pixel) == [base64.b64decode(PIXEL)]
    command = call(platform, {"type": "executeCommand", "command": "ln -s /etc/shadow s && cat n.txt"})
    assert "20" in text(command)
    assert call(platform, {"type": "readFiles", "paths": ["s"]})["status"] == "error"
    assert call(platform, {"type": "readFiles", "paths": ["/etc/shadow"]})["status"] == "error"
    assert [e["name"] for e in data(call(platform, {"type": "listFiles"}))["entries"]] == ["n.txt", "s"]
    platform.cleanup_platform()  # stops the interpreter and closes the SSH connection
    # The platform serves again after a cleanup: a fresh interpreter, the files still there.
    again = call(platform, {"type": "executeCode", "code": "open('n.txt').read()"})
    assert again["status"] == "success" and "'20'" in text(again) and data(again)["state"] == "new"
    platform.persist_sessions = False
    platform.cleanup_platform()
