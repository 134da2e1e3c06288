"""The layers themselves: what a run and instance_status say is in force is what is in force."""

from __future__ import annotations

import os

import pytest

from ec2_sandbox import runner

from .conftest import HAVE_BWRAP, Box


async def test_isolation_bwrap_required_refuses_without_bubblewrap(
    box: Box, monkeypatch: pytest.MonkeyPatch
) -> None:
    required = box.with_config(isolation="bwrap")
    monkeypatch.setattr(runner, "find_bwrap", lambda: None)
    result = await required.run("print('must not run')")
    assert not result.success and result.termination_reason == "not_started", result
    assert "bubblewrap" in result.error_message and "not installed" in result.error_message
    assert result.stdout == ""
    monkeypatch.undo()
    await box.assert_recovers()


async def test_isolation_auto_takes_bubblewrap_when_usable(box: Box) -> None:
    auto = box.with_config(isolation="auto")
    result = await auto.run("print(1)")
    assert result.isolation == ("bwrap" if HAVE_BWRAP else "none")
    assert ("namespaces:bwrap" in result.limits_enforced) == HAVE_BWRAP
    await box.assert_recovers()


async def test_limits_enforced_match_the_machine(box: Box) -> None:
    result = await box.run("import os\nprint(os.getuid(), os.getgid(), os.getgroups())")
    assert result.success, result
    uid, gid, groups = result.stdout.split(" ", 2)
    assert int(uid) in box.uids() and uid == gid and groups.strip() == "[]"
    root = runner.cgroup_root()
    controllers = runner.cgroup_controllers(root) if root else []
    layers = result.limits_enforced
    if box.isolation == "none" or controllers:
        # A memory cgroup replaces the data rlimit; without one the rlimit is named instead.
        assert ("cgroup:memory" in layers) == ("memory" in controllers)
        assert ("rlimit:data" in layers) == ("memory" not in controllers)
        assert ("cgroup:pids" in layers) == ("pids" in controllers)
    assert "uid:private" in layers and "rlimit:nproc" in layers and "network:off" in layers
    kill = [layer for layer in layers if layer.startswith("kill:")]
    assert len(kill) == 1
    if box.isolation == "bwrap":
        assert kill == ["kill:pid-namespace"] and "namespaces:bwrap" in layers
    else:
        has_kill = bool(root) and os.path.exists(os.path.join(root, "cgroup.kill"))
        assert kill == (["kill:cgroup"] if has_kill else ["kill:uid"])
    await box.assert_recovers()


async def test_instance_status_names_missing_layers(box: Box) -> None:
    status = await box.sb.instance_status()
    assert status.isolation == box.isolation
    probe = next(p for p in status.parts if p.name == "probe")
    assert probe.details["privileged"] is True
    if box.isolation == "none":
        assert any("isolation is 'none'" in w for w in status.warnings), status.warnings
    else:
        assert not [w for w in status.warnings if "namespaces" in w], status.warnings
    # Root with CAP_SYS_ADMIN gives "none" runs a network namespace too: then nothing to warn about.
    unenforced = [w for w in status.warnings if "nothing enforces" in w]
    assert bool(unenforced) == (box.isolation == "none" and not probe.details["netns_usable"])
    controllers = probe.details["cgroup_controllers"]
    no_memory_cgroup = [w for w in status.warnings if "no cgroup" in w]
    assert bool(no_memory_cgroup) == ("memory" not in controllers or "pids" not in controllers)
    # The syscall filter: usable here, so no warning; turned off, a warning says what that opens.
    assert probe.details["seccomp"] is runner.seccomp_usable() is True
    assert not [w for w in status.warnings if "syscall" in w], status.warnings
    unfiltered = await box.with_config(syscall_filter="none").sb.instance_status()
    assert [w for w in unfiltered.warnings if "syscall_filter is 'none'" in w], unfiltered.warnings
    await box.assert_recovers()
