"""Attacks on files: links out of the work dir, other sessions' files, the runner's records, hostile names."""

from __future__ import annotations

import json
import os
import shutil
import tempfile

import pytest

from ec2_sandbox import protocol, runner
from ec2_sandbox.errors import InvalidInputError, TransportError

from .conftest import Box


async def test_symlink_to_etc_shadow_read_back(box: Box) -> None:
    code = "import os\nos.symlink('/etc/shadow', 'shadow')\nos.symlink('/etc', 'etc')\nprint('planted')"
    result = await box.run(code)
    assert result.success, result
    for name in ("shadow", "etc/shadow"):
        with pytest.raises((TransportError, InvalidInputError), match="symlink"):
            await box.sb.get_task_files(result.task_hash, name)
    assert await box.sb.get_task_files(result.task_hash) == {}
    page = await box.sb.get_files_for_model(result.task_hash)
    assert page.files == []
    assert {s.path: s.reason for s in page.skipped} == {
        "shadow": "symlink (never followed)",
        "etc": "symlink (never followed)",
    }
    await box.assert_recovers()


async def test_symlink_to_other_session_file_read_back(box: Box) -> None:
    victim = await box.run("open('secret.txt', 'w').write('victim secret')", session="victim-" + box.marker)
    assert victim.success, victim
    target = os.path.join(victim.working_directory, "secret.txt")
    code = f"import os\nos.symlink({target!r}, 'steal')\nos.symlink({victim.working_directory!r}, 'vdir')"
    result = await box.run(code)
    assert result.success, result
    for name in ("steal", "vdir/secret.txt"):
        with pytest.raises((TransportError, InvalidInputError), match="symlink"):
            await box.sb.get_task_files(result.task_hash, name)
    assert await box.sb.get_task_files(result.task_hash) == {}
    await box.assert_recovers()


async def test_hardlink_to_foreign_file_read_back(box: Box) -> None:
    # The program tries to link files it cannot read into its work dir (the kernel refuses: protected
    # hard links, other file systems). Where a link does get there, the runner must still refuse to read it.
    code = """
import os
for src in ("/etc/shadow", "/etc/passwd"):
    try:
        os.link(src, os.path.basename(src))
        print("linked", src)
    except OSError as exc:
        print("refused", src, exc.errno)
"""
    result = await box.run(code)
    assert result.success, result
    assert "linked /etc/shadow" not in result.stdout
    secret = os.path.join(box.base, "root-secret-" + box.marker)
    with open(secret, "w") as fh:
        fh.write("root only")
    os.chmod(secret, 0o600)
    os.link(secret, os.path.join(result.working_directory, "loot"))
    with pytest.raises(TransportError, match="hard link"):
        await box.sb.get_task_files(result.task_hash, "loot")
    listing = await box.sb.list_task_files(result.task_hash)
    assert "loot" not in [f["path"] for f in listing["files"]]
    assert {"path": "loot", "reason": "hard link to a file the task does not own"} in listing["skipped"]
    await box.assert_recovers()


async def test_symlink_planted_where_the_next_input_goes(box: Box) -> None:
    # The next run's input files must replace a planted link, never write through it.
    outside = os.path.join(box.base, "outside-" + box.marker)
    with open(outside, "w") as fh:
        fh.write("untouched")
    code = f"import os\nos.symlink({outside!r}, 'in.txt')\nos.symlink({box.base!r}, 'data')"
    assert (await box.run(code)).success
    result = await box.run("print(open('in.txt').read())", files={"in.txt": "fresh input"})
    assert result.success and result.stdout == "fresh input\n", result
    with pytest.raises(InvalidInputError, match="symlink"):
        await box.run("print(1)", files={"data/x.txt": "through the link"})
    with open(outside) as fh:
        assert fh.read() == "untouched"
    assert not os.path.exists(os.path.join(box.base, "x.txt"))
    await box.assert_recovers()


async def test_read_other_session_files(box: Box) -> None:
    victim = await box.run("open('secret.txt', 'w').write('victim secret')", session="victim-" + box.marker)
    assert victim.success
    sessions = os.path.dirname(victim.working_directory)
    code = f"""
import os
for action, arg in (("read", {os.path.join(victim.working_directory, "secret.txt")!r}),
                    ("list", {victim.working_directory!r}), ("list", {sessions!r}),
                    ("list", {os.path.join(box.base, "tasks")!r})):
    try:
        print(action, arg, "OK", open(arg).read() if action == "read" else os.listdir(arg))
    except OSError as exc:
        print(action, arg, "denied", type(exc).__name__)
"""
    result = await box.run(code)
    assert result.success, result
    assert "victim secret" not in result.stdout
    assert "victim-" not in result.stdout.replace(victim.working_directory, "")
    if box.isolation == "none":
        assert result.stdout.count("denied") == 4, result.stdout
    else:
        # bubblewrap shows the path down to the run's own work dir, and nothing beside it.
        assert result.stdout.count("denied") == 3, result.stdout
        assert f"list {sessions} OK {[box.session]!r}" in result.stdout
    await box.assert_recovers()


async def test_read_runner_records(box: Box) -> None:
    first = await box.run("print('my output')")
    runs = os.path.join(box.base, "runs")
    code = f"""
import glob, os
targets = [{os.path.join(runs, "uids.json")!r}, {os.path.join(runs, first.task_hash, "meta.json")!r},
           {os.path.join(runs, first.task_hash, "stdout")!r}]
for path in targets:
    try:
        open(path).read()
        print("READ", path)
    except OSError as exc:
        print("denied", type(exc).__name__)
try:
    print("LISTED", os.listdir({runs!r}))
except OSError as exc:
    print("denied", type(exc).__name__)
"""
    result = await box.run(code)
    assert result.success, result
    assert "READ" not in result.stdout, result.stdout
    if box.isolation == "none":
        assert result.stdout.count("denied") == 4, result.stdout
    else:
        # Under bubblewrap only the run's own program is bound in: the listing shows that record alone.
        assert result.stdout.count("denied") == 3, result.stdout
        assert f"LISTED {[result.task_hash]!r}" in result.stdout
    await box.assert_recovers()


async def test_write_outside_work_dir(box: Box) -> None:
    tag = box.marker
    targets = [
        f"/etc/{tag}",
        f"/usr/{tag}",
        f"/usr/bin/{tag}",
        f"/root/{tag}",
        f"/var/lib/{tag}",
        f"/{tag}",
        os.path.join(box.base, tag),
        os.path.join(box.base, "runs", tag),
        os.path.join(box.base, "sessions", tag),
        "/proc/sysrq-trigger",
        "/proc/sys/kernel/hostname",
    ]
    code = f"""
import os, sys
for path in {targets!r}:
    try:
        with open(path, "w") as fh:
            fh.write("x")
        print("WROTE", path)
    except OSError as exc:
        print("denied", path, type(exc).__name__)
try:
    with open(sys.argv[0], "a") as fh:  # the program file itself
        fh.write("#")
    print("WROTE program")
except OSError:
    print("denied program")
with open("/tmp/{tag}", "w") as fh:
    fh.write("scratch")
print("tmp ok")
"""
    result = await box.run(code)
    assert result.success, result
    wrote = [line.split(" ", 1)[1] for line in result.stdout.splitlines() if line.startswith("WROTE")]
    if box.isolation == "bwrap":
        # Under bubblewrap all of /tmp is private: paths there (this test's base dir is under /tmp) land
        # in the run's own tmpfs, which vanishes with it. Nothing else is writable.
        assert all(path.startswith("/tmp/") for path in wrote), result.stdout
    else:
        assert wrote == [], result.stdout
    assert "denied program" in result.stdout
    for path in targets[:-2]:
        assert not os.path.exists(path), path
    if box.isolation == "bwrap":
        # bubblewrap's /tmp is private to the run: nothing lands in the host's /tmp.
        assert not os.path.exists(f"/tmp/{tag}")
    else:
        # Without namespaces the world-writable /tmp is shared (documented); the file is the sandbox uid's.
        st = os.stat(f"/tmp/{tag}")
        assert st.st_uid in box.uids()
        os.unlink(f"/tmp/{tag}")
    await box.assert_recovers()


async def test_chmod_work_dir_away(box: Box) -> None:
    result = await box.run(
        "import os\nos.makedirs('sub')\nopen('sub/f', 'w').write('x')\nos.chmod('sub', 0)\nos.chmod('.', 0)"
    )
    assert result.success, result
    # The runner restores the work dir's mode before the next run; it can still read the locked subdir.
    assert await box.sb.get_task_files(result.task_hash, "sub/f") == "x"
    await box.assert_recovers()


async def test_read_raw_devices(box: Box) -> None:
    code = """
for path in ("/dev/mem", "/dev/kmem", "/dev/port", "/dev/kmsg", "/dev/vda", "/dev/sda", "/dev/nvme0n1"):
    try:
        open(path, "rb").read(1)
        print("READ", path)
    except OSError as exc:
        print("denied", path, type(exc).__name__)
"""
    result = await box.run(code)
    assert result.success, result
    assert "READ" not in result.stdout, result.stdout
    await box.assert_recovers()


BAD_FILENAMES = {
    "dotdot": ["../escape.txt", "a/../../escape.txt", "..", "a/.."],
    "absolute": ["/tmp/abs-escape.txt", "/etc/passwd", "//double"],
    "nul": ["a\x00b", "\x00", "ok.txt\x00../../x"],
    "4kb": ["a" * 4096, "d/" * 2048 + "f", "b" * 256],
    "dot_components": [".", "./a", "a/./b", "a//b", "", "a/"],
}


async def _assert_filenames_refused(box: Box, names: list[str]) -> None:
    for name in names:
        with pytest.raises(InvalidInputError):
            await box.run("print(1)", files={name: "x"})
        # The runner refuses on its own too: a hostile client may skip the client-side checks.
        envelope = await box.raw_run(files=[{"path": name, "b64": protocol.b64(b"x")}])
        assert not envelope["ok"] and envelope["error"]["kind"] == "invalid_input", (name, envelope)
    assert not os.path.exists(os.path.join(box.base, "escape.txt"))
    assert not os.path.exists("/tmp/abs-escape.txt")
    await box.assert_recovers()


async def test_input_filename_dotdot(box: Box) -> None:
    await _assert_filenames_refused(box, BAD_FILENAMES["dotdot"])


async def test_input_filename_absolute(box: Box) -> None:
    await _assert_filenames_refused(box, BAD_FILENAMES["absolute"])


async def test_input_filename_nul(box: Box) -> None:
    await _assert_filenames_refused(box, BAD_FILENAMES["nul"])


async def test_input_filename_4kb(box: Box) -> None:
    await _assert_filenames_refused(box, BAD_FILENAMES["4kb"])


async def test_input_filename_dot_components(box: Box) -> None:
    await _assert_filenames_refused(box, BAD_FILENAMES["dot_components"])


async def test_input_filename_unicode(box: Box) -> None:
    files: dict[str, str | bytes] = {
        "données/été ☃.txt": "neige",
        "日本語.txt": "テキスト",
        "emoji-😀.txt": "smile",
        "rtl-\u202etxt.exe": "override",
        "-rf": "dash",
        "$(id).txt": "dollar",
        "a b;c|d&e.txt": "shell chars",
    }
    code = (
        "import os, json\n"
        "print(json.dumps(sorted(os.path.join(d, f)[2:] for d, _, fs in os.walk('.') for f in fs)))"
    )
    result = await box.run(code, files=files)
    assert result.success, result
    assert json.loads(result.stdout) == sorted(files)
    assert await box.sb.get_task_files(result.task_hash) == files
    # A lone surrogate stands for a byte that is not UTF-8 (surrogateescape): it round-trips as that byte.
    raw = await box.run("import os\nprint(os.listdir(b'.'))", files={"bad-\udcff.txt": "x"})
    assert raw.success and "b'bad-\\xff.txt'" in raw.stdout, raw
    assert await box.sb.get_task_files(raw.task_hash, "bad-\udcff.txt") == "x"
    await box.assert_recovers()


async def test_input_file_over_a_directory_the_program_made(box: Box) -> None:
    assert (await box.run("import os\nos.makedirs('in.txt/deeper')")).success
    with pytest.raises(InvalidInputError, match="in the way"):
        await box.run("print(1)", files={"in.txt": "x"})
    await box.assert_recovers()


async def test_get_task_files_with_hostile_names(box: Box) -> None:
    result = await box.run("open('ok.txt', 'w').write('fine')")
    for name in (
        "../../runs/uids.json",
        "/etc/shadow",
        "ok.txt\x00",
        "././ok.txt",
        "./../ok.txt",
        "a" * 4096,
    ):
        with pytest.raises(InvalidInputError):
            await box.sb.get_task_files(result.task_hash, name)
    for task_hash in ("../" + result.task_hash, "$(id)", result.task_hash.upper(), "0" * 11):
        with pytest.raises(InvalidInputError):
            await box.sb.get_task_files(task_hash, "ok.txt")
    assert await box.sb.get_task_files(result.task_hash, "ok.txt") == "fine"
    # './' only marks a work-dir path (as listings write one that starts with '@'): the same file.
    assert await box.sb.get_task_files(result.task_hash, "./ok.txt") == "fine"
    await box.assert_recovers()


async def test_same_session_name_in_another_base_dir(box: Box) -> None:
    # Two environments on one machine (two base dirs), one session name: never one uid for both.
    other_base = tempfile.mkdtemp(prefix="ec2sb-attack-other-", dir="/tmp")
    os.chmod(other_base, 0o711)
    try:
        other = Box(other_base, box.isolation)
        other.session = box.session
        victim = await other.run("open('secret.txt', 'w').write('other environment')")
        assert victim.success, victim
        target = os.path.join(victim.working_directory, "secret.txt")
        code = f"import os\nprint(os.getuid())\ntry:\n    print(open({target!r}).read())\n"
        code += "except OSError as exc:\n    print('denied', type(exc).__name__)"
        result = await box.run(code)
        assert result.success, result
        uid, outcome = result.stdout.splitlines()
        assert outcome.startswith("denied"), result.stdout
        assert int(uid) in box.uids() and not box.uids() & other.uids()
        await other.sb.aclose()
    finally:
        for uid in Box(other_base, box.isolation).uids():
            runner.kill_uid(uid)
        shutil.rmtree(other_base, ignore_errors=True)
    await box.assert_recovers()


async def test_read_other_session_files_left_in_shared_tmp(box: Box) -> None:
    # Without bubblewrap /tmp is the host's: the umask keeps what one session leaves there from the others.
    path = f"/tmp/left-behind-{box.marker}"
    victim = await box.run(f"open({path!r}, 'w').write('victim tmp secret')", session="victim-" + box.marker)
    assert victim.success, victim
    code = f"try:\n    print(open({path!r}).read())\n"
    code += "except OSError as exc:\n    print('denied', type(exc).__name__)"
    result = await box.run(code)
    assert result.success, result
    assert "victim tmp secret" not in result.stdout
    expected = "denied FileNotFoundError" if box.isolation == "bwrap" else "denied PermissionError"
    assert result.stdout.strip() == expected
    if os.path.exists(path):
        assert os.stat(path).st_mode & 0o077 == 0
        os.unlink(path)
    await box.assert_recovers()
