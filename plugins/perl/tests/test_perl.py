"""The ec2-sandbox-perl plugin end to end: found through its entry point, run through the local transport.

The plugin is installed into the workspace (``uv sync``); nothing here registers it by hand.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator

import pytest
from support.plugins import registry_with

from ec2_sandbox import AsyncSandbox, InvalidInputError, SandboxConfig
from ec2_sandbox.plugins import Registry
from ec2_sandbox.tools import TOOLS
from ec2_sandbox.transports.local import LocalTransport

PERL_VERSION = re.compile(r"^perl v5\.\d+\.\d+$")


@pytest.fixture
def registry(monkeypatch: pytest.MonkeyPatch) -> Registry:
    reg = registry_with(monkeypatch, None)
    assert reg.owners.get("runtime:perl") == "perl", reg.errors
    return reg


@pytest.fixture(params=["inprocess", "subprocess"])
async def sandbox(request, registry: Registry, tmp_base_dir: str) -> AsyncIterator[AsyncSandbox]:  # type: ignore[no-untyped-def]
    config = SandboxConfig(base_sandbox_dir=tmp_base_dir, max_memory_mb=256)
    transport = LocalTransport(mode=request.param)
    async with AsyncSandbox(config, transport=transport, registry=registry) as sb:
        yield sb


async def test_hello_world(sandbox: AsyncSandbox) -> None:
    result = await sandbox.execute_code('use strict; use warnings; print "Hello, ", 6 * 7, "!\\n";', "perl")
    assert result.success, result
    assert result.stdout == "Hello, 42!\n"
    assert result.runtime == "perl" and result.termination_reason == "exited"


async def test_the_program_is_saved_under_the_runtimes_filename_and_exit_status_is_kept(
    sandbox: AsyncSandbox,
) -> None:
    result = await sandbox.execute_code('print STDERR "file=$0\\n"; exit 7;', "perl")
    assert not result.success
    assert result.return_code == 7 and result.termination_reason == "exited"
    assert result.stderr.startswith("file=") and result.stderr.rstrip().endswith("/main.pl")


async def test_files_in_and_out(sandbox: AsyncSandbox) -> None:
    code = r"""
open(my $in, "<", "data/words.txt") or die "cannot read: $!";
my @words = map { chomp; uc } <$in>;
open(my $out, ">", "out/upper.txt") or die "cannot write: $!";
print $out join(",", @words), "\n";
close $out;
print scalar(@words), " words\n";
"""
    files = {"data/words.txt": "alpha\nbeta\ngamma\n", "out/.keep": ""}
    result = await sandbox.execute_code(code, "perl", files=files)
    assert result.success, result
    assert result.stdout == "3 words\n"
    assert "out/upper.txt" in result.files_created
    assert await sandbox.get_task_files(result.task_hash, "out/upper.txt") == "ALPHA,BETA,GAMMA\n"


async def test_env_vars_arrive_as_data(sandbox: AsyncSandbox, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "must-not-reach-user-code")
    hostile = "$(touch /tmp/pwned); `id`; 'quote\" \\"
    code = (
        'print "$ENV{GREETING}|$ENV{TRICKY}|", '
        '(defined $ENV{AWS_SECRET_ACCESS_KEY} ? "leak" : "clean"), "\\n";'
    )
    result = await sandbox.execute_code(code, "perl", env_vars={"GREETING": "héllo", "TRICKY": hostile})
    assert result.success, result
    assert result.stdout == f"héllo|{hostile}|clean\n"


async def test_a_session_keeps_files_between_perl_runs(sandbox: AsyncSandbox) -> None:
    first = await sandbox.execute_code('open my $f, ">", "n.txt"; print $f 41; close $f;', "perl", "perl-s1")
    second = await sandbox.execute_code('open my $f, "<", "n.txt"; print <$f> + 1;', "perl", "perl-s1")
    assert first.success and second.success, (first, second)
    assert second.stdout == "42"


async def test_memory_limit_is_enforced_and_named(sandbox: AsyncSandbox) -> None:
    # 256 MB limit: memory that grows until an allocation fails is counted (the peak) and named.
    grow = 'my @h; while (1) { push @h, "x" x (8 * 1024 * 1024); }'
    result = await sandbox.execute_code(grow, "perl")
    assert not result.success
    assert result.termination_reason == "memory_limit", result
    assert "Out of memory" in result.stderr
    assert "256 MB" in (result.error_message or "")
    # A single 600 MB string fails at once: only perl's own words say why, so they are a hint.
    result = await sandbox.execute_code('my $s = "x" x (600 * 1024 * 1024); print length($s), "\\n";', "perl")
    assert not result.success and result.stdout == ""
    assert result.termination_reason == "exited", result
    assert "a hint" in result.error_message and "256 MB" in result.error_message


async def test_memory_within_the_limit_is_fine(sandbox: AsyncSandbox) -> None:
    result = await sandbox.execute_code('my $s = "x" x (64 * 1024 * 1024); print length($s), "\\n";', "perl")
    assert result.success, result
    assert result.stdout == f"{64 * 1024 * 1024}\n"


async def test_timeout_kills_perl(sandbox: AsyncSandbox) -> None:
    result = await sandbox.execute_code("$| = 1; print qq(start\\n); sleep 30;", "perl", timeout=1)
    assert result.timed_out and result.termination_reason == "timeout"
    assert result.stdout == "start\n"


# ---------------------------------------------------------------------- visible everywhere
async def test_instance_status_lists_perl_with_its_version(sandbox: AsyncSandbox) -> None:
    status = await sandbox.instance_status()
    perl = next(r for r in status.runtimes if r.name == "perl")
    assert perl.available
    assert PERL_VERSION.match(perl.version or ""), perl.version
    assert perl.executable and perl.executable.endswith("/perl")


def test_tool_schema_offers_perl(registry: Registry, tmp_base_dir: str) -> None:
    sandbox = AsyncSandbox(SandboxConfig(base_sandbox_dir=tmp_base_dir), registry=registry)
    prop = TOOLS[0].input_schema(sandbox)["properties"]["runtime"]
    assert "perl" in prop["enum"] and "python3" in prop["enum"]
    assert "perl (Perl 5 with its core modules" in prop["description"]


async def test_allowed_runtimes_can_restrict_to_the_plugin_runtime(
    registry: Registry, tmp_base_dir: str
) -> None:
    config = SandboxConfig(base_sandbox_dir=tmp_base_dir, allowed_runtimes=["perl"])
    async with AsyncSandbox(config, registry=registry) as sandbox:
        assert sandbox.allowed_runtimes() == ["perl"]
        assert TOOLS[0].input_schema(sandbox)["properties"]["runtime"]["enum"] == ["perl"]
        with pytest.raises(InvalidInputError, match="'python3' is not allowed in this environment"):
            await sandbox.execute_code("print(1)", "python3")
        assert (await sandbox.execute_code('print "ok";', "perl")).stdout == "ok"
        status = await sandbox.instance_status()
        assert [r.name for r in status.runtimes] == ["perl"]


async def test_without_the_plugin_perl_is_unknown(monkeypatch: pytest.MonkeyPatch, tmp_base_dir: str) -> None:
    registry = registry_with(monkeypatch, "keep-newest")
    sandbox = AsyncSandbox(SandboxConfig(base_sandbox_dir=tmp_base_dir), registry=registry)
    assert "perl" not in TOOLS[0].input_schema(sandbox)["properties"]["runtime"]["enum"]
    with pytest.raises(InvalidInputError, match="'perl' is unknown"):
        await sandbox.execute_code('print "x";', "perl")


async def test_every_adapter_offers_and_runs_perl(registry: Registry, tmp_base_dir: str) -> None:
    import json

    from mcp.client import Client

    from ec2_sandbox_langchain import create_langchain_tools
    from ec2_sandbox_mcp import create_mcp_server
    from ec2_sandbox_openai_agents import create_openai_tools
    from ec2_sandbox_strands import create_strands_tools

    config = SandboxConfig(base_sandbox_dir=tmp_base_dir, allowed_runtimes=["perl", "sh"])
    sandbox = AsyncSandbox(config, registry=registry)

    def args(who: str) -> dict[str, str]:
        return {"code": f'print "perl via {who}\\n";', "runtime": "perl"}

    strands = create_strands_tools(sandbox)[0]
    assert strands.tool_spec["inputSchema"]["json"]["properties"]["runtime"]["enum"] == ["perl", "sh"]
    events = [
        e
        async for e in strands.stream(
            {"toolUseId": "t1", "name": strands.tool_name, "input": args("strands")}, {}
        )
    ]
    assert events[-1]["status"] == "success" and "perl via strands" in events[-1]["content"][0]["text"]

    langchain = create_langchain_tools(sandbox)[0]
    assert langchain.args_schema["properties"]["runtime"]["enum"] == ["perl", "sh"]  # type: ignore[index]
    content = await langchain.ainvoke(args("langchain"))
    assert "perl via langchain" in content[0]["text"]

    openai = create_openai_tools(sandbox)[0]
    runtime_schema = json.dumps(openai.params_json_schema["properties"]["runtime"])
    assert '"enum": ["perl", "sh"]' in runtime_schema
    assert "perl via openai" in str(await openai.on_invoke_tool(None, json.dumps(args("openai"))))  # type: ignore[arg-type]

    async with Client(create_mcp_server(sandbox)) as client:
        listed = await client.list_tools()
        assert listed.tools[0].input_schema["properties"]["runtime"]["enum"] == ["perl", "sh"]
        result = await client.call_tool("ec2_code_execution", args("mcp"))
        assert not result.is_error and result.structured_content["stdout"] == "perl via mcp\n"
