"""Both first-party plugins through the SSM transport, against the moto-based SSM stand-in.

The stand-in (``ec2_sandbox.testing.ssm_standin``) serves on 127.0.0.1 and really runs each command on this
machine as the SSM agent would: the Perl runtime and the keep-newest policy travel exactly as they would
to an EC2 instance (the runtime as request data, the policy's choice as ids to remove).
"""

from __future__ import annotations

import os
import time
from collections.abc import AsyncIterator, Iterator

import pytest

from ec2_sandbox import AsyncSandbox, SandboxConfig
from ec2_sandbox.plugins import Registry, load_registry

REGION = "us-east-1"


@pytest.fixture(scope="module")
def instance() -> Iterator[str]:
    from ec2_sandbox.testing import ssm_standin

    with pytest.MonkeyPatch.context() as mp:
        for name in list(os.environ):
            if name.startswith("AWS_"):
                mp.delenv(name)
        mp.setenv("AWS_ACCESS_KEY_ID", "testing")
        mp.setenv("AWS_SECRET_ACCESS_KEY", "testing")
        mp.setenv("AWS_DEFAULT_REGION", REGION)
        with ssm_standin.serve() as server:
            mp.setenv("AWS_ENDPOINT_URL", server.url)
            yield ssm_standin.create_instance(server.url, REGION)


@pytest.fixture
def registry(monkeypatch: pytest.MonkeyPatch) -> Registry:
    monkeypatch.delenv("EC2_SANDBOX_PLUGINS", raising=False)
    return load_registry()


@pytest.fixture
async def sandbox(instance: str, registry: Registry, tmp_base_dir: str) -> AsyncIterator[AsyncSandbox]:
    config = SandboxConfig(
        transport="ssm",
        instance_id=instance,
        region=REGION,
        base_sandbox_dir=tmp_base_dir,
        max_memory_mb=256,
        cleanup_policy="keep-newest",
    )
    async with AsyncSandbox(config, registry=registry) as sb:
        yield sb


async def test_perl_runs_over_ssm_with_files_env_and_memory_limit(sandbox: AsyncSandbox) -> None:
    code = 'open my $f, "<", "n.txt" or die "$!"; my $n = <$f>; print "$ENV{WHO}: ", $n * 2, "\\n";'
    result = await sandbox.execute_code(code, "perl", files={"n.txt": "21"}, env_vars={"WHO": "`id` $HOME"})
    assert result.success, result
    assert (result.stdout, result.transport) == ("`id` $HOME: 42\n", "ssm")
    grow = 'my @h; while (1) { push @h, "x" x (8 * 1024 * 1024); }'
    result = await sandbox.execute_code(grow, "perl")
    assert result.termination_reason == "memory_limit", result
    assert "Out of memory!" in result.stderr


async def test_instance_status_over_ssm_reports_perls_version(sandbox: AsyncSandbox) -> None:
    status = await sandbox.instance_status()
    perl = next(r for r in status.runtimes if r.name == "perl")
    assert perl.available and (perl.version or "").startswith("perl v5.")
    assert status.transport == "ssm"


async def test_keep_newest_over_ssm(sandbox: AsyncSandbox, monkeypatch: pytest.MonkeyPatch) -> None:
    base = sandbox.config.base_sandbox_dir
    assert base is not None
    monkeypatch.setenv("EC2_SANDBOX_KEEP_NEWEST", "1")
    hashes = []
    for i in range(3):
        result = await sandbox.execute_code(f'print "{i}\\n";', "perl")
        assert result.success, result
        hashes.append(result.task_hash)
    for i, task in enumerate(hashes):
        when = time.time() - (3 - i) * 3600
        for sub in ("tasks", "runs"):
            os.utime(os.path.join(base, sub, task), (when, when))
    result = await sandbox.cleanup_tasks(hours=0)
    assert result.policy == "keep-newest"
    assert {(e.kind, e.id) for e in result.removed} == {(k, t) for t in hashes[:2] for k in ("task", "run")}
    assert os.listdir(os.path.join(base, "tasks")) == [hashes[2]]
    assert await sandbox.get_task_files(hashes[2], "@stdout") == "2\n"
