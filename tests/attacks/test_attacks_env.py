"""Attacks through names and the environment: env vars, loader and interpreter variables, ids, credentials.

Policy for ``LD_PRELOAD``, ``PATH``, ``PYTHONPATH``, ``NODE_OPTIONS`` and every other env var a caller
supplies: allowed, and they reach the user's program only. The runner resolves the runtime's executable on
its own fixed PATH, starts bubblewrap with an environment of PATH alone, and puts the caller's variables on
the program inside; runtime flags in argv (such as Node's heap cap) come after NODE_OPTIONS and win, and the
data rlimit or memory cgroup holds whatever a variable asks for.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess

import pytest
from pydantic import ValidationError

from ec2_sandbox import runner
from ec2_sandbox.errors import InvalidInputError
from ec2_sandbox.runtimes import Runtime

from .conftest import Box, needs_node

PRINT_ENV = "import json, os\nprint(json.dumps(dict(os.environ)))"


async def test_env_names_with_equals_spaces_newlines(box: Box) -> None:
    for name in ("A=B", "A B", "A\nB", "", "1A", "A-B", "A;B", "$(id)", "PATH=/tmp", "\x00", "É"):
        with pytest.raises(InvalidInputError):
            await box.run("print(1)", env={name: "x"})
        envelope = await box.raw_run(env={name: "x"})
        assert not envelope["ok"] and envelope["error"]["kind"] == "invalid_input", (name, envelope)
    await box.assert_recovers()


async def test_env_values_with_quotes_subshells_newlines(box: Box) -> None:
    canary = f"/tmp/pwned-{box.marker}"
    values = {
        "Q1": "it's \"quoted\" and 'single'",
        "Q2": f"$(touch {canary})",
        "Q3": f"`touch {canary}`; touch {canary} && echo",
        "Q4": "line one\nline two\r\n\ttabbed",
        "Q5": "back\\slash \\n not a newline",
        "Q6": "${HOME} $PATH %PATH% {file}",
        "Q7": "ünïcødé ☃ 日本",
        "Q8": "",
        "Q9": "x" * 100_000,
    }
    result = await box.run(PRINT_ENV, env=values)
    assert result.success, result
    seen = json.loads(await box.sb.get_task_files(result.task_hash, "@stdout"))
    for name, value in values.items():
        assert seen[name] == value, name
    assert not os.path.exists(canary)
    shell = await box.run('printf "%s|" "$Q2" "$Q3"', "bash", env=values)
    assert shell.stdout == f"{values['Q2']}|{values['Q3']}|"
    assert not os.path.exists(canary)
    await box.assert_recovers()


async def test_env_value_with_nul(box: Box) -> None:
    with pytest.raises(InvalidInputError, match="NUL"):
        await box.run("print(1)", env={"A": "before\x00after"})
    envelope = await box.raw_run(env={"A": "before\x00after"})
    assert not envelope["ok"] and envelope["error"]["kind"] == "invalid_input"
    await box.assert_recovers()


async def test_env_ld_preload(box: Box) -> None:
    env = {"LD_PRELOAD": "/nonexistent/evil.so", "LD_LIBRARY_PATH": "/nonexistent", "LD_AUDIT": "/x.so"}
    result = await box.run(PRINT_ENV, env=env)
    # The program ran (the loader only warns about a missing preload) and saw exactly what was given.
    assert result.success, result
    seen = json.loads(result.stdout)
    assert {k: seen[k] for k in env} == env
    await box.assert_recovers()


@pytest.mark.skipif(shutil.which("gcc") is None, reason="needs gcc to build the preload library")
async def test_env_ld_preload_real_library_stays_in_the_program(box: Box, tmp_path: object) -> None:
    # A real constructor that announces itself: it runs inside the user's program (the caller's own code),
    # and in nothing the runner starts for itself (bubblewrap gets an environment of PATH alone).
    src = (
        "#include <stdio.h>\n"
        '__attribute__((constructor)) static void hi(void) { fputs("PRELOADED\\n", stderr); }\n'
    )
    first = await box.run("print('dir')")
    lib = os.path.join(first.working_directory, "evil.so")
    c_file = os.path.join(first.working_directory, "evil.c")
    with open(c_file, "w") as fh:
        fh.write(src)
    subprocess.run(["gcc", "-shared", "-fPIC", "-o", lib, c_file], check=True)
    os.chmod(lib, 0o755)
    result = await box.run("print('program ran')", env={"LD_PRELOAD": lib})
    assert result.success and result.stdout == "program ran\n", result
    # Once per process that loaded it: the interpreter alone, never bubblewrap or its init.
    assert result.stderr.count("PRELOADED") == 1, result.stderr
    await box.assert_recovers()


async def test_env_path_hijack(box: Box) -> None:
    fake = "#!/bin/sh\necho HIJACKED\n"
    planted = await box.run(
        "import os\nos.makedirs('bin', exist_ok=True)\n"
        f"open('bin/python3', 'w').write({fake!r})\nopen('bin/bwrap', 'w').write({fake!r})\n"
        "os.chmod('bin/python3', 0o755)\nos.chmod('bin/bwrap', 0o755)"
    )
    assert planted.success, planted
    hostile_path = os.path.join(planted.working_directory, "bin") + ":/usr/bin:/bin"
    result = await box.run(
        "import os, sys\nprint(sys.executable, os.environ['PATH'])", env={"PATH": hostile_path}
    )
    assert result.success, result
    assert "HIJACKED" not in result.stdout
    executable, path = result.stdout.split()
    assert executable.startswith(("/usr/", "/bin/")) and path == hostile_path
    await box.assert_recovers()


async def test_env_pythonpath_hijack(box: Box) -> None:
    planted = await box.run("open('sitecustomize.py', 'w').write('print(\"HIJACKED\")')")
    assert planted.success
    env = {
        "PYTHONPATH": planted.working_directory,
        "PYTHONSTARTUP": "/etc/passwd",
        "PYTHONHOME": "/nonexistent",
    }
    # PYTHONHOME breaks the user's interpreter - that is the caller's choice, and only its own run fails.
    broken = await box.run("print('unreached')", env=env)
    assert not broken.success and broken.termination_reason == "exited"
    result = await box.run("print('program')", env={"PYTHONPATH": planted.working_directory})
    assert result.success, result
    # The variable reached the program (its own interpreter imported the module) and nothing else.
    assert result.stdout == "HIJACKED\nprogram\n"
    assert "PYTHONPATH" not in os.environ
    clean = await box.run("print('clean')")
    assert clean.stdout == "clean\n"  # nothing carried over into later runs of the session
    await box.assert_recovers()


@needs_node
async def test_env_node_options_lift_heap_cap(box: Box) -> None:
    env = {"NODE_OPTIONS": "--max-old-space-size=65536 --max-semi-space-size=1024"}
    result = await box.run(
        "const hog = []; while (true) hog.push(new Array(1e6).fill(1.5));", "node", env=env
    )
    box.assert_out_of_memory(result)
    probe = await box.run(
        "const v8 = require('v8'); console.log(v8.getHeapStatistics().heap_size_limit >> 20)", "node", env=env
    )
    assert probe.success, probe
    assert int(probe.stdout) < 256  # the argv flag sized the heap from the limit, not NODE_OPTIONS
    await box.assert_recovers()


async def test_runtime_name_with_shell_syntax(box: Box) -> None:
    canary = f"/tmp/pwned-{box.marker}"
    for name in (
        f"python3; touch {canary}",
        f"$(touch {canary})",
        "python3 && id",
        "../python3",
        "`id`",
        "",
        "PYTHON3",
    ):
        with pytest.raises(InvalidInputError, match="runtime"):
            await box.run("print(1)", name)
    with pytest.raises(ValidationError):
        Runtime(
            name="py; rm -rf /",
            description="x",
            filename="main.py",
            argv=["python3", "{file}"],
            version_argv=["x"],
        )
    with pytest.raises(ValidationError):
        Runtime(
            name="py", description="x", filename="../main.py", argv=["python3", "{file}"], version_argv=["x"]
        )
    assert not os.path.exists(canary)
    await box.assert_recovers()


async def test_session_id_with_shell_syntax(box: Box) -> None:
    canary = f"/tmp/pwned-{box.marker}"
    bad = [
        f"$(touch {canary})",
        "a;b",
        "../other",
        "a/b",
        "x" * 65,
        ".hidden",
        "-rf",
        "a\nb",
        "a b",
        "..",
        "ü",
    ]
    for sid in bad:
        with pytest.raises(InvalidInputError, match="session_id"):
            await box.run("print(1)", session=sid)
        envelope = await box.raw_run(session_id=sid)
        assert not envelope["ok"] and envelope["error"]["kind"] == "invalid_input", (sid, envelope)
    assert not os.path.exists(canary)
    assert sorted(os.listdir(os.path.join(box.base, "sessions"))) == []
    assert sorted(os.listdir(os.path.join(box.base, "session-tmp"))) == []
    layout = {
        "tasks",
        "sessions",
        "ephemeral",
        "runs",
        "locks",
        "kernels",
        "session-tmp",
        runner.BWRAP_PROBE_NAME,
    }
    assert set(os.listdir(box.base)) <= layout
    await box.assert_recovers()


FAKE_SECRET = "FAKEsecretKEYforTHEattackSUITE0123456789"


async def test_hunt_aws_credentials_in_env(box: Box, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", FAKE_SECRET)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIAFAKEATTACKSUITE00")
    monkeypatch.setenv("AWS_SESSION_TOKEN", FAKE_SECRET + "token")
    result = await box.run(PRINT_ENV)
    assert result.success, result
    seen = json.loads(result.stdout)
    assert not [k for k in seen if k.startswith("AWS_")]
    assert FAKE_SECRET not in result.stdout
    shell = await box.run("env; set", "bash")
    assert FAKE_SECRET not in shell.stdout and "AKIAFAKE" not in shell.stdout
    await box.assert_recovers()


async def test_hunt_aws_credentials_in_proc(box: Box, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", FAKE_SECRET)
    code = f"""
import os
found, readable = [], 0
for pid in [p for p in os.listdir("/proc") if p.isdigit()] + ["self", "1"]:
    for leaf in ("environ", "cmdline", "mem", "maps"):
        try:
            with open("/proc/%s/%s" % (pid, leaf), "rb") as fh:
                data = fh.read(1 << 20)
        except OSError:
            continue
        readable += 1
        if {FAKE_SECRET.encode()!r} in data:
            found.append((pid, leaf))
homes = ("/root/.aws/credentials", os.path.expanduser("~/.aws/credentials"))
for path in homes + ("/proc/%d/environ" % os.getppid(),):
    try:
        if {FAKE_SECRET!r} in open(path).read():
            found.append(path)
    except OSError:
        pass
print("found", found, "readable", readable)
"""
    result = await box.run(code)
    assert result.success, result
    assert "found [] readable" in result.stdout, result.stdout
    await box.assert_recovers()
