"""Warm starts (zygote.py): a Python run forked from a running interpreter must be indistinguishable from a
cold ``python3 main.py`` under bubblewrap, but for the documented differences (the parent's pid)."""

from __future__ import annotations

import concurrent.futures
import json
import os
import re
import shutil
import signal
import subprocess
import time

import pytest

from ec2_sandbox import Sandbox, SandboxConfig, protocol, runner, zygote
from ec2_sandbox.runtimes import BUILTIN_RUNTIMES

pytestmark = pytest.mark.skipif(
    not runner.find_bwrap() or not runner.bwrap_works(runner.find_bwrap(), None),
    reason="bubblewrap is not installed or cannot create namespaces here",
)

PROBE = r"""
import json, os, resource, signal, site, socket, sys, ctypes
status = dict(line.split(":", 1) for line in open("/proc/self/status").read().splitlines() if ":" in line)
mounts = sorted(
    (fields[4], fields[5].split(",")[0]) for fields in (line.split() for line in open("/proc/self/mountinfo"))
)
libc = ctypes.CDLL(None, use_errno=True)
userns = libc.unshare(0x10000000)
limits = {n: resource.getrlimit(getattr(resource, n)) for n in dir(resource) if n.startswith("RLIMIT_")}
print(json.dumps({
    "argv": sys.argv, "path": sys.path, "flags": list(sys.flags), "file": __file__, "name": __name__,
    "spec": repr(__spec__), "loader": type(__loader__).__name__, "orig_argv": sys.orig_argv,
    "env": dict(os.environ), "cwd": os.getcwd(), "uid_is_gid": os.getuid() == os.getgid(),
    "ids": [os.getuid(), os.geteuid(), os.getgid(), os.getegid()], "groups": os.getgroups(),
    "umask": os.umask(0o77), "limits": limits,
    "caps": {k: v.strip() for k, v in status.items() if k[:3] == "Cap" or k in ("NoNewPrivs", "Seccomp")},
    "session_leader": os.getsid(0) == os.getpid(), "pgrp_leader": os.getpgrp() == os.getpid(),
    "stdio": [sys.stdout.encoding, sys.stdout.errors, sys.stdout.line_buffering, sys.stdout.write_through,
              sys.stderr.errors, os.path.realpath("/proc/self/fd/0")],
    "signals": {s: repr(signal.getsignal(getattr(signal, s))) for s in ("SIGINT", "SIGPIPE", "SIGCHLD")},
    "hostname": socket.gethostname(), "interfaces": sorted(i[1] for i in socket.if_nameindex()),
    "mounts": mounts, "userns": userns, "main_keys": sorted(k for k in globals() if k.startswith("__")),
    "excepthook": sys.excepthook is sys.__excepthook__, "executable": sys.executable,
    "user_site": [site.USER_BASE, site.USER_SITE, site.ENABLE_USER_SITE],
}))
"""


def normalise(text: str, *task_hashes: str) -> str:
    for task_hash in task_hashes:
        text = text.replace(task_hash, "TASK")
    return re.sub(r"\b2\d{5}\b", "0", text)  # each task has its own uid from the sandbox range


@pytest.fixture
def boxes(tmp_base_dir: str):
    """The same environment twice: warm starts on (the default) and off."""
    warm_config = SandboxConfig(base_sandbox_dir=tmp_base_dir)
    cold_config = SandboxConfig(base_sandbox_dir=tmp_base_dir, warm_start=False)
    with Sandbox(warm_config) as warm, Sandbox(cold_config) as cold:
        yield warm, cold


def both(boxes, code: str, **kwargs):
    warm, cold = boxes
    w, c = warm.execute_code(code, **kwargs), cold.execute_code(code, **kwargs)
    return w, c


def test_warm_start_is_used_and_the_program_sees_what_a_cold_start_sees(boxes) -> None:
    warm, cold = both(boxes, PROBE)
    assert warm.success and cold.success, (warm, cold)
    w = json.loads(normalise(warm.stdout, warm.task_hash))
    c = json.loads(normalise(cold.stdout, cold.task_hash))
    assert w == c
    assert w["userns"] == -1, "a run must not be able to create user namespaces"
    assert all(int(w["caps"][k], 16) == 0 for k in ("CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb"))
    assert w["caps"]["NoNewPrivs"] == "1"
    # The documented difference, which also proves the warm path ran: the parent is not bubblewrap's pid 1.
    ppid = "import os; print(os.getppid())"
    assert both(boxes, ppid)[0].stdout != "1\n"
    assert both(boxes, ppid)[1].stdout == "1\n"
    assert warm.limits_enforced == cold.limits_enforced and warm.isolation == cold.isolation == "bwrap"


@pytest.mark.parametrize(
    ("code", "return_code"),
    [
        ("import sys; sys.exit(3)", 3),
        ("import sys; sys.exit('bye now')", 1),
        ("import sys; sys.exit(None)", 0),
        ("import sys; sys.exit(256 + 7)", 7),
        ("def f():\n    raise ValueError('x' * 3)\nf()", 1),
        ("def (:\n    pass", 1),
        ("raise KeyboardInterrupt", -2),
        ("import os; os._exit(9)", 9),
        ("import os, signal; os.kill(os.getpid(), signal.SIGTERM)", -15),
    ],
)
def test_endings_match_a_cold_start(boxes, code: str, return_code: int) -> None:
    warm, cold = both(boxes, code)
    assert warm.return_code == return_code, warm
    assert normalise(warm.stderr, warm.task_hash) == normalise(cold.stderr, cold.task_hash)
    assert warm.stdout == cold.stdout
    if return_code >= 0:
        assert cold.return_code == return_code, cold
        assert warm.termination_reason == cold.termination_reason
    else:
        # The warm start sees the program's own wait status. A cold start through bubblewrap sees 128 + N,
        # which a program could also exit with: it reports that status and says what it may mean.
        assert warm.termination_reason == "signal" and warm.signal == -return_code, warm
        assert cold.return_code == 128 - return_code and cold.termination_reason == "exited", cold
        assert "nothing confirms a signal" in (cold.error_message or ""), cold


def test_the_interpreter_shutdown_still_happens(boxes) -> None:
    code = """
import atexit, threading, time
f = open("unclosed.txt", "w")
f.write("kept")  # never flushed nor closed by the program
class Noisy:
    def __del__(self):
        print("finalized")
noisy = Noisy()
atexit.register(lambda: print("atexit ran"))
def late():
    time.sleep(0.2)
    print("thread done")
threading.Thread(target=late).start()
print("main done")
"""
    for result in both(boxes, code):
        assert result.success, result
        assert result.stdout == "main done\nthread done\natexit ran\nfinalized\n", result
    warm, _ = boxes
    assert warm.get_task_files(both(boxes, code)[0].task_hash, "unclosed.txt") == "kept"


def test_startup_sensitive_environment_starts_cold(boxes) -> None:
    warm, _ = boxes
    code = "import os, sys; print(sys.flags.hash_randomization, sys.path[1], os.getppid())"
    result = warm.execute_code(code, env_vars={"PYTHONHASHSEED": "0", "PYTHONPATH": "/opt/extra"})
    assert result.stdout == "0 /opt/extra 1\n", result


def test_a_session_keeps_its_files_and_user_site(boxes) -> None:
    warm, _ = boxes
    assert warm.execute_code("open('a.txt', 'w').write('1')", session_id="warm-s").success
    result = warm.execute_code(
        "import os; print(open('a.txt').read(), os.getppid() != 1)", session_id="warm-s"
    )
    assert result.stdout == "1 True\n", result
    # A user site directory is read at start-up: with one in the session, runs start cold and see it.
    site = (
        "import os, site; os.makedirs(site.getusersitepackages());"
        "open(site.getusersitepackages() + '/m.py', 'w').write('x = 5')"
    )
    assert warm.execute_code(site, session_id="warm-s").success
    result = warm.execute_code("import m, os; print(m.x, os.getppid())", session_id="warm-s")
    assert result.stdout == "5 1\n", result


def test_timeout_and_a_killed_zygote(boxes) -> None:
    warm, _ = boxes
    code = "import os\nopen('uid', 'w').write(str(os.getuid()))\nos.fork()\nwhile True: pass"
    result = warm.execute_code(code, timeout=1)
    assert result.termination_reason == "timeout" and result.return_code == -9, result
    assert 0.9 < result.execution_time < 3
    uid = warm.get_task_files(result.task_hash, "uid")
    # Nothing of the run is left running: not the program, its child, the placeholder nor bubblewrap (a
    # zombie waiting for the machine's init to reap it runs nothing).
    ps = ["ps", "-o", "pid=,stat=,comm=", "-u", uid]
    listed = subprocess.run(ps, capture_output=True, text=True).stdout
    left = [line for line in listed.splitlines() if line.split()[1][0] != "Z"]
    assert left == [], (listed, result)
    for zyg in list(runner._ZYGOTES.values()):
        os.kill(zyg.proc.pid, signal.SIGKILL)
        zyg.proc.wait()
    result = warm.execute_code("import os; print('back', os.getppid() != 1)")
    assert result.stdout == "back True\n", result


def test_the_zygote_shows_a_short_readable_command_line(boxes) -> None:
    warm, _cold = boxes
    assert warm.execute_code("print(1)").stdout == "1\n"
    for zyg in runner._ZYGOTES.values():
        with open(f"/proc/{zyg.proc.pid}/cmdline", "rb") as fh:
            cmdline = fh.read().rstrip(b"\0").split(b"\0")
        assert len(b" ".join(cmdline)) < 400, cmdline  # not the 20 KB of its source
        assert cmdline[-2].endswith(b"/ec2_sandbox/zygote.py"), cmdline


def test_other_runtimes_start_from_the_zygote_with_their_real_status(boxes) -> None:
    warm, cold = boxes
    code = "echo $0 $$; kill -TERM $$"
    started = warm.execute_code(code, "bash")
    # The zygote's program process executes bash: its parent sees the signal itself.
    assert started.termination_reason == "signal" and started.return_code == -15, started
    assert started.stdout.startswith("/") and "main.sh" in started.stdout, started
    # A cold start through bubblewrap sees 128 + 15, which a program could also exit with.
    plain = cold.execute_code(code, "bash")
    assert plain.termination_reason == "exited" and plain.return_code == 143, plain


def test_an_unprivileged_runner_starts_warm_too(tmp_base_dir: str) -> None:
    """The runner as an ordinary user: the sandbox's user namespace is its own, joined as its owner.

    A fresh system python3 as uid 65534 runs copies of the runner and the zygote (both stdlib-only).
    """
    if os.geteuid() != 0:
        pytest.skip("needs root to become another user for the test")
    package = os.path.join(tmp_base_dir, "pkg")
    os.mkdir(package, 0o755)
    for module in (runner, zygote):
        shutil.copy(module.__file__, package)
        os.chmod(os.path.join(package, os.path.basename(module.__file__)), 0o644)
    base = os.path.join(tmp_base_dir, "unprivileged")
    os.mkdir(base, 0o700)
    os.chown(base, 65534, 65534)
    request = protocol.request(
        "run",
        base,
        task_hash="ab" * 16,
        runtime=BUILTIN_RUNTIMES[0].to_runner(),
        code_b64=protocol.b64(b"import os; print(os.getuid(), os.getppid() != 1)"),
        limits={"memory_mb": 256, "file_size_mb": 10, "open_files": 64, "processes": 32, "cpu_seconds": 10},
        timeout=10,
        warm=True,
    )
    script = f"""
import importlib.util, json, sys, types
package = types.ModuleType("warmpkg")
package.__path__ = [{package!r}]
sys.modules["warmpkg"] = package
spec = importlib.util.spec_from_file_location("warmpkg.runner", {package!r} + "/runner.py")
runner = importlib.util.module_from_spec(spec)
sys.modules["warmpkg.runner"] = runner
spec.loader.exec_module(runner)
print(json.dumps(runner.handle(json.loads(sys.stdin.read()))))
"""
    python = shutil.which("python3", path=runner.SYSTEM_PATH)
    proc = subprocess.run(
        [python, "-c", script],
        input=json.dumps(request),
        capture_output=True,
        text=True,
        timeout=60,
        user=65534,
        group=65534,
        extra_groups=[],
        cwd="/",
    )
    envelope = json.loads(proc.stdout)
    result = envelope["result"]
    assert result["stdout"]["text"] == "65534 True\n", envelope
    assert result["isolation"] == "bwrap"


def test_a_replaced_zygote_lets_its_runs_finish(boxes) -> None:
    """A new interpreter (an upgrade in place) gets a new zygote; runs on the old one still end normally."""
    warm, _ = boxes
    assert warm.execute_code("print(1)").success
    (old,) = [z for z in runner._ZYGOTES.values() if z.alive()]
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        slow = pool.submit(
            warm.execute_code, "import time, os; time.sleep(1); print('done', os.getppid() != 1)"
        )
        time.sleep(0.4)  # the slow run is in flight on the old zygote
        old.version = (0, 0, 0)  # as if python3 had been replaced on disk
        assert warm.execute_code("import os; print(os.getppid() != 1)").stdout == "True\n"
        (new,) = runner._ZYGOTES.values()
        assert new is not old and old.alive()
        result = slow.result()
    assert result.success and result.stdout == "done True\n", result
    old.proc.wait(timeout=5)  # retired, and gone once its last run was over
