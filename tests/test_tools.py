"""The tool registry: the one description of the four tools that every adapter renders."""

from __future__ import annotations

import pytest
from pydantic import ValidationError
from support.scripted_target import Outcome, ScriptedTarget

from ec2_sandbox import AsyncSandbox, InvalidInputError, SandboxConfig
from ec2_sandbox.schema import ExecutionResult, GetFilesResult
from ec2_sandbox.tools import TOOLS, TOOLS_BY_NAME
from ec2_sandbox.transports import MockTransport

NAME_RE = r"^[a-zA-Z0-9_-]{1,64}$"


def test_four_tools_with_valid_names() -> None:
    assert [t.name for t in TOOLS] == [
        "ec2_code_execution",
        "ec2_get_files",
        "ec2_cleanup_tasks",
        "ec2_instance_status",
    ]
    import re

    assert all(re.match(NAME_RE, t.name) for t in TOOLS)


@pytest.mark.parametrize("tool", TOOLS, ids=lambda t: t.name)
def test_every_field_has_a_description(tool) -> None:  # type: ignore[no-untyped-def]
    for model in (tool.input_model, tool.output_model):
        for name, field in model.model_fields.items():
            if model in (tool.output_model,) and model is not ExecutionResult:
                continue
            assert field.description, f"{model.__name__}.{name} has no description"
    assert len(tool.description) > 60


def test_runtime_enum_follows_the_environment(tmp_base_dir: str) -> None:
    sandbox = AsyncSandbox(SandboxConfig(base_sandbox_dir=tmp_base_dir, allowed_runtimes=["python3", "node"]))
    schema = TOOLS_BY_NAME["ec2_code_execution"].input_schema(sandbox)
    assert schema["properties"]["runtime"]["enum"] == ["python3", "node"]
    assert set(schema["required"]) == {"code"}


async def test_invoke_validates_and_runs(tmp_base_dir: str) -> None:
    sandbox = AsyncSandbox(SandboxConfig(base_sandbox_dir=tmp_base_dir))
    tool = TOOLS_BY_NAME["ec2_code_execution"]
    result = await tool.invoke(sandbox, {"code": "open('o.txt','w').write('1')", "files": {"a/b.txt": "x"}})
    assert isinstance(result, ExecutionResult) and result.success
    files = await TOOLS_BY_NAME["ec2_get_files"].invoke(sandbox, {"task_hash": result.task_hash})
    assert isinstance(files, GetFilesResult)
    assert {f.path: f.content for f in files.files} == {"a/b.txt": "x", "o.txt": "1"}
    with pytest.raises(ValidationError, match="files"):
        await tool.invoke(sandbox, {"code": "x", "files": {"../up": "x"}})
    with pytest.raises(ValidationError, match="code"):
        await tool.invoke(sandbox, {"runtime": "python3"})
    with pytest.raises(ValidationError, match="extra"):
        await tool.invoke(sandbox, {"code": "x", "shell": "rm -rf /"})


def scripted(outcome: Outcome, max_output_chars: int) -> AsyncSandbox:
    """A sandbox whose run leaves ``outcome`` (no runner: what the model gets of files is the point)."""
    config = SandboxConfig(max_output_chars=max_output_chars)
    return AsyncSandbox(config, transport=MockTransport(ScriptedTarget(outcome)))


async def test_get_files_pages_large_files_for_models() -> None:
    sandbox = scripted(Outcome(files={"big.txt": "y" * 5000}), max_output_chars=1000)
    result = await sandbox.execute_code("write big.txt")
    tool = TOOLS_BY_NAME["ec2_get_files"]
    page = (await tool.invoke(sandbox, {"task_hash": result.task_hash, "filename": "big.txt"})).files[0]
    assert page.size == 5000 and page.truncated and page.next_offset == 1000
    rest = await tool.invoke(sandbox, {"task_hash": result.task_hash, "filename": "big.txt", "offset": 4500})
    assert rest.files[0].content == "y" * 500 and not rest.files[0].truncated


async def test_default_runtime_follows_the_environment(tmp_base_dir: str) -> None:
    sandbox = AsyncSandbox(SandboxConfig(base_sandbox_dir=tmp_base_dir, allowed_runtimes=["bash", "node"]))
    tool = TOOLS_BY_NAME["ec2_code_execution"]
    assert tool.input_schema(sandbox)["properties"]["runtime"]["default"] == "bash"
    result = await tool.invoke(sandbox, {"code": "echo $BASH_VERSION | cut -c1"})
    assert result.success and result.runtime == "bash" and result.stdout.strip().isdigit()


async def test_get_files_for_models_stops_reading_when_the_budget_is_spent() -> None:
    files = {f"f{i:02d}.txt": "z" * 100 for i in range(40)}
    sandbox = scripted(Outcome(files=files), max_output_chars=1000)
    result = await sandbox.execute_code("write forty files")
    out = await TOOLS_BY_NAME["ec2_get_files"].invoke(sandbox, {"task_hash": result.task_hash})
    assert isinstance(out, GetFilesResult)
    assert len(out.files) == 10  # the budget (1000) is spent after ten 100-byte files
    assert len(out.files) + len(out.not_shown) == 40
    assert out.not_shown[-1] == "f39.txt"
    target = sandbox.transport.handler  # type: ignore[attr-defined]
    assert [r["op"] for r in target.requests].count("read") == 10  # the rest were named, never read


async def test_a_call_is_checked_once_on_the_client(monkeypatch: pytest.MonkeyPatch) -> None:
    """The tool's model is the run request: the sandbox takes it as it is, and the Python API builds the
    same model, so each file name is checked once before the runner (the trust boundary) checks it again."""
    from ec2_sandbox import runner

    checked: list[str] = []
    real = runner.check_relative_path

    def counting(name: str, *args: object, **kwargs: object) -> object:
        checked.append(name)
        return real(name, *args, **kwargs)

    monkeypatch.setattr(runner, "check_relative_path", counting)
    sandbox = scripted(Outcome(), max_output_chars=1000)
    tool = TOOLS_BY_NAME["ec2_code_execution"]
    result = await tool.invoke(sandbox, {"code": "x", "files": {"a/b.txt": "x"}, "session_id": "s1"})
    assert isinstance(result, ExecutionResult) and checked == ["a/b.txt"]
    checked.clear()
    sandbox = scripted(Outcome(), max_output_chars=1000)
    await sandbox.execute_code("x", files={"c.bin": b"\xff"})
    assert checked == ["c.bin"]
    target = sandbox.transport.handler  # type: ignore[attr-defined]
    assert target.requests[-1]["files"] == [{"path": "c.bin", "b64": "/w=="}]


async def test_the_python_api_runs_the_environments_default_runtime() -> None:
    config = SandboxConfig(allowed_runtimes=["bash", "node"])
    sandbox = AsyncSandbox(config, transport=MockTransport(ScriptedTarget(Outcome(), Outcome())))
    assert (await sandbox.execute_code("echo hi")).runtime == "bash"
    assert (await sandbox.execute_code("1", "node")).runtime == "node"
    requests = sandbox.transport.handler.requests  # type: ignore[attr-defined]
    assert [r["runtime"]["name"] for r in requests] == ["bash", "node"]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"code": " \n"}, "code: must be a non-empty program"),
        ({"code": "x", "stateful": True}, "stateful: a stateful call needs a session_id"),
        ({"code": "x", "stateful": True, "session_id": "s", "runtime": "bash"}, "runtime: the persistent"),
        ({"code": "x", "timeout": 301}, "timeout: 301 s must be between 1 and"),
    ],
)
async def test_the_python_api_and_the_tool_refuse_alike(kwargs: dict[str, object], message: str) -> None:
    """One set of rules for both paths: the model's, then the environment's, each in one place."""
    from ec2_sandbox.presentation import call_tool

    sandbox = scripted(Outcome(), max_output_chars=1000)
    with pytest.raises(InvalidInputError) as info:
        await sandbox.execute_code(**kwargs)  # type: ignore[arg-type]
    assert str(info.value).startswith(message), info.value
    rendered = await call_tool(sandbox, TOOLS_BY_NAME["ec2_code_execution"], kwargs)
    assert rendered.is_error and message.split(": ", 1)[1] in rendered.text, rendered.text
