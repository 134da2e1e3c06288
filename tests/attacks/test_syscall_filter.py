"""The syscall filter: each refused family fails inside a run with its errno, warm and cold, and works
without the filter (the positive control); ordinary programs in every runtime keep working behind it."""

from __future__ import annotations

import os
import platform
import shutil
import subprocess

import pytest

from ec2_sandbox import SandboxConfig, runner
from ec2_sandbox.runtimes import BUILTIN_RUNTIMES, Runtime

from .conftest import Box, needs_node

X86_64 = platform.machine() == "x86_64"
RESOLVER = shutil.which("scmp_sys_resolver")

# Each probe prints the name of the errno the call failed with, or "ok".
PROBE = """
import ctypes, errno, os, socket, mmap
libc = ctypes.CDLL(None, use_errno=True)
def call(name, *args):
    nr = NUMBERS[name]
    r = libc.syscall(nr, *args)
    return "ok" if r >= 0 else errno.errorcode[ctypes.get_errno()]
buf = ctypes.create_string_buffer(256)
results = {
    "io_uring_setup": call("io_uring_setup", 1, buf),
    "keyctl": call("keyctl", 0, 0),            # KEYCTL_GET_KEYRING_ID of the thread keyring
    "add_key": call("add_key", b"user", b"k", b"v", 1, -3),
    "bpf": call("bpf", 0, 0, 0),
    "perf_event_open": call("perf_event_open", buf, 0, -1, -1, 0),
    "userfaultfd": call("userfaultfd", 0),
    "ptrace": call("ptrace", 0, 0, 0, 0),       # PTRACE_TRACEME
    "process_vm_readv": call("process_vm_readv", os.getpid(), 0, 0, 0, 0, 0),
    "kcmp": call("kcmp", os.getpid(), os.getpid(), 0, 0, 0),
    "name_to_handle_at": call("name_to_handle_at", -100, b".", buf, buf, 0),
    "mount": call("mount", b"none", b"/tmp", b"tmpfs", 0, 0),
    "setns": call("setns", 0, 0),
    "unshare": call("unshare", 0x10000000),     # CLONE_NEWUSER
    "personality": call("personality", 0x0040000),  # READ_IMPLIES_EXEC
    "memfd_create": call("memfd_create", b"x", 0),
    "clone3": call("clone3", 0, 0),
    "syslog": call("syslog", 10, 0, 0),        # SYSLOG_ACTION_SIZE_BUFFER
}
for family in (17, 15, 40):                     # AF_PACKET, AF_KEY, AF_VSOCK
    try:
        socket.socket(family, socket.SOCK_RAW if family == 17 else socket.SOCK_DGRAM, 0).close()
        results["socket:%d" % family] = "ok"
    except OSError as exc:
        results["socket:%d" % family] = errno.errorcode[exc.errno]
try:
    mmap.mmap(-1, 1 << 20)
    results["mmap:shared-anonymous"] = "ok"
except OSError as exc:
    results["mmap:shared-anonymous"] = errno.errorcode[exc.errno]
for name, value in sorted(results.items()):
    print(name, value)
"""

REFUSED = {
    "io_uring_setup": "ENOSYS",
    "keyctl": "EPERM",
    "add_key": "EPERM",
    "bpf": "EPERM",
    "perf_event_open": "EPERM",
    "userfaultfd": "EPERM",
    "ptrace": "EPERM",
    "process_vm_readv": "EPERM",
    "kcmp": "EPERM",
    "name_to_handle_at": "EPERM",
    "mount": "EPERM",
    "setns": "EPERM",
    "unshare": "EPERM",
    "personality": "EPERM",
    "memfd_create": "ENOSYS",
    "clone3": "ENOSYS",
    "syslog": "EPERM",
    "socket:17": "EAFNOSUPPORT",
    "socket:15": "EAFNOSUPPORT",
    "socket:40": "EAFNOSUPPORT",
    "mmap:shared-anonymous": "EPERM",
}


def probe_code() -> str:
    column = 0 if X86_64 else 1
    numbers = {name: nrs[column] for name, nrs in runner.SYSCALLS.items()}
    return f"NUMBERS = {numbers!r}\n" + PROBE


def parse(stdout: str) -> dict[str, str]:
    return dict(line.split() for line in stdout.splitlines())


@pytest.mark.parametrize("warm", [True, False], ids=["warm", "cold"])
async def test_each_refused_family_fails_with_its_errno(box: Box, warm: bool) -> None:
    filtered = box.with_config(warm_start=warm)
    result = await filtered.run(probe_code())
    assert result.success, result
    assert "seccomp:default" in result.limits_enforced
    assert parse(result.stdout) == REFUSED
    # Positive control: without the filter, none of them fails with the filter's answer (each either works
    # or is refused by the kernel for its own reason, which differs from the filter's).
    open_kernel = box.with_config(warm_start=warm, syscall_filter="none")
    unfiltered = await open_kernel.run(probe_code())
    assert unfiltered.success, unfiltered
    assert "seccomp:default" not in unfiltered.limits_enforced
    seen = parse(unfiltered.stdout)
    for name in ("io_uring_setup", "add_key", "personality", "memfd_create", "mmap:shared-anonymous"):
        assert seen[name] == "ok", (name, seen)
    for name in ("keyctl", "bpf", "unshare", "clone3"):
        assert seen[name] != REFUSED[name], (name, seen)
    await box.assert_recovers()


async def test_shell_tools_are_refused_too(box: Box) -> None:
    result = await box.run("unshare --user true; echo unshare=$?; echo done", "bash")
    assert result.success and "unshare=1" in result.stdout and "done" in result.stdout, result
    assert "Operation not permitted" in result.stderr


@pytest.mark.skipif(not X86_64, reason="32-bit compat calls exist on x86_64 only")
async def test_32_bit_and_x32_calls_are_refused(box: Box, tmp_path) -> None:
    if shutil.which("gcc") is None:
        pytest.skip("gcc is not installed (apt-get install gcc)")
    source = tmp_path / "int80.c"
    # getpid through the 32-bit entry (int $0x80, call 20) and through the x32 ABI (bit 30 set on 39).
    source.write_text(
        "#include <stdio.h>\n#include <unistd.h>\n#include <sys/syscall.h>\n"
        "int main(void) { long r;\n"
        '  __asm__ volatile("int $0x80" : "=a"(r) : "a"(20L) : "memory");\n'
        '  printf("compat %ld\\n", r);\n'
        '  printf("x32 %ld\\n", syscall(0x40000000L | 39));\n  return 0; }\n'
    )
    binary = tmp_path / "int80"
    subprocess.run(["gcc", "-O1", "-static", "-o", str(binary), str(source)], check=True)
    program = binary.read_bytes()
    code = "chmod +x ./int80 && ./int80"
    result = await box.run(code, "bash", files={"int80": program})
    assert result.success, result
    assert "compat -38\n" in result.stdout, result  # -ENOSYS
    assert "x32 -1\n" in result.stdout, result
    # Positive control: the kernel takes 32-bit calls from this very program when nothing filters them.
    open_kernel = await box.with_config(syscall_filter="none").run(code, "bash", files={"int80": program})
    compat = int(open_kernel.stdout.split("compat ", 1)[1].split()[0])
    assert compat > 0, open_kernel


async def test_python_keeps_working_behind_the_filter(box: Box) -> None:
    code = """
import multiprocessing, subprocess, threading, socket, sqlite3, tempfile, asyncio
t = threading.Thread(target=print, args=("thread",)); t.start(); t.join()
print(subprocess.run(["sh", "-c", "echo child"], capture_output=True, text=True).stdout.strip())
with multiprocessing.Pool(2) as pool:
    print("pool", sum(pool.map(abs, range(-5, 5))))
a, b = socket.socketpair(); a.sendall(b"pair"); print(b.recv(4).decode())
db = sqlite3.connect(":memory:"); print("sqlite", db.execute("select 6*7").fetchone()[0])
with tempfile.TemporaryFile() as fh: fh.write(b"x"); print("tmp ok")
print(asyncio.run(asyncio.sleep(0, "asyncio")))
"""
    result = await box.run(code)
    assert result.success, result
    assert result.stdout.split("\n")[:-1] == [
        "thread",
        "child",
        "pool 25",
        "pair",
        "sqlite 42",
        "tmp ok",
        "asyncio",
    ]


@needs_node
async def test_node_keeps_working_behind_the_filter(box: Box) -> None:
    code = """
const fs = require('fs'), cp = require('child_process'), { Worker } = require('worker_threads');
fs.writeFileSync('n.txt', 'node fs');
fs.readFile('n.txt', 'utf8', (err, text) => {
  if (err) throw err;
  console.log(text);
  console.log(cp.execFileSync('sh', ['-c', 'echo child']).toString().trim());
  const w = new Worker("require('worker_threads').parentPort.postMessage(6 * 7)", { eval: true });
  w.on('message', (m) => { console.log('worker', m); });
});
"""
    result = await box.run(code, "node", timeout=20)
    assert result.success, result
    assert result.stdout == "node fs\nchild\nworker 42\n", result


def test_a_runtime_may_allow_what_it_needs(base_dir: str) -> None:
    python = BUILTIN_RUNTIMES[0].model_dump()
    with pytest.raises(ValueError, match="does not refuse: execve"):
        Runtime.model_validate({**python, "syscalls_allowed": ["execve"]})
    allowed = runner.seccomp_program(allowed=("memfd_create",))
    assert allowed is not None and len(allowed) < len(runner.seccomp_program())
    with pytest.raises(ValueError, match="syscall_filter"):
        SandboxConfig(syscall_filter="strict")


async def test_a_runtime_that_allows_memfd_gets_it(box: Box) -> None:
    memfd_python = box.sb.runtime("python3").model_copy(
        update={"name": "python-memfd", "syscalls_allowed": ["memfd_create"]}
    )
    box.sb.registry.runtimes["python-memfd"] = memfd_python
    try:
        result = await box.run("import os\nos.memfd_create('x')\nprint('memfd')", "python-memfd")
        assert result.success and result.stdout == "memfd\n", result
        refused = await box.run("import os\nos.memfd_create('x')\nprint('memfd')")
        assert not refused.success and "OSError" in refused.stderr
    finally:
        del box.sb.registry.runtimes["python-memfd"]


@pytest.mark.skipif(RESOLVER is None, reason="scmp_sys_resolver is not installed (apt-get install seccomp)")
@pytest.mark.parametrize(("arch", "column"), [("x86_64", 0), ("aarch64", 1)])
def test_syscall_tables_match_libseccomp(arch: str, column: int) -> None:
    for name, numbers in runner.SYSCALLS.items():
        out = subprocess.run([RESOLVER, "-a", arch, name], capture_output=True, text=True, check=True)
        theirs = int(out.stdout.strip())
        assert numbers[column] == (theirs if theirs >= 0 else None), (arch, name, theirs)


def test_the_program_checks_the_architecture_first() -> None:
    for machine, (_column, audit_arch) in runner.SECCOMP_ARCHES.items():
        program = runner.seccomp_program(machine)
        assert program is not None and len(program) % 8 == 0
        first, second = program[:8], program[8:16]
        assert first == runner._ins(runner._BPF_LD_W_ABS, 4)  # seccomp_data.arch
        assert second == runner._ins(runner._BPF_JEQ, audit_arch, 1, 0)
    assert runner.seccomp_program("riscv64") is None
    assert os.uname().machine not in runner.SECCOMP_ARCHES or runner.seccomp_usable()
