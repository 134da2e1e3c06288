"""The instance setup script (provisioning/user-data.sh) run for real against a scratch root directory.

With SANDBOX_ROOT set it writes every file below that directory and records - instead of running - package
installs, systemctl, apparmor_parser and iptables; so these tests check the files, modes, units and firewall
rules it would leave on an instance, without touching this machine's /etc. The cleanup script it installs is
run for real against a base dir the runner filled.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from support.ages import age, age_task

from ec2_sandbox import protocol, runner
from ec2_sandbox.cleanup import AgePolicy, Inventory
from ec2_sandbox.cli_prepare import build_commands, parse_steps, setup_script
from ec2_sandbox.config import SandboxConfig
from ec2_sandbox.sandbox import Sandbox

ROOT = Path(__file__).resolve().parent.parent
USER_DATA = ROOT / "provisioning" / "user-data.sh"
FIRST, COUNT = runner.SANDBOX_UID_RANGE
UID_RANGE = f"{FIRST}-{FIRST + COUNT - 1}"


def run_setup(root: Path, **env: str) -> subprocess.CompletedProcess[str]:
    full_env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "SANDBOX_ROOT": str(root), **env}
    return subprocess.run(["bash", str(USER_DATA)], env=full_env, capture_output=True, text=True, timeout=60)


def steps(proc: subprocess.CompletedProcess[str]) -> dict[str, str]:
    return {s.step: s.status for s in parse_steps(proc.stdout)}


def recorded(root: Path) -> list[str]:
    path = root / ".system-commands"
    return path.read_text().splitlines() if path.exists() else []


def fake_tool(root: Path, name: str) -> None:
    path = root / "usr" / "bin" / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("#!/bin/sh\n")
    path.chmod(0o755)


@pytest.fixture
def namespaces() -> None:
    """Skip unless this machine can give a test network and mount namespaces of its own, with iptables."""
    if os.geteuid() != 0:
        pytest.skip("needs root to create namespaces and use iptables")
    missing = [t for t in ("iptables", "ip6tables", "unshare") if shutil.which(t) is None]
    if missing:
        pytest.skip(f"needs {', '.join(missing)} (apt-get install iptables util-linux)")


def in_private_namespaces(
    script: str, *, timeout: int = 60, path_first: Path | None = None, **env: str
) -> subprocess.CompletedProcess[str]:
    """Run a bash script in a fresh network namespace and a private mount namespace: its iptables
    rules and mounts vanish with it. ``path_first`` puts stand-in tools ahead of the system's."""
    path = "/usr/sbin:/usr/bin:/sbin:/bin"
    return subprocess.run(
        ["unshare", "--net", "--mount", "--propagation", "private", "bash", "-c", script],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={"PATH": f"{path_first}:{path}" if path_first else path, **env},
    )


@pytest.fixture
def ubuntu(tmp_path: Path) -> Path:
    """A scratch root like a fresh Ubuntu 24.04: apt, AppArmor 4, the ubuntu user and its subids."""
    root = tmp_path / "root"
    fake_tool(root, "apt-get")
    (root / "etc" / "apparmor.d" / "abi").mkdir(parents=True)
    (root / "etc" / "apparmor.d" / "abi" / "4.0").write_text("")
    (root / "etc" / "passwd").write_text(
        "root:x:0:0::/root:/bin/bash\nubuntu:x:1000:1000::/home/ubuntu:/bin/bash\n"
    )
    (root / "etc" / "group").write_text("root:x:0:\nubuntu:x:1000:\n")
    (root / "etc" / "subuid").write_text("ubuntu:100000:65536\n")
    (root / "etc" / "subgid").write_text("ubuntu:100000:65536\n")
    return root


def test_scripts_are_shellcheck_clean(ubuntu: Path) -> None:
    shellcheck = shutil.which("shellcheck")
    if shellcheck is None:
        pytest.skip("shellcheck is not installed (apt-get install shellcheck)")
    assert run_setup(ubuntu).returncode == 0
    # The boot-time guard is written by the setup from a heredoc: check the installed file too.
    files = [ROOT / "create_ec2_sandbox.sh", USER_DATA, ubuntu / "usr/local/lib/ec2-sandbox/imds-guard"]
    proc = subprocess.run([shellcheck, *map(str, files)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout


def test_fresh_ubuntu_gets_everything(ubuntu: Path) -> None:
    proc = run_setup(ubuntu)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert steps(proc) == {
        "packages": "changed",
        "userns": "changed",
        "uid-range": "changed",
        "dirs": "changed",
        "firewall": "changed",
        "cleanup": "changed",
        "complete": "ok",
    }
    commands = recorded(ubuntu)
    install = next(c for c in commands if " install " in c)
    assert install.startswith("env DEBIAN_FRONTEND=noninteractive apt-get")
    assert install.split("--no-install-recommends ")[1].split() == [
        "python3",
        "nodejs",
        "bubblewrap",
        "ec2-instance-connect",
        "iptables",
    ]
    # The firewall: sandbox uids (exactly the runner's range) rejected on the way to both IMDS addresses,
    # inserted at the top of OUTPUT so no earlier ACCEPT can bypass it.
    assert (
        f"iptables -w -I OUTPUT -m owner --uid-owner {UID_RANGE} -d 169.254.169.254/32 -j REJECT" in commands
    )
    assert (
        f"ip6tables -w -I OUTPUT -m owner --uid-owner {UID_RANGE} -d fd00:ec2::254/128 -j REJECT" in commands
    )
    assert "systemctl enable ec2-sandbox-imds-guard.service" in commands
    assert "systemctl enable --now ec2-sandbox-cleanup.timer" in commands
    assert "apparmor_parser -r /etc/apparmor.d/ec2-sandbox-bwrap" in commands

    # The marker is where the runner looks for it.
    marker = runner.IMDS_MARKER
    assert marker == "/etc/ec2-sandbox/imds-blocked"
    assert (ubuntu / marker.lstrip("/")).read_text().startswith(f"uids {UID_RANGE}: REJECT")

    base = (ubuntu / "var/lib/ec2-sandbox").stat()
    assert oct(base.st_mode & 0o7777) == "0o711"
    if os.geteuid() == 0:
        assert (base.st_uid, base.st_gid) == (0, 0)
    for path, mode in (
        ("etc/ec2-sandbox", 0o755),
        ("usr/local/lib/ec2-sandbox", 0o755),
        ("usr/local/lib/ec2-sandbox/cleanup.py", 0o755),
        ("usr/local/lib/ec2-sandbox/imds-guard", 0o755),
        ("etc/systemd/system/ec2-sandbox-cleanup.service", 0o644),
        ("etc/systemd/system/ec2-sandbox-cleanup.timer", 0o644),
        ("etc/systemd/system/ec2-sandbox-imds-guard.service", 0o644),
        ("etc/ec2-sandbox/cleanup.conf", 0o644),
    ):
        assert (ubuntu / path).stat().st_mode & 0o7777 == mode, path

    # The uid range is reserved as subordinate ids, so useradd never hands it to a container user.
    for db in ("subuid", "subgid"):
        assert (ubuntu / "etc" / db).read_text().splitlines() == [
            "ubuntu:100000:65536",
            f"ec2-sandbox:{FIRST}:{COUNT}",
        ]

    service = (ubuntu / "etc/systemd/system/ec2-sandbox-cleanup.service").read_text()
    exec_start = re.search(r"^ExecStart=(.*)$", service, re.M).group(1)
    assert exec_start == (
        "/usr/bin/python3 /usr/local/lib/ec2-sandbox/cleanup.py --base-dir /var/lib/ec2-sandbox "
        "--hours ${CLEANUP_HOURS}"
    )
    assert "ReadWritePaths=/var/lib/ec2-sandbox" in service and "ProtectSystem=strict" in service
    assert "OnCalendar=hourly" in (ubuntu / "etc/systemd/system/ec2-sandbox-cleanup.timer").read_text()
    assert (ubuntu / "etc/ec2-sandbox/cleanup.conf").read_text().splitlines()[-1] == "CLEANUP_HOURS=24"
    guard_unit = (ubuntu / "etc/systemd/system/ec2-sandbox-imds-guard.service").read_text()
    assert "ExecStart=/usr/local/lib/ec2-sandbox/imds-guard" in guard_unit
    assert "Before=network-pre.target" in guard_unit
    profile = (ubuntu / "etc/apparmor.d/ec2-sandbox-bwrap").read_text()
    assert "profile ec2-sandbox-bwrap /usr/bin/bwrap" in profile and "userns," in profile


def test_units_pass_systemd_analyze(ubuntu: Path) -> None:
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze is not installed")
    assert run_setup(ubuntu).returncode == 0
    units = ubuntu / "etc/systemd/system"
    proc = subprocess.run(
        [analyze, "verify", "--man=no", *(str(p) for p in sorted(units.glob("ec2-sandbox-*")))],
        capture_output=True,
        text=True,
        env={**os.environ, "SYSTEMD_LOG_LEVEL": "warning"},
    )
    # The executables live under the scratch root, not on this machine: only those complaints are expected.
    problems = [
        line
        for line in (proc.stdout + proc.stderr).splitlines()
        if line.strip() and "/usr/local/lib/ec2-sandbox/" not in line and "Failed to" not in line
    ]
    assert problems == [], proc.stdout + proc.stderr


@pytest.mark.requires_root
def test_guard_puts_real_rules_in_place_in_a_private_network_namespace(
    namespaces: None, ubuntu: Path, tmp_path: Path
) -> None:
    """The boot-time guard, unmodified, against the real iptables - in a network and mount namespace of its
    own (its tables, and an overlay on /etc that catches the marker), so this machine is left alone."""
    assert run_setup(ubuntu).returncode == 0
    guard = ubuntu / "usr/local/lib/ec2-sandbox/imds-guard"
    upper, work = tmp_path / "upper", tmp_path / "work"
    upper.mkdir()
    work.mkdir()
    script = "\n".join(
        [
            "set -e",
            f'mount -t overlay overlay -o "lowerdir=/etc,upperdir={upper},workdir={work}" /etc',
            f'"{guard}"',
            f'"{guard}"',  # a second boot (or a rerun) adds nothing
            "echo ---",
            "iptables -w -S OUTPUT",
            "ip6tables -w -S OUTPUT",
        ]
    )
    proc = in_private_namespaces(script)
    assert proc.returncode == 0, proc.stderr
    rules = [line for line in proc.stdout.split("---", 1)[1].splitlines() if line.startswith("-A OUTPUT")]
    assert rules == [
        f"-A OUTPUT -d 169.254.169.254/32 -m owner --uid-owner {UID_RANGE} -j REJECT "
        "--reject-with icmp-port-unreachable",
        f"-A OUTPUT -d fd00:ec2::254/128 -m owner --uid-owner {UID_RANGE} -j REJECT "
        "--reject-with icmp6-port-unreachable",
    ]
    assert (upper / "ec2-sandbox" / "imds-blocked").read_text().startswith(f"uids {UID_RANGE}: REJECT")

    # When a rule cannot be put in place, the guard fails and takes the marker away: no false promise.
    broken = tmp_path / "broken-bin"
    broken.mkdir()
    (broken / "ip6tables").write_text("#!/bin/sh\necho 'ip6tables: cannot initialize' >&2\nexit 3\n")
    (broken / "ip6tables").chmod(0o755)
    proc = in_private_namespaces(script.split("\necho")[0], path_first=broken)
    assert proc.returncode != 0 and "cannot initialize" in proc.stderr
    assert not (upper / "ec2-sandbox" / "imds-blocked").exists()


FAKE_APT = """#!/bin/sh
# Stands in for apt-get: records the call and "installs" what the setup asked for.
echo "apt-get $*" >> "$CALLS"
case " $* " in *" install "*)
    for pkg in "$@"; do
        case $pkg in
            ec2-instance-connect)
                mkdir -p /usr/share/ec2-instance-connect
                printf '#!/bin/sh\\n' > /usr/share/ec2-instance-connect/eic_run_authorized_keys
                chmod 755 /usr/share/ec2-instance-connect/eic_run_authorized_keys ;;
            nodejs) printf '#!/bin/sh\\n' > /usr/local/bin/node; chmod 755 /usr/local/bin/node ;;
            bubblewrap) printf '#!/bin/sh\\n' > /usr/local/bin/bwrap; chmod 755 /usr/local/bin/bwrap ;;
        esac
    done ;;
esac
"""
FAKE_RECORDER = '#!/bin/sh\necho "$(basename "$0") $*" >> "$CALLS"\n'


@pytest.mark.requires_root
def test_setup_for_real_in_private_namespaces(namespaces: None, tmp_path: Path) -> None:
    """The setup exactly as an instance runs it (no SANDBOX_ROOT): real files, owners, modes and iptables
    rules, in a network namespace of its own and with overlays on /etc, /usr and /var that catch every write.
    Only apt-get, systemctl and apparmor_parser are stand-ins (first on the setup's PATH: /usr/local/sbin)."""
    calls = tmp_path / "calls.log"
    mounts = []
    for top in ("etc", "usr", "var"):
        upper, work = tmp_path / f"{top}-upper", tmp_path / f"{top}-work"
        upper.mkdir()
        work.mkdir()
        mounts.append(f'mount -t overlay overlay -o "lowerdir=/{top},upperdir={upper},workdir={work}" /{top}')
    sbin = tmp_path / "usr-upper" / "local" / "sbin"
    sbin.mkdir(parents=True)
    for name, text in (
        ("apt-get", FAKE_APT),
        ("systemctl", FAKE_RECORDER),
        ("apparmor_parser", FAKE_RECORDER),
    ):
        (sbin / name).write_text(text)
        (sbin / name).chmod(0o755)
    script = "\n".join(
        [
            "set -e",
            *mounts,
            # Whatever this machine has in these places, the setup starts as on a fresh instance.
            # /var/lib gets a tmpfs of its own: runners here may be writing to /var/lib/ec2-sandbox.
            "mount -t tmpfs tmpfs /var/lib",
            "rm -rf /etc/ec2-sandbox /usr/local/lib/ec2-sandbox /usr/share/ec2-instance-connect",
            "sed -i '/^ec2-sandbox:/d' /etc/subuid /etc/subgid 2>/dev/null || true",
            f'bash "{USER_DATA}" > "{tmp_path}/first.out"',
            f'bash "{USER_DATA}" > "{tmp_path}/second.out"',
            "iptables -w -S OUTPUT; ip6tables -w -S OUTPUT",
            "stat -c '%a %u:%g %F %n' /var/lib/ec2-sandbox /etc/ec2-sandbox /etc/ec2-sandbox/imds-blocked",
        ]
    )
    proc = in_private_namespaces(script, timeout=120, CALLS=str(calls))
    first = (tmp_path / "first.out").read_text() if (tmp_path / "first.out").exists() else ""
    assert proc.returncode == 0, proc.stderr + first
    first_steps = {s.step: s.status for s in parse_steps(first)}
    assert first_steps["packages"] == "changed" and first_steps["firewall"] == "changed"
    assert first_steps["complete"] == "ok"
    second_steps = {s.step: s.status for s in parse_steps((tmp_path / "second.out").read_text())}
    assert set(second_steps.values()) <= {"ok", "skipped"}, second_steps
    out = proc.stdout.splitlines()
    assert sum("169.254.169.254/32" in line and f"--uid-owner {UID_RANGE}" in line for line in out) == 1
    assert sum("fd00:ec2::254/128" in line and f"--uid-owner {UID_RANGE}" in line for line in out) == 1
    assert "711 0:0 directory /var/lib/ec2-sandbox" in out
    assert "755 0:0 directory /etc/ec2-sandbox" in out
    assert "644 0:0 regular file /etc/ec2-sandbox/imds-blocked" in out
    recorded_calls = calls.read_text().splitlines()
    assert any(
        c.startswith("apt-get") and "install" in c and "ec2-instance-connect" in c for c in recorded_calls
    )
    assert "systemctl enable --now ec2-sandbox-cleanup.timer" in recorded_calls
    assert "systemctl enable ec2-sandbox-imds-guard.service" in recorded_calls
    # Only the first run installed anything.
    assert sum(" install " in c for c in recorded_calls) == 1
    # Every write landed in the overlays; this machine's own directories are as they were.
    assert (tmp_path / "etc-upper" / "ec2-sandbox" / "imds-blocked").is_file()
    assert (tmp_path / "usr-upper" / "local" / "lib" / "ec2-sandbox" / "cleanup.py").is_file()
    assert not Path("/etc/ec2-sandbox").exists()
    assert not Path("/usr/local/lib/ec2-sandbox").exists()


def test_rerun_changes_nothing(ubuntu: Path) -> None:
    for tool in ("python3", "node", "bwrap", "iptables"):
        fake_tool(ubuntu, tool)
    eic = ubuntu / "usr/share/ec2-instance-connect/eic_run_authorized_keys"
    eic.parent.mkdir(parents=True)
    eic.write_text("#!/bin/sh\n")
    eic.chmod(0o755)
    assert run_setup(ubuntu).returncode == 0
    files = {
        p: (p.read_bytes(), p.stat().st_mode, p.stat().st_mtime_ns) for p in ubuntu.rglob("*") if p.is_file()
    }
    del files[ubuntu / ".setup.log"], files[ubuntu / ".system-commands"]
    (ubuntu / ".system-commands").unlink()
    proc = run_setup(ubuntu)
    assert proc.returncode == 0, proc.stdout
    assert steps(proc) == {
        "packages": "ok",
        "userns": "ok",
        "uid-range": "ok",
        "dirs": "ok",
        "firewall": "ok",
        "cleanup": "ok",
        "complete": "ok",
    }
    after = {
        p: (p.read_bytes(), p.stat().st_mode, p.stat().st_mtime_ns) for p in ubuntu.rglob("*") if p.is_file()
    }
    # The guard rewrites its marker at every run (it speaks of the live firewall); nothing else moves.
    marker = ubuntu / "etc/ec2-sandbox/imds-blocked"
    assert {
        p: v
        for p, v in after.items()
        if p not in (marker, ubuntu / ".setup.log", ubuntu / ".system-commands")
    } == {p: v for p, v in files.items() if p != marker}
    commands = recorded(ubuntu)
    assert not any("apt-get" in c or "apparmor_parser" in c for c in commands), commands


def test_amazon_linux_uses_dnf(tmp_path: Path) -> None:
    root = tmp_path / "al2023"
    fake_tool(root, "dnf")
    fake_tool(root, "python3")
    proc = run_setup(root)
    assert proc.returncode == 0, proc.stdout
    install = "dnf -y -q --setopt=strict=0 install nodejs bubblewrap ec2-instance-connect iptables-nft"
    assert install in recorded(root)
    assert steps(proc)["userns"] == "skipped"


def test_an_account_inside_the_uid_range_stops_the_setup(ubuntu: Path) -> None:
    with (ubuntu / "etc/passwd").open("a") as fh:
        fh.write(f"intruder:x:{FIRST + 5}:100::/:/bin/sh\n")
    proc = run_setup(ubuntu)
    assert proc.returncode != 0
    assert (
        f"uid-range: failed: /etc/passwd has ids in the sandbox range {UID_RANGE}: intruder({FIRST + 5})"
        in (proc.stdout)
    )
    assert not (ubuntu / "etc/ec2-sandbox/imds-blocked").exists()


def test_overlapping_subordinate_ids_are_reported(ubuntu: Path) -> None:
    with (ubuntu / "etc/subuid").open("a") as fh:
        fh.write("dev:165536:65536\n")
    proc = run_setup(ubuntu)
    assert proc.returncode == 0
    assert "uid-range: warning: subordinate id ranges overlap the sandbox range" in proc.stdout
    assert "subuid dev:165536:65536" in proc.stdout


def test_cleanup_hours_are_kept_and_checked(ubuntu: Path) -> None:
    proc = run_setup(ubuntu, EC2_SANDBOX_CLEANUP_HOURS="6")
    assert proc.returncode == 0
    conf = ubuntu / "etc/ec2-sandbox/cleanup.conf"
    assert conf.read_text().splitlines()[-1] == "CLEANUP_HOURS=6"
    conf.write_text("CLEANUP_HOURS=72\n")  # an administrator's choice survives a rerun
    assert run_setup(ubuntu, EC2_SANDBOX_CLEANUP_HOURS="6").returncode == 0
    assert conf.read_text() == "CLEANUP_HOURS=72\n"
    bad = run_setup(ubuntu, EC2_SANDBOX_CLEANUP_HOURS="1; rm -rf /")
    assert bad.returncode == 2 and "whole number of hours" in bad.stderr


def test_symlinked_base_dir_is_refused(ubuntu: Path, tmp_path: Path) -> None:
    (ubuntu / "var/lib").mkdir(parents=True)
    (ubuntu / "var/lib/ec2-sandbox").symlink_to(tmp_path)
    proc = run_setup(ubuntu)
    assert proc.returncode != 0
    assert "dirs: failed: /var/lib/ec2-sandbox is a symlink" in proc.stdout


def test_prepare_instance_ships_the_same_script() -> None:
    assert setup_script() == USER_DATA.read_bytes()
    commands = build_commands(12)
    assert commands[0] == "#!/bin/bash"
    assert "EC2_SANDBOX_CLEANUP_HOURS=12" in commands[-1]
    assert "{{" not in "\n".join(commands)  # SSM would substitute it
    with pytest.raises(ValueError, match="absolute path"):
        build_commands(12, "relative/dir")
    with pytest.raises(ValueError, match="absolute path"):
        build_commands(12, "/tmp/x; reboot")


def test_package_ships_the_setup_script(tmp_path: Path) -> None:
    uv = shutil.which("uv")
    if uv is None:
        pytest.skip("uv is not installed")
    proc = subprocess.run(
        [uv, "build", "--wheel", "--package", "ec2-sandbox", "--out-dir", str(tmp_path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    (wheel,) = tmp_path.glob("ec2_sandbox-*.whl")
    import zipfile

    with zipfile.ZipFile(wheel) as zf:
        assert zf.read("ec2_sandbox/provisioning/user-data.sh") == USER_DATA.read_bytes()


# ------------------------------------------------------------------------------------------------------
# The cleanup the timer runs, against a base dir the runner filled
# ------------------------------------------------------------------------------------------------------


def stage_runner(base: Path) -> None:
    """Leave the runner where SSM's bootstrap caches it on an instance (a root-only staging dir)."""
    staging = base / "staging"
    staging.mkdir(mode=0o700, exist_ok=True)
    path = staging / f"runner-{protocol.runner_sha256()[:32]}.py"
    path.write_bytes(protocol.runner_source())
    path.chmod(0o600)


def test_cleanup_script_has_the_runner_remove_what_the_age_policy_selects(
    ubuntu: Path, tmp_base_dir: str
) -> None:
    assert run_setup(ubuntu).returncode == 0
    cleanup = ubuntu / "usr/local/lib/ec2-sandbox/cleanup.py"
    sandbox = Sandbox(SandboxConfig(base_sandbox_dir=tmp_base_dir))
    old_task = sandbox.execute_code("open('out.txt', 'w').write('x')")
    new_task = sandbox.execute_code("print(1)")
    old_session = sandbox.execute_code("print(2)", session_id="old-session")
    new_session = sandbox.execute_code("print(3)", session_id="new-session")
    assert all(r.success for r in (old_task, new_task, old_session, new_session))
    base = Path(tmp_base_dir)
    age_task(tmp_base_dir, old_task.task_hash, 30)
    age(tmp_base_dir, "session", "old-session", 30)
    age(tmp_base_dir, "run", old_session.task_hash, 30)
    # What the toolkit's own cleanup would choose, from the runner's inventory and the age policy.
    inventory = Inventory.model_validate(
        runner.handle({"v": 1, "op": "inventory", "base_dir": tmp_base_dir})["result"]
    )
    chosen = {(e.kind, e.id) for e in AgePolicy().select(inventory, 24, SandboxConfig())}
    assert chosen == {
        ("task", old_task.task_hash),
        ("run", old_task.task_hash),
        ("session", "old-session"),
        ("run", old_session.task_hash),
    }
    command = [sys.executable, str(cleanup), "--base-dir", tmp_base_dir, "--hours", "24"]
    # Before SSM ever left a runner here, there is nothing to run and nothing is removed.
    none_yet = subprocess.run(command, capture_output=True, text=True)
    assert none_yet.returncode == 0 and "no runner" in json.loads(none_yet.stdout)["note"], none_yet
    stage_runner(base)
    pool = runner.UidPool(str(base), *runner.SANDBOX_UID_RANGE)
    before_uids = pool.table() if (base / "runs" / "uids").is_dir() else None

    dry = subprocess.run([*command, "--dry-run"], capture_output=True, text=True)
    assert dry.returncode == 0, dry.stderr
    assert {(e["kind"], e["id"]) for e in json.loads(dry.stdout)["removed"]} == chosen
    assert (base / "sessions" / "old-session").is_dir()

    real = subprocess.run(command, capture_output=True, text=True)
    assert real.returncode == 0, real.stderr
    assert {(e["kind"], e["id"]) for e in json.loads(real.stdout)["removed"]} == chosen
    left = runner.handle({"v": 1, "op": "inventory", "base_dir": tmp_base_dir})["result"]["entries"]
    assert {(e["kind"], e["id"]) for e in left} == {
        ("task", new_task.task_hash),
        ("run", new_task.task_hash),
        ("session", "new-session"),
        ("run", new_session.task_hash),
    }
    if before_uids is not None:  # privileged runs: the removed task's and session's uids go back to the pool
        after_uids = pool.table()
        assert "session:old-session" in before_uids and "session:old-session" not in after_uids
        assert f"task:{old_task.task_hash}" not in after_uids
        assert after_uids["session:new-session"] == before_uids["session:new-session"]
        claims = Path(runner.UID_CLAIMS_DIR)
        freed = before_uids["session:old-session"]
        assert not (claims / str(freed)).exists() or (claims / str(freed)).read_text() != tmp_base_dir
        assert (claims / str(after_uids["session:new-session"])).read_text() == tmp_base_dir
    # The new session still works, and the toolkit's own cleanup finds nothing more to remove.
    assert sandbox.execute_code("print(4)", session_id="new-session").stdout == "4\n"
    assert sandbox.cleanup_tasks(24).removed == []


def test_cleanup_script_runs_no_runner_another_user_could_have_written(ubuntu: Path, tmp_path: Path) -> None:
    assert run_setup(ubuntu).returncode == 0
    cleanup = ubuntu / "usr/local/lib/ec2-sandbox/cleanup.py"
    stage_runner(tmp_path)
    (tmp_path / "staging").chmod(0o777)
    proc = subprocess.run(
        [sys.executable, str(cleanup), "--base-dir", str(tmp_path)], capture_output=True, text=True
    )
    assert proc.returncode != 0 and "refusing" in proc.stderr, proc


def test_cleanup_script_refuses_a_foreign_base_dir(ubuntu: Path, tmp_path: Path) -> None:
    assert run_setup(ubuntu).returncode == 0
    cleanup = ubuntu / "usr/local/lib/ec2-sandbox/cleanup.py"
    link = tmp_path / "link"
    link.symlink_to(tmp_path)
    proc = subprocess.run(
        [sys.executable, str(cleanup), "--base-dir", str(link)], capture_output=True, text=True
    )
    assert proc.returncode == 2 and "refusing" in proc.stderr
    missing = subprocess.run(
        [sys.executable, str(cleanup), "--base-dir", str(tmp_path / "none")], capture_output=True, text=True
    )
    assert missing.returncode == 0 and json.loads(missing.stdout)["removed"] == []
