"""Every preset runs a hello-world in each runtime it allows, at its own limits (local transport)."""

from __future__ import annotations

import pytest

from ec2_sandbox.config_manager import PRESET_NAMES, ConfigManager
from ec2_sandbox.runtimes import BUILTIN_RUNTIMES
from ec2_sandbox.sandbox import AsyncSandbox

HELLO = {
    "python3": "print('hello from python3')",
    "python": "print('hello from python')",
    "node": "console.log('hello from node')",
    "bash": "echo 'hello from bash'",
    "sh": "echo 'hello from sh'",
    "perl": 'print "hello from perl\\n";',
}


@pytest.mark.parametrize("preset", PRESET_NAMES)
async def test_preset_runs_each_allowed_runtime(preset: str, tmp_base_dir: str) -> None:
    config = ConfigManager(environ={}).get_config(preset, base_sandbox_dir=tmp_base_dir)
    sandbox = AsyncSandbox(config)
    allowed = sandbox.allowed_runtimes()
    builtins = {r.name for r in BUILTIN_RUNTIMES}
    listed = set(config.allowed_runtimes or builtins)
    assert builtins & listed <= set(allowed)
    missing = [name for name in allowed if name not in HELLO]
    assert not missing, f"add a hello-world for {missing}"
    for runtime in allowed:
        result = await sandbox.execute_code(HELLO[runtime], runtime=runtime, create_filesystem=True)
        assert result.success, (preset, runtime, result.error_message, result.stderr)
        assert result.stdout == f"hello from {runtime}\n"


async def test_node_uses_its_heap_under_the_education_limit(tmp_base_dir: str) -> None:
    config = ConfigManager(environ={}).get_config("education", base_sandbox_dir=tmp_base_dir)
    assert config.max_memory_mb == 256 and "node" in config.allowed_runtimes
    code = "const a = []; for (let i = 0; i < 2e6; i++) a.push({i}); console.log(a.length)"
    result = await AsyncSandbox(config).execute_code(code, runtime="node")
    assert result.success, result.stderr
    assert result.stdout == "2000000\n"


async def test_education_limits_hold(tmp_base_dir: str) -> None:
    """The strict preset really is strict: writing a file above its 10 MB limit fails."""
    config = ConfigManager(environ={}).get_config("education", base_sandbox_dir=tmp_base_dir)
    sandbox = AsyncSandbox(config)
    big = await sandbox.execute_code("open('f', 'wb').write(b'x' * (11 << 20))", runtime="python3")
    assert not big.success
    ok = await sandbox.execute_code("open('f', 'wb').write(b'x' * (9 << 20))", runtime="python3")
    assert ok.success, ok.stderr
