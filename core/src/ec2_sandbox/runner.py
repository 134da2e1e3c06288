#!/usr/bin/env python3
"""The ec2-sandbox runner: the one program every transport executes on the target.

It reads one JSON request (stdin, or the ``EC2_SANDBOX_REQUEST`` file named on the command line) and writes
JSON lines to stdout: zero or more ``{"event": ...}`` lines while a streaming run is in progress, then one
final ``{"envelope": ...}`` line.  Everything a user supplied - code, file names and contents, env names and
values, ids - travels inside that JSON as data; nothing here ever builds shell text.

Constraints that shape this file:

* stdlib only, and Python 3.8 syntax: it is shipped verbatim to targets whose system Python may be old;
* it never exits with 137 or 194 (SSM reads those as "timed out" and "reboot");
* it may run as root (SSM always does): then user code runs under an unprivileged uid, and every path the
  runner itself touches inside a work dir is opened component by component without following symlinks.
"""

import base64
import errno
import fcntl
import hashlib
import heapq
import json
import os
import re
import resource
import shutil
import signal
import socket
import stat
import struct
import subprocess
import sys
import threading
import time
import warnings

PROTOCOL = 1
SYSTEM_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
TASK_HASH_RE = re.compile(r"^[0-9a-f]{12,64}$")
SESSION_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
ENV_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
STREAMS = {"@stdout": "stdout", "@stderr": "stderr"}
# Directories under the base dir, one per kind of thing the runner keeps.
TASKS, SESSIONS, EPHEMERAL, RUNS = "tasks", "sessions", "ephemeral", "runs"
KILL_GRACE_SECONDS = 0.5
MAX_FILES_LISTED = 10000
# Exit statuses SSM gives a meaning of its own; the runner maps them away.
RESERVED_EXIT = {137: 3, 194: 3}
SANDBOX_UID_RANGE = (200000, 65536)  # first uid, count: one uid per session or session-less task


class RunnerError(Exception):
    """A request the runner refuses; ``kind`` lets the caller map it to its own exception type."""

    def __init__(self, kind, message):
        Exception.__init__(self, message)
        self.kind = kind
        self.message = message


# --------------------------------------------------------------------------------------------------
# Paths: validation and symlink-proof access inside a work dir
# --------------------------------------------------------------------------------------------------


def check_relative_path(name, field="filename"):
    """Return the components of a safe relative path, or raise naming the rule it broke."""
    if not isinstance(name, str) or not name:
        raise RunnerError("invalid_input", "%s must be a non-empty relative path" % field)
    if "\x00" in name:
        raise RunnerError("invalid_input", "%s %r contains a NUL byte" % (field, name))
    if name.startswith("/"):
        raise RunnerError(
            "invalid_input",
            "%s %r is absolute; give a path relative to the work dir" % (field, name),
        )
    if len(name.encode("utf-8", "surrogateescape")) > 1024:
        raise RunnerError("invalid_input", "%s is longer than 1024 bytes" % field)
    parts = name.split("/")
    for part in parts:
        if part in ("", ".", ".."):
            raise RunnerError(
                "invalid_input",
                "%s %r has an empty, '.' or '..' component; use a plain relative path like 'data/in.csv'"
                % (field, name),
            )
        if len(part.encode("utf-8", "surrogateescape")) > 255:
            raise RunnerError("invalid_input", "%s has a component longer than 255 bytes" % field)
    return parts


def open_dir_nofollow(root_fd, parts, create=False, owner=None):
    """Walk ``parts`` below ``root_fd`` without following any symlink; return an O_DIRECTORY fd."""
    fd = os.dup(root_fd)
    try:
        for part in parts:
            try:
                nfd = os.open(part, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=fd)
            except FileNotFoundError:
                if not create:
                    raise
                os.mkdir(part, 0o755, dir_fd=fd)
                nfd = os.open(part, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=fd)
                if owner is not None:
                    os.fchown(nfd, owner[0], owner[1])
            except OSError as exc:
                if exc.errno in (errno.ELOOP, errno.ENOTDIR):
                    raise RunnerError(
                        "invalid_input",
                        "path component %r is not a directory (or is a symlink)" % part,
                    )
                raise
            os.close(fd)
            fd = nfd
        return fd
    except BaseException:
        os.close(fd)
        raise


def write_file_in(root, name, data, owner=None):
    parts = check_relative_path(name)
    root_fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        dfd = open_dir_nofollow(root_fd, parts[:-1], create=True, owner=owner)
        try:
            try:
                # Replace, never write through: a file left here by code may be a hard link to elsewhere.
                try:
                    os.unlink(parts[-1], dir_fd=dfd)
                except FileNotFoundError:
                    pass
                fd = os.open(
                    parts[-1],
                    os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                    0o644,
                    dir_fd=dfd,
                )
            except OSError as exc:
                if exc.errno in (errno.ELOOP, errno.EISDIR, errno.EPERM, errno.EEXIST):
                    raise RunnerError(
                        "invalid_input",
                        "cannot write %r: a directory or symlink is in the way" % name,
                    )
                raise
            try:
                if owner is not None:
                    os.fchown(fd, owner[0], owner[1])
                view = memoryview(data)
                while view:
                    n = os.write(fd, view)
                    view = view[n:]
            finally:
                os.close(fd)
        finally:
            os.close(dfd)
    finally:
        os.close(root_fd)


def open_file_in(root, name, safe_owner):
    """Open a regular file below ``root`` for reading, refusing symlinks and foreign hard links."""
    parts = check_relative_path(name)
    root_fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        try:
            dfd = open_dir_nofollow(root_fd, parts[:-1])
        except FileNotFoundError:
            raise RunnerError("not_found", "no file %r in this task" % name)
        try:
            fd = os.open(parts[-1], os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, dir_fd=dfd)
        except FileNotFoundError:
            raise RunnerError("not_found", "no file %r in this task" % name)
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                raise RunnerError("refused", "%r is a symlink; symlinks are never followed" % name)
            raise
        finally:
            os.close(dfd)
    finally:
        os.close(root_fd)
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode):
        os.close(fd)
        raise RunnerError("refused", "%r is not a regular file" % name)
    if not file_is_safe(st, safe_owner):
        os.close(fd)
        raise RunnerError("refused", "%r is a hard link to a file the task does not own; refused" % name)
    return fd, st


def file_is_safe(st, safe_owner):
    """When the runner is privileged, a file is readable only if the sandbox uid owns it and it has one link.

    A hard link is how code could smuggle a file it cannot read (say /etc/shadow) into its work dir for the
    privileged runner to read back on its behalf.
    """
    if safe_owner is None:
        return True
    return st.st_uid == safe_owner and st.st_nlink == 1


# --------------------------------------------------------------------------------------------------
# The base dir and its bookkeeping
# --------------------------------------------------------------------------------------------------


def default_base_dir():
    if os.geteuid() == 0:
        return "/var/lib/ec2-sandbox"
    state = os.environ.get("XDG_STATE_HOME") or os.path.join(os.path.expanduser("~"), ".local", "state")
    return os.path.join(state, "ec2-sandbox")


_PREPARED = set()


def prepare_base(base_dir):
    base = os.path.abspath(base_dir or default_base_dir())
    if base in _PREPARED:
        # In-process runners serve many requests; the layout was checked on the first one.
        return base
    privileged = os.geteuid() == 0
    os.makedirs(base, exist_ok=True)
    # Privileged: others may traverse (each work dir is then closed to all but its own uid) but not list.
    mode = 0o711 if privileged else 0o700
    for sub in ("", TASKS, SESSIONS, EPHEMERAL):
        path = os.path.join(base, sub)
        ensure_dir(path, mode)
    # Runs stay root's; privileged, a run's uid must traverse to its own program (never list the others).
    ensure_dir(os.path.join(base, RUNS), mode)
    _PREPARED.add(base)
    return base


def ensure_dir(path, mode):
    try:
        os.mkdir(path, mode)
    except FileExistsError:
        pass
    st = os.lstat(path)
    if not stat.S_ISDIR(st.st_mode):
        raise RunnerError("environment", "%s exists and is not a directory" % path)
    if st.st_uid != os.geteuid():
        raise RunnerError("environment", "%s is owned by uid %d, not by the runner's uid" % (path, st.st_uid))
    if stat.S_IMODE(st.st_mode) != mode:
        os.chmod(path, mode)


def record_dir(base, task_hash):
    return os.path.join(base, RUNS, task_hash)


def load_record(base, task_hash):
    if not isinstance(task_hash, str) or not TASK_HASH_RE.match(task_hash):
        raise RunnerError(
            "invalid_input",
            "task_hash must be 12-64 lowercase hex characters, got %r" % (task_hash,),
        )
    path = os.path.join(record_dir(base, task_hash), "meta.json")
    try:
        with open(path, "rb") as fh:
            return json.loads(fh.read().decode("utf-8"))
    except FileNotFoundError:
        raise RunnerError("not_found", "no task %s on this target (it may have been cleaned up)" % task_hash)


# Machine-wide claims on sandbox uids (one file per uid, naming the base dir that holds it): two base dirs
# on one machine must never hand the same uid to two sessions. Persistent, as the files a uid owns are.
UID_CLAIMS_DIR = "/var/lib/ec2-sandbox/.uid-claims"


class UidPool(object):
    """Hands out one unprivileged uid per session (or per session-less task), kept in a locked map file.

    Two sessions never share a uid, so neither can read, write or signal the other's processes and files.
    The map is per base dir; a claim file per uid in UID_CLAIMS_DIR keeps other base dirs off the same uid.
    """

    def __init__(self, base, first, count):
        self.base = base
        self.path = os.path.join(base, RUNS, "uids.json")
        self.first = first
        self.count = count

    def _claim(self, uid):
        """Claim ``uid`` for this base dir machine-wide; False if another existing base dir holds it."""
        if UID_CLAIMS_DIR not in _PREPARED:
            if not os.path.isdir(os.path.dirname(UID_CLAIMS_DIR)):
                os.makedirs(os.path.dirname(UID_CLAIMS_DIR), 0o711)
            ensure_dir(UID_CLAIMS_DIR, 0o700)
            _PREPARED.add(UID_CLAIMS_DIR)
        lock = os.open(os.path.join(UID_CLAIMS_DIR, ".lock"), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(lock, fcntl.LOCK_EX)
            path = os.path.join(UID_CLAIMS_DIR, str(uid))
            try:
                with open(path, "rb") as fh:
                    holder = fh.read().decode("utf-8", "replace")
            except FileNotFoundError:
                holder = None
            if holder is not None and holder != self.base and os.path.isdir(holder):
                return False
            # Unclaimed, ours already, or held by a base dir that no longer exists. Written in place, under
            # the lock: a claim cut short names no existing base dir, so it is free again.
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
            with os.fdopen(fd, "wb") as fh:
                fh.write(self.base.encode("utf-8"))
            return True
        finally:
            os.close(lock)

    def _locked(self, update):
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            raw = b""
            while True:
                chunk = os.read(fd, 65536)
                if not chunk:
                    break
                raw += chunk
            table = json.loads(raw.decode("utf-8")) if raw else {}
            result, changed = update(table)
            if changed:
                data = json.dumps(table, sort_keys=True).encode("utf-8")
                os.lseek(fd, 0, os.SEEK_SET)
                os.ftruncate(fd, 0)
                os.write(fd, data)
            return result
        finally:
            os.close(fd)

    def acquire(self, key):
        def update(table):
            if key in table:
                return table[key], False
            used = set(table.values())
            start = int(hashlib.sha256(key.encode("utf-8")).hexdigest(), 16) % self.count
            for i in range(self.count):
                uid = self.first + (start + i) % self.count
                if uid not in used and self._claim(uid):
                    table[key] = uid
                    return uid, True
            raise RunnerError("environment", "all %d sandbox uids are in use; run cleanup" % self.count)

        return self._locked(update)

    def release(self, keys):
        def update(table):
            hit = [k for k in keys if k in table]
            # Under the map's lock: once it is released, acquire() may give the uid to a new key of this
            # base dir and claim it again, and that claim must not be the one dropped here.
            for key in hit:
                self._unclaim(table.pop(key))
            return None, bool(hit)

        if keys:
            self._locked(update)

    def _unclaim(self, uid):
        path = os.path.join(UID_CLAIMS_DIR, str(uid))
        try:
            with open(path, "rb") as fh:
                if fh.read().decode("utf-8", "replace") == self.base:
                    os.unlink(path)
        except OSError:
            pass


# --------------------------------------------------------------------------------------------------
# Isolation probing
# --------------------------------------------------------------------------------------------------

_BWRAP_CACHE = {}
_BWRAP_LOCK = threading.Lock()
# No user namespaces inside the box (a large kernel attack surface), and a session of its own.
BWRAP_HARDENING = ["--unshare-user", "--disable-userns", "--new-session"]


def find_bwrap():
    return shutil.which("bwrap", path=SYSTEM_PATH)


def bwrap_works(bwrap, as_uid):
    """bwrap may be installed yet unusable (user namespaces disabled); find out once.

    Every unprivileged uid gets the same answer, so one probe as the first sandbox uid serves them all.
    """
    if as_uid is not None:
        as_uid = SANDBOX_UID_RANGE[0]
    key = (bwrap, as_uid)
    with _BWRAP_LOCK:
        # Runs served side by side wait for the one probe: none may see a half-made answer and go
        # without namespaces.
        if key not in _BWRAP_CACHE:
            answer = _remembered_probe(key)
            if answer is None:
                answer = _probe_bwrap(bwrap, as_uid)
                _remember_probe(key, answer)
            _BWRAP_CACHE[key] = answer
    return _BWRAP_CACHE[key][0]


# A root runner is often a new process per request (SSM): it keeps the probe's answer on disk for a while
# instead of starting a sandbox before every run. Root-only file; stale once bwrap is replaced.
BWRAP_PROBE_FILE = "/var/lib/ec2-sandbox/.bwrap-probe.json"
BWRAP_PROBE_TTL = 600


def _remembered_probe(key):
    if os.geteuid() != 0:
        return None
    try:
        fd = os.open(BWRAP_PROBE_FILE, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        with os.fdopen(fd, "rb") as fh:
            st = os.fstat(fh.fileno())
            if st.st_uid != 0 or stat.S_IMODE(st.st_mode) & 0o077:
                return None
            if (
                not 0 <= time.time() - st.st_mtime < BWRAP_PROBE_TTL
                or os.stat(key[0]).st_mtime >= st.st_mtime
            ):
                return None
            answer = json.loads(fh.read().decode("utf-8")).get("%s|%s" % key)
    except (OSError, ValueError, AttributeError):
        return None
    if isinstance(answer, list) and len(answer) == 2 and all(isinstance(x, bool) for x in answer):
        return tuple(answer)
    return None


def _remember_probe(key, answer):
    if os.geteuid() != 0:
        return
    try:
        os.makedirs(os.path.dirname(BWRAP_PROBE_FILE), 0o711, exist_ok=True)
        tmp = "%s.%d.tmp" % (BWRAP_PROBE_FILE, os.getpid())
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        with os.fdopen(fd, "wb") as fh:
            fh.write(json.dumps({"%s|%s" % key: list(answer)}).encode("utf-8"))
        os.rename(tmp, BWRAP_PROBE_FILE)
    except OSError:
        pass


def _probe_bwrap(bwrap, as_uid):
    """(usable, hardened): first with the hardening flags of bubblewrap >= 0.8 (no nested user
    namespaces, a size cap on the private /tmp, a new session); older versions still isolate."""
    plain = ["--ro-bind", "/", "/", "--unshare-all", "--die-with-parent"]
    hardened = plain + BWRAP_HARDENING + ["--size", "1048576", "--tmpfs", "/tmp"]
    for extra, flags in ((True, hardened), (False, plain)):
        try:
            res = subprocess.run(
                [bwrap] + flags + ["--", "/bin/true"],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                timeout=10,
                preexec_fn=(lambda: drop_privileges(as_uid)) if as_uid is not None else None,
                env={"PATH": SYSTEM_PATH},
            )
        except (OSError, subprocess.SubprocessError):
            continue
        if res.returncode == 0:
            return (True, extra)
    return (False, False)


def bwrap_hardened(bwrap, as_uid):
    """True when this bwrap takes BWRAP_HARDENING and ``--size`` (probed by bwrap_works)."""
    if not bwrap_works(bwrap, as_uid):
        return False
    return _BWRAP_CACHE[(bwrap, SANDBOX_UID_RANGE[0] if as_uid is not None else None)][1]


def cgroup_root():
    """A writable cgroup v2 directory the runner may create per-run children in, or None.

    ``EC2_SANDBOX_CGROUP=off`` in the runner's environment turns cgroups off (the rlimit and uid-sweep
    fallbacks then carry the limits and the kill on their own).
    """
    if os.environ.get("EC2_SANDBOX_CGROUP") == "off":
        return None
    candidates = []
    override = os.environ.get("EC2_SANDBOX_CGROUP_ROOT")
    if override:
        candidates.append(override)
    candidates += ["/sys/fs/cgroup/ec2-sandbox", "/sys/fs/cgroup/unified/ec2-sandbox"]
    for path in candidates:
        parent = os.path.dirname(path)
        if not os.path.exists(os.path.join(parent, "cgroup.procs")):
            continue
        try:
            os.makedirs(path, exist_ok=True)
        except OSError:
            continue
        if os.access(os.path.join(path, "cgroup.procs"), os.W_OK):
            return path
    return None


def cgroup_controllers(root):
    try:
        with open(os.path.join(root, "cgroup.controllers")) as fh:
            available = fh.read().split()
    except OSError:
        return []
    wanted = [c for c in ("memory", "pids", "cpu") if c in available]
    try:
        with open(os.path.join(root, "cgroup.subtree_control")) as fh:
            enabled = fh.read().split()
        missing = [c for c in wanted if c not in enabled]
        if missing:
            with open(os.path.join(root, "cgroup.subtree_control"), "w") as fh:
                fh.write(" ".join("+" + c for c in missing))
    except OSError:
        with open(os.path.join(root, "cgroup.subtree_control")) as fh:
            enabled = fh.read().split()
        return [c for c in wanted if c in enabled]
    return wanted


IMDS_MARKER = "/etc/ec2-sandbox/imds-blocked"
# Files that say "this machine is an EC2 instance" without sending any traffic.
EC2_DMI_FILES = (
    "/sys/devices/virtual/dmi/id/sys_vendor",
    "/sys/devices/virtual/dmi/id/bios_vendor",
    "/sys/hypervisor/uuid",
)


def imds_guard_present():
    """The provisioning script leaves this marker once the firewall keeps sandbox uids off 169.254.169.254.

    Checked as a file only: the runner never probes the metadata address itself.
    """
    return os.path.exists(IMDS_MARKER)


def on_ec2():
    """True when DMI or the hypervisor says this is an EC2 instance, False when they name something else,
    None when neither can be read (read from /sys; no traffic)."""
    seen = False
    for path in EC2_DMI_FILES:
        try:
            with open(path, "rb") as fh:
                text = fh.read(256).decode("ascii", "replace").strip().lower()
        except OSError:
            continue
        seen = True
        if "amazon" in text or text.startswith("ec2"):
            return True
    return False if seen else None


def imds_warning(network):
    """Why the metadata service may be reachable from user code, or None when it is not (or cannot be:
    a machine that says it is not on EC2)."""
    if not network or imds_guard_present():
        return None
    ec2 = on_ec2()
    if ec2 is False:
        return None
    return (
        "network is on and %s has no firewall rule keeping sandbox uids off the instance metadata service "
        "(marker %s is missing): code may obtain the instance role's credentials; run the provisioning "
        "script or `ec2-sandbox prepare-instance`"
        % ("this EC2 instance" if ec2 else "this target (if it is an EC2 instance)", IMDS_MARKER)
    )


# --------------------------------------------------------------------------------------------------
# Running user code
# --------------------------------------------------------------------------------------------------


def drop_privileges(uid):
    os.setgroups([])
    os.setgid(uid)
    os.setuid(uid)


def _load_libc():
    try:
        import ctypes

        return ctypes, ctypes.CDLL(None, use_errno=True)
    except Exception:  # no libc to call: bwrap sets the flag itself
        return None, None


# Loaded once here: importing ctypes in the forked child would cost milliseconds on every run (and a
# child forked from a threaded process must not import anything).
_CTYPES, _LIBC = _load_libc()
PR_SET_NO_NEW_PRIVS = 38
PR_SET_PDEATHSIG = 1
CLONE_NEWNET = 0x40000000
SIOCGIFFLAGS, SIOCSIFFLAGS, IFF_UP = 0x8913, 0x8914, 0x1


def no_new_privs():
    """PR_SET_NO_NEW_PRIVS: setuid binaries cannot raise privileges inside the run."""
    if _LIBC is not None:
        _LIBC.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0)


def die_with_runner():
    """PR_SET_PDEATHSIG: if the runner is killed outright (SIGKILL from a cancelled SSM command, a lost
    SSH channel), the program it started dies too. Set after the uid change, which clears it."""
    if _LIBC is not None:
        _LIBC.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)


def private_network():
    """Move the calling (root) process into a fresh network namespace with only a loopback, brought up.

    Used without bubblewrap when network is off: the namespace has no route anywhere, the instance
    metadata service included, and its 127.0.0.1 is not the host's.
    """
    if _LIBC is None:
        raise OSError(errno.ENOSYS, "ctypes is not available to call unshare()")
    if _LIBC.unshare(CLONE_NEWNET) != 0:
        err = _CTYPES.get_errno()
        raise OSError(err, "unshare(CLONE_NEWNET): %s" % os.strerror(err))
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        ifreq = fcntl.ioctl(sock.fileno(), SIOCGIFFLAGS, struct.pack("16sH14x", b"lo", 0))
        flags = struct.unpack("16sH14x", ifreq)[1]
        fcntl.ioctl(sock.fileno(), SIOCSIFFLAGS, struct.pack("16sH14x", b"lo", flags | IFF_UP))
    finally:
        sock.close()


_NETNS_CACHE = []


def quiet_fork():
    """os.fork() for a child that makes a few syscalls and exits (no locks, no imports): Python 3.12+ warns
    about forking a threaded process (the in-process local transport is one), which is safe here."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        return os.fork()


def netns_works():
    """Can this (root) runner create network namespaces? Containers often drop CAP_SYS_ADMIN. Asked once."""
    if not _NETNS_CACHE:
        ok = False
        if _LIBC is not None and os.geteuid() == 0:
            pid = quiet_fork()
            if pid == 0:
                code = 1
                try:
                    private_network()
                    code = 0
                finally:
                    os._exit(code)
            _, status = os.waitpid(pid, 0)
            ok = os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0
        _NETNS_CACHE.append(ok)
    return _NETNS_CACHE[0]


def kill_uid(uid):
    """SIGKILL every process running as ``uid`` (a sandbox uid: the session's own, nothing else's).

    One kill(-1) from a child that became ``uid``: the kernel signals every process of that uid in one pass,
    in every pid namespace, so a process forking meanwhile cannot slip through. True if any was found.
    """
    pid = quiet_fork()
    if pid == 0:
        code = 2
        try:
            drop_privileges(uid)
            code = 0
            for _ in range(3):
                try:
                    os.kill(-1, signal.SIGKILL)
                    code = 1
                except OSError:
                    break
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    return os.WIFEXITED(status) and os.WEXITSTATUS(status) == 1


class UidLease(object):
    """Held (shared) by every run of a sandbox uid while it goes on; the last run out sweeps the uid.

    Without a cgroup or a pid namespace a program can leave its process group (setsid, double fork); the
    sweep kills whatever still runs under the session's uid once no run of that session is in progress.
    """

    def __init__(self, base, uid):
        self.uid = uid
        path = os.path.join(base, RUNS, "uid-%d.lock" % uid)
        self.fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        fcntl.flock(self.fd, fcntl.LOCK_SH)

    def finish(self, sweep):
        """Release; when ``sweep`` and no other run of the uid is active, kill its leftovers. True if any."""
        try:
            if not sweep:
                return False
            try:
                fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                return False  # another run of this session is in progress: it sweeps when it ends
            return kill_uid(self.uid)
        finally:
            os.close(self.fd)


def rlimit_table(limits, rlimit_memory):
    """The run's rlimits but RLIMIT_NPROC (set after the uid change), as (name, (soft, hard)) pairs."""
    memory_bytes = limits["memory_mb"] * 1024 * 1024
    fsize = limits["file_size_mb"] * 1024 * 1024
    cpu = limits["cpu_seconds"]
    table = [
        ("RLIMIT_CORE", (0, 0)),
        ("RLIMIT_FSIZE", (fsize, fsize)),
        ("RLIMIT_NOFILE", (limits["open_files"], limits["open_files"])),
        ("RLIMIT_CPU", (cpu, cpu + 1)),
    ]
    if rlimit_memory == "data":
        table.append(("RLIMIT_DATA", (memory_bytes, memory_bytes)))
    elif rlimit_memory == "as":
        table.append(("RLIMIT_AS", (memory_bytes, memory_bytes)))
    return table


def nproc_limit(limits, run_uid):
    """RLIMIT_NPROC counts the uid's processes: set, after the uid change, only for a uid that is the
    session's alone."""
    if run_uid is None:
        return []
    return [("RLIMIT_NPROC", (limits["processes"], limits["processes"]))]


def make_preexec(limits, rlimit_memory, run_uid, cgroup_dir, netns=False):
    table = [(getattr(resource, name), value) for name, value in rlimit_table(limits, rlimit_memory)]
    after_uid = [(getattr(resource, name), value) for name, value in nproc_limit(limits, run_uid)]

    def preexec():
        os.setsid()
        # Files the program makes are its session's alone, also in shared places such as /tmp without bwrap.
        os.umask(0o077)
        if cgroup_dir is not None:
            with open(os.path.join(cgroup_dir, "cgroup.procs"), "w") as fh:
                fh.write(str(os.getpid()))
        for limit, value in table:
            resource.setrlimit(limit, value)
        if netns:
            private_network()
        if run_uid is not None:
            drop_privileges(run_uid)
        for limit, value in after_uid:
            resource.setrlimit(limit, value)
        signal.signal(signal.SIGPIPE, signal.SIG_DFL)
        no_new_privs()
        die_with_runner()

    return preexec


def substitute(argv, values):
    out = []
    for item in argv:
        for key, value in values.items():
            item = item.replace("{" + key + "}", value)
        out.append(item)
    return out


def resolve_executable(name):
    if "/" in name:
        return name if os.access(name, os.X_OK) else None
    return shutil.which(name, path=SYSTEM_PATH)


def build_env(user_env, workdir, tmpdir):
    env = {
        "PATH": SYSTEM_PATH,
        "HOME": workdir,
        "LANG": "C.UTF-8",
        "TMPDIR": tmpdir,
        "PYTHONUNBUFFERED": "1",
        "PYTHONDONTWRITEBYTECODE": "1",
    }
    for name, value in (user_env or {}).items():
        if not isinstance(name, str) or not ENV_NAME_RE.match(name):
            raise RunnerError("invalid_input", "env var name %r must match [A-Za-z_][A-Za-z0-9_]*" % (name,))
        if "\x00" in value:
            raise RunnerError("invalid_input", "env var %s has a NUL byte in its value" % name)
        env[name] = value
    return env


def bwrap_argv(bwrap, workdir, env, network, uid, hardened=False, tmp_bytes=None, ro_files=()):
    argv = [bwrap, "--die-with-parent", "--unshare-all"]
    if network:
        argv.append("--share-net")
    if hardened:
        argv += BWRAP_HARDENING
    argv += ["--ro-bind", "/usr", "/usr", "--ro-bind", "/etc", "/etc"]
    for top in ("bin", "sbin", "lib", "lib32", "lib64", "libx32"):
        path = "/" + top
        if os.path.islink(path):
            argv += ["--symlink", os.readlink(path), path]
        elif os.path.isdir(path):
            argv += ["--ro-bind", path, path]
    for extra in ("/opt",):
        if os.path.isdir(extra):
            argv += ["--ro-bind", extra, extra]
    argv += ["--proc", "/proc", "--dev", "/dev"]
    # The private /tmp and /run are memory: cap them (the memory limit for /tmp, 1 MB for /run).
    for path, size in (("/tmp", tmp_bytes), ("/run", 1 << 20)):
        if hardened and size:
            argv += ["--size", str(size)]
        argv += ["--tmpfs", path]
    argv += ["--bind", workdir, workdir]
    for path in ro_files:
        argv += ["--ro-bind", path, path]
    # The root is bwrap's own tmpfs: read-only, so the work dir and /tmp are the only writable places.
    argv += ["--remount-ro", "/", "--chdir", workdir]
    if uid is not None:
        argv += ["--uid", str(uid), "--gid", str(uid)]
    argv.append("--clearenv")
    for name in sorted(env):
        argv += ["--setenv", name, env[name]]
    argv.append("--")
    return argv


def run_task(req, emit):
    base = prepare_base(req.get("base_dir"))
    task_hash = req["task_hash"]
    if not TASK_HASH_RE.match(task_hash or ""):
        raise RunnerError("invalid_input", "task_hash must be 12-64 lowercase hex characters")
    session_id = req.get("session_id")
    if session_id is not None and not SESSION_ID_RE.match(session_id):
        raise RunnerError(
            "invalid_input",
            "session_id %r must be 1-64 characters of letters, digits, '.', '_' or '-', starting with "
            "a letter or digit" % (session_id,),
        )
    ephemeral = bool(req.get("ephemeral")) and session_id is None
    runtime = req["runtime"]
    limits = req["limits"]
    timeout = float(req["timeout"])
    inline_chars = int(req.get("inline_chars", 20000))
    privileged = os.geteuid() == 0

    if session_id is not None:
        workdir = os.path.join(base, SESSIONS, session_id)
        uid_key = "session:" + session_id
    elif ephemeral:
        workdir = os.path.join(base, EPHEMERAL, task_hash)
        uid_key = "task:" + task_hash
    else:
        workdir = os.path.join(base, TASKS, task_hash)
        uid_key = "task:" + task_hash
    rdir = record_dir(base, task_hash)
    try:
        os.mkdir(rdir, 0o700)
    except FileExistsError:
        raise RunnerError(
            "invalid_input", "task %s already exists; task hashes are unique per run" % task_hash
        )

    run_uid = UidPool(base, *SANDBOX_UID_RANGE).acquire(uid_key) if privileged else None
    owner = (run_uid, run_uid) if run_uid is not None else None
    if not os.path.isdir(workdir):
        os.mkdir(workdir, 0o700)
    st = os.lstat(workdir)
    if not stat.S_ISDIR(st.st_mode):
        raise RunnerError("environment", "work dir %s is not a directory" % workdir)
    if owner is not None:
        os.lchown(workdir, owner[0], owner[1])
        os.chmod(workdir, 0o700)

    meta = {
        "task_hash": task_hash,
        "session_id": session_id,
        "ephemeral": ephemeral,
        "workdir": workdir,
        "runtime": runtime["name"],
        "uid": run_uid,
        "started": time.time(),
    }
    # Root's alone: the record names the session, its uid and its work dir.
    meta_fd = os.open(
        os.path.join(rdir, "meta.json"), os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600
    )
    with os.fdopen(meta_fd, "w") as fh:
        json.dump(meta, fh)

    try:
        return _run_in(
            req,
            emit,
            base,
            workdir,
            rdir,
            run_uid,
            owner,
            runtime,
            limits,
            timeout,
            inline_chars,
            meta,
        )
    finally:
        if ephemeral:
            remove_tree(workdir)
            if privileged:
                UidPool(base, *SANDBOX_UID_RANGE).release([uid_key])
        else:
            try:
                os.utime(workdir)
            except OSError:
                pass


def _run_in(req, emit, base, workdir, rdir, run_uid, owner, runtime, limits, timeout, inline_chars, meta):
    before = snapshot_files(workdir)
    for entry in req.get("files") or []:
        write_file_in(workdir, entry["path"], base64.b64decode(entry["b64"]), owner)
    code = base64.b64decode(req["code_b64"])
    # The program lives beside the run record, out of the work dir's listing. The record stays root's; the
    # run's group may read the program and nothing else there.
    program_dir = os.path.join(rdir, "program")
    os.mkdir(program_dir, 0o750 if owner else 0o700)
    source_path = os.path.join(program_dir, runtime["filename"])
    with open(source_path, "wb") as fh:
        fh.write(code)
    if owner is not None:
        os.chmod(rdir, 0o711)
        os.chown(program_dir, 0, owner[1])
        os.chown(source_path, 0, owner[1])
        os.chmod(source_path, 0o440)

    isolation = req.get("isolation", "auto")
    bwrap = None
    if isolation in ("auto", "bwrap"):
        candidate = find_bwrap()
        if candidate and bwrap_works(candidate, run_uid):
            bwrap = candidate
        elif isolation == "bwrap":
            raise RunnerError(
                "environment",
                "isolation 'bwrap' is required but bubblewrap is %s on this target; install the 'bubblewrap' "
                "package or set isolation to 'auto'" % ("not usable" if candidate else "not installed"),
            )

    tmpdir = "/tmp" if bwrap else os.path.join(workdir, ".tmp")
    if not bwrap:
        try:
            os.mkdir(tmpdir, 0o700)
            if owner is not None:
                os.lchown(tmpdir, owner[0], owner[1])
        except FileExistsError:
            pass
    env = build_env(req.get("env"), workdir, tmpdir)

    heap_mb = max(16, limits["memory_mb"] * 3 // 4)
    values = {"file": source_path, "memory_mb": str(limits["memory_mb"]), "heap_mb": str(heap_mb)}
    argv = substitute(list(runtime["argv"]), values)
    exe = resolve_executable(argv[0])
    if exe is None:
        raise RunnerError(
            "runtime_missing",
            "runtime %r needs %r, which is not installed on this target" % (runtime["name"], argv[0]),
        )
    argv[0] = exe
    network = bool(req.get("network"))
    warnings = []
    if bwrap:
        # The source sits outside the work dir: bind it read-only at the same path.
        hardened = bwrap_hardened(bwrap, run_uid)
        full = bwrap_argv(
            bwrap, workdir, env, network, None, hardened, limits["memory_mb"] * 1024 * 1024, [source_path]
        )
        full += argv
        spawn_env = {"PATH": SYSTEM_PATH}
    else:
        full = argv
        spawn_env = env
    # Without bubblewrap, root can still give the run a network namespace of its own.
    netns = not bwrap and not network and run_uid is not None and netns_works()
    if not network and not bwrap and not netns:
        warnings.append(
            "network is off in the configuration, but without bubblewrap or a network namespace (root "
            "with CAP_SYS_ADMIN) nothing enforces it: this run could reach the network"
        )
    imds = imds_warning(network)
    if imds:
        warnings.append(imds)

    cg_root = cgroup_root() if req.get("cgroups", True) else None
    cg_dir, cg_limits = None, []
    # Under bwrap the pid namespace already kills every process of the run; a cgroup is worth its cost
    # (a few ms a run) only when it also brings resource controllers.
    if cg_root is not None and bwrap and not cgroup_controllers(cg_root):
        cg_root = None
    if cg_root is not None:
        cg_dir, cg_limits = make_cgroup(cg_root, meta["task_hash"], limits, runtime)

    enforced = ["rlimit:cpu", "rlimit:fsize", "rlimit:nofile"]
    rlimit_memory = runtime.get("rlimit_memory", "data")
    if "memory" not in cg_limits and rlimit_memory:
        enforced.append("rlimit:" + rlimit_memory)
    if run_uid is not None:
        enforced.append("rlimit:nproc")
    if "--max-old-space-size" in " ".join(runtime["argv"]):
        enforced.append("runtime:heap")
    enforced += ["cgroup:" + c for c in cg_limits]
    if "memory" in cg_limits:
        rlimit_memory = None
    if bwrap:
        enforced.append("namespaces:bwrap")
    if run_uid is not None:
        enforced.append("uid:private")
    enforced.append("network:off" if (bwrap and not network) or netns else "network:on")
    if network and imds_guard_present():
        enforced.append("imds:blocked")
    # What kills every process of the run at its end, even those that left its process group.
    sweep = run_uid is not None and not bwrap and "kill" not in cg_limits
    if bwrap:
        enforced.append("kill:pid-namespace")
    elif "kill" in cg_limits:
        enforced.append("kill:cgroup")
    elif sweep:
        enforced.append("kill:uid")
    else:
        enforced.append("kill:process-group")
        warnings.append(
            "without bubblewrap, a cgroup or root, only the run's process group is killed at its end: a "
            "program that calls setsid() can outlive the run"
        )

    stdout_path = os.path.join(rdir, "stdout")
    stderr_path = os.path.join(rdir, "stderr")
    out_fd = os.open(stdout_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
    err_fd = os.open(stderr_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
    # A session's uid is shared by its runs, which may not all be alike (isolation is per environment); a
    # task's is its single run's own, and needs no lease unless that run sweeps.
    needs_lease = run_uid is not None and (sweep or meta["session_id"] is not None)
    lease = UidLease(base, run_uid) if needs_lease else None
    streamer = None
    outcome = None
    try:
        # A warm start needs the sandbox to be bubblewrap's alone: a cgroup would have to take the program in.
        zyg = warm_zygote(req, runtime, argv, workdir) if bwrap and cg_dir is None else None
        if zyg is not None:
            warm_req = {
                "bwrap_argv": holder_argv(bwrap, workdir, network, hardened, limits, source_path),
                "path": SYSTEM_PATH,
                "uid": run_uid,
                "workdir": workdir,
                "program": source_path,
                "env": dict(env, PWD=workdir),  # bubblewrap sets PWD for the programs it starts
                # As many processes of the run's uid as under a cold start: bubblewrap, the placeholder (in
                # the place of bubblewrap's pid 1) and the program; the program's parent keeps root's uid.
                "rlimits": rlimit_table(limits, rlimit_memory) + nproc_limit(limits, run_uid),
            }
            started = time.monotonic()
            handle = start_warm(zyg, warm_req, out_fd, err_fd)
            if handle is not None:
                streamer = start_streamer(req, stdout_path, stderr_path, emit)
                outcome = watch(handle, started, timeout, meta["task_hash"])
                if outcome is None:  # the zygote could not set the run up: start it cold
                    warm_failed(zyg)
                    if streamer is not None:
                        streamer.stop()
                    for fd in (out_fd, err_fd):
                        os.ftruncate(fd, 0)
                        os.lseek(fd, 0, os.SEEK_SET)
                else:
                    zyg.failures = 0
        if outcome is None:
            preexec = make_preexec(limits, rlimit_memory, run_uid, cg_dir, netns)
            started = time.monotonic()
            try:
                handle = ColdRun(full, workdir, spawn_env, preexec, out_fd, err_fd, cg_dir)
            except subprocess.SubprocessError as exc:
                raise RunnerError("environment", "the sandbox could not be set up for this run: %s" % exc)
            streamer = start_streamer(req, stdout_path, stderr_path, emit)
            outcome = watch(handle, started, timeout, meta["task_hash"])
    except BaseException:
        if lease is not None:
            lease.finish(False)
        if cg_dir is not None:
            remove_cgroup(cg_dir)
        raise
    finally:
        os.close(out_fd)
        os.close(err_fd)
    leftovers = outcome.leftovers
    if lease is not None:
        leftovers = lease.finish(sweep) or leftovers
    if streamer is not None:
        streamer.stop()
    oom_events = cgroup_oom_kills(cg_dir)
    # The cgroup's own high-water mark covers every process of the run; ru_maxrss is one process tree's, and
    # starts at the runner's size (the forked child is a copy of it until it execs).
    peak_kb = cgroup_peak_kb(cg_dir) or int(outcome.maxrss_kb)
    if cg_dir is not None:
        remove_cgroup(cg_dir)

    result = describe_exit(
        outcome.status,
        bool(bwrap) and not outcome.exact_status,
        outcome.timed_out,
        timeout,
        runtime,
        limits,
        stdout_path,
        stderr_path,
        oom_events,
    )
    if outcome.cancelled and not result["success"]:
        result["error_message"] = "cancelled: the caller gave up and the run was killed"
    stdout_inline = inline_text(stdout_path, inline_chars)
    stderr_inline = inline_text(stderr_path, inline_chars)
    after = snapshot_files(workdir)
    created = sorted(name for name, sig in after.items() if before.get(name) != sig)
    result.update(
        {
            "task_hash": meta["task_hash"],
            "session_id": meta["session_id"],
            "working_directory": workdir,
            "execution_time": round(outcome.elapsed, 4),
            "cpu_time": round(outcome.cpu_time, 4),
            "peak_memory_kb": peak_kb,
            "stdout": stdout_inline,
            "stderr": stderr_inline,
            "files_created": created[:MAX_FILES_LISTED],
            "files_created_truncated": len(created) > MAX_FILES_LISTED,
            "isolation": "bwrap" if bwrap else "none",
            "run_as_uid": run_uid if run_uid is not None else os.geteuid(),
            "limits_enforced": enforced,
            "stray_processes_killed": leftovers,
            "imds_guard": imds_guard_present(),
            "warnings": warnings,
        }
    )
    return result


class Outcome(object):
    """How a started run ended, as the runner saw it."""

    def __init__(self, status, cpu_time, maxrss_kb, elapsed, timed_out, cancelled, leftovers, exact_status):
        self.status = status
        self.cpu_time = cpu_time
        self.maxrss_kb = maxrss_kb
        self.elapsed = elapsed
        self.timed_out = timed_out
        self.cancelled = cancelled
        self.leftovers = leftovers
        # bubblewrap reports a program's death by signal N as exit status 128+N; a warm start sees the
        # program's own wait status.
        self.exact_status = exact_status


class ColdRun(object):
    """The runtime started as a new process (under bubblewrap or not), the runner's own child."""

    exact_status = False

    def __init__(self, argv, cwd, env, preexec, out_fd, err_fd, cg_dir):
        self.cg_dir = cg_dir
        self.proc = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=out_fd,
            stderr=err_fd,
            cwd=cwd,
            env=env,
            preexec_fn=preexec,
            close_fds=True,
        )

    def kill(self, grace):
        kill_group(self.proc.pid, self.cg_dir, grace)

    def wait(self):
        _, status, usage = os.wait4(self.proc.pid, 0)
        self.proc.returncode = status  # tell Popen the child is reaped
        return status, usage.ru_utime + usage.ru_stime, usage.ru_maxrss

    def leftovers(self):
        # Whatever the program left behind (background children, daemons) goes with it.
        return kill_group(self.proc.pid, self.cg_dir, grace=0)


class WarmStart(object):
    """A Python run forked from the zygote (see zygote.py); its end also ends its sandbox."""

    exact_status = True

    def __init__(self, zyg, run):
        self.zyg = zyg
        self.run = run

    def kill(self, grace):
        # Its sandbox is one pid namespace: a grace period would change nothing for the program.
        self.run.kill()

    def wait(self):
        try:
            return self.run.wait()
        finally:
            warm_done(self.zyg)

    def leftovers(self):
        return False


class Watchdog(object):
    """One thread for every run's wall-clock limit: a thread per run would cost more than a short run."""

    def __init__(self):
        self.cond = threading.Condition()
        self.alarms = []  # heap of (deadline, sequence, callback)
        self.active = set()
        self.sequence = 0
        self.thread = None

    def schedule(self, delay, callback):
        with self.cond:
            self.sequence += 1
            heapq.heappush(self.alarms, (time.monotonic() + delay, self.sequence, callback))
            self.active.add(self.sequence)
            if self.thread is None:
                self.thread = threading.Thread(target=self._loop, name="ec2-sandbox-watchdog", daemon=True)
                self.thread.start()
            self.cond.notify()
            return self.sequence

    def cancel(self, alarm):
        with self.cond:
            self.active.discard(alarm)

    def _loop(self):
        while True:
            with self.cond:
                while self.alarms and self.alarms[0][1] not in self.active:
                    heapq.heappop(self.alarms)
                if not self.alarms:
                    self.cond.wait()
                    continue
                deadline, alarm, callback = self.alarms[0]
                if deadline > time.monotonic():
                    self.cond.wait(deadline - time.monotonic())
                    continue
                heapq.heappop(self.alarms)
                self.active.discard(alarm)
            # Outside the lock: a kill may wait out its grace period.
            threading.Thread(target=callback, daemon=True).start()


WATCHDOG = Watchdog()


def watch(handle, started, timeout, task_hash):
    """Wait for a started run under its wall-clock limit, cancellable through ACTIVE_RUNS.

    Returns an Outcome, or None when a warm start reports that it could not set the run up.
    """
    timed_out = threading.Event()
    cancelled = threading.Event()

    def on_timeout():
        timed_out.set()
        handle.kill(KILL_GRACE_SECONDS)

    def on_cancel():
        cancelled.set()
        handle.kill(0)

    alarm = WATCHDOG.schedule(timeout, on_timeout)
    with ACTIVE_LOCK:
        ACTIVE_RUNS[task_hash] = on_cancel
    if STOPPING.is_set():  # told to stop while this run was being prepared
        on_cancel()
    try:
        status, cpu_time, maxrss_kb = handle.wait()
    except WarmSetupError:
        return None
    finally:
        WATCHDOG.cancel(alarm)
        with ACTIVE_LOCK:
            ACTIVE_RUNS.pop(task_hash, None)
    elapsed = time.monotonic() - started
    return Outcome(
        status,
        cpu_time,
        maxrss_kb,
        elapsed,
        timed_out.is_set(),
        cancelled.is_set(),
        handle.leftovers(),
        handle.exact_status,
    )


def start_streamer(req, stdout_path, stderr_path, emit):
    if not req.get("stream"):
        return None
    streamer = Streamer(stdout_path, stderr_path, emit)
    streamer.start()
    return streamer


# --------------------------------------------------------------------------------------------------
# Warm starts (zygote.py): only a long-lived runner keeps a zygote, and asks for it with "warm": true
# --------------------------------------------------------------------------------------------------

try:
    from . import zygote as _zygote_module

    WarmSetupError = _zygote_module.SetupError
except ImportError:  # the runner alone on a target, run as a script: no warm starts there
    _zygote_module = None

    class WarmSetupError(Exception):
        pass


# What CPython, the dynamic loader or libc read once at start-up: a zygote started earlier cannot honour
# them, so a run that sets any of them starts cold.
WARM_UNSAFE_ENV = re.compile(r"^(PYTHON|LC_|LD_|MALLOC_|GLIBC_)|^(LANG|LANGUAGE|HOME)$")
WARM_MAX_FAILURES = 3
_ZYGOTES = {}
_ZYGOTES_REFUSED = set()
_ZYGOTE_LOCK = threading.Lock()


def warm_zygote(req, runtime, argv, workdir):
    """The zygote for this run's interpreter and flags, started on first use; None when the run must start
    cold (not asked for, not a Python runtime, start-up-sensitive environment, or no zygote here)."""
    if _zygote_module is None or not req.get("warm") or runtime.get("warm_start") != "python":
        return None
    if runtime["argv"][-1:] != ["{file}"]:
        return None
    if any(WARM_UNSAFE_ENV.match(name) for name in req.get("env") or {}):
        return None
    # A user site directory (pip install --user in a session) is added to sys.path at start-up.
    if os.path.lexists(os.path.join(workdir, ".local")):
        return None
    key = tuple(argv[:-1])
    # An interpreter upgraded in place (a package update) gets a new zygote, as it would a cold start.
    st = os.stat(argv[0])
    version = (st.st_dev, st.st_ino, st.st_mtime_ns)
    with _ZYGOTE_LOCK:
        if key in _ZYGOTES_REFUSED:
            return None
        zyg = _ZYGOTES.get(key)
        if zyg is not None and (not zyg.alive() or zyg.version != version):
            retire(zyg)
            zyg = None
        if zyg is None:
            try:
                zyg = _zygote_module.Zygote(list(key), build_env({}, "/nonexistent", "/tmp"))
            except (OSError, WarmSetupError):
                _ZYGOTES_REFUSED.add(key)
                return None
            zyg.version = version
            _ZYGOTES[key] = zyg
    return zyg


def start_warm(zyg, warm_req, out_fd, err_fd):
    with _ZYGOTE_LOCK:
        zyg.inflight += 1
    try:
        return WarmStart(zyg, zyg.start(warm_req, out_fd, err_fd))
    except WarmSetupError:
        warm_done(zyg)
        warm_failed(zyg)
        return None


def warm_done(zyg):
    with _ZYGOTE_LOCK:
        zyg.inflight -= 1
        if zyg.retired and not zyg.inflight:
            zyg.close()


def warm_failed(zyg):
    """A zygote that keeps failing to set runs up is not asked again (each failure costs a cold start)."""
    with _ZYGOTE_LOCK:
        zyg.failures += 1
        if zyg.failures >= WARM_MAX_FAILURES:
            _ZYGOTES_REFUSED.update(key for key, value in _ZYGOTES.items() if value is zyg)
        if zyg.failures >= WARM_MAX_FAILURES or not zyg.alive():
            retire(zyg)


def retire(zyg):
    """Take no more runs to ``zyg``; it exits once its runs in flight are over (they die with it). Called
    with _ZYGOTE_LOCK held."""
    for key, value in list(_ZYGOTES.items()):
        if value is zyg:
            del _ZYGOTES[key]
    zyg.retired = True
    if not zyg.inflight:
        zyg.close()


def holder_argv(bwrap, workdir, network, hardened, limits, source_path):
    """The run's bubblewrap as a cold start would build it, reporting its pid, around a placeholder."""
    argv = bwrap_argv(
        bwrap, workdir, {}, network, None, hardened, limits["memory_mb"] * 1024 * 1024, [source_path]
    )
    return argv[:-1] + ["--as-pid-1", "--info-fd", "3", "--", resolve_executable("cat") or "/bin/cat"]


# Runs in progress in this process, by task hash, with how to stop each: a caller that gives up (an
# in-process transport cancelled, SIGTERM to a runner process) must not leave its program running.
ACTIVE_RUNS = {}
ACTIVE_LOCK = threading.Lock()


def cancel_run(task_hash):
    """Kill the run ``task_hash`` if it is in progress in this process; True if it was."""
    with ACTIVE_LOCK:
        stop = ACTIVE_RUNS.get(task_hash)
    if stop is None:
        return False
    stop()
    return True


# Set once this runner process is told to stop: a run that registers afterwards is killed at once.
STOPPING = threading.Event()


def cancel_all_runs(*_signal_args):
    STOPPING.set()
    with ACTIVE_LOCK:
        stops = list(ACTIVE_RUNS.values())
    for stop in stops:
        stop()


def make_cgroup(root, task_hash, limits, runtime):
    controllers = cgroup_controllers(root)
    path = os.path.join(root, task_hash)
    try:
        os.mkdir(path)
    except OSError:
        return None, []
    applied = []
    settings = []
    if "memory" in controllers:
        settings.append(("memory.max", str(limits["memory_mb"] * 1024 * 1024), "memory"))
        settings.append(("memory.swap.max", "0", None))
    if "pids" in controllers:
        settings.append(("pids.max", str(limits["processes"]), "pids"))
    if "cpu" in controllers:
        settings.append(("cpu.max", "100000 100000", "cpu"))
    for name, value, label in settings:
        try:
            with open(os.path.join(path, name), "w") as fh:
                fh.write(value)
            if label:
                applied.append(label)
        except OSError:
            pass
    if os.path.exists(os.path.join(path, "cgroup.kill")):
        applied.append("kill")
    return path, applied


def cgroup_peak_kb(cg_dir):
    if cg_dir is None:
        return None
    try:
        with open(os.path.join(cg_dir, "memory.peak")) as fh:
            return int(fh.read().split()[0]) // 1024
    except (OSError, ValueError, IndexError):
        return None


def cgroup_oom_kills(cg_dir):
    if cg_dir is None:
        return 0
    try:
        with open(os.path.join(cg_dir, "memory.events")) as fh:
            for line in fh:
                key, _, value = line.partition(" ")
                if key == "oom_kill":
                    return int(value)
    except OSError:
        pass
    return 0


def remove_cgroup(cg_dir):
    for _ in range(50):
        try:
            os.rmdir(cg_dir)
            return
        except OSError as exc:
            if exc.errno != errno.EBUSY:
                return
            time.sleep(0.01)


def kill_group(pgid, cg_dir, grace=KILL_GRACE_SECONDS):
    """Kill the run's process group (and cgroup): SIGTERM, a grace period, SIGKILL. True if any was left."""
    found = False
    if grace:
        try:
            os.killpg(pgid, signal.SIGTERM)
            found = True
        except ProcessLookupError:
            pass
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline and group_alive(pgid):
            time.sleep(0.02)
    try:
        os.killpg(pgid, signal.SIGKILL)
        found = True
    except ProcessLookupError:
        pass
    if cg_dir is not None:
        try:
            with open(os.path.join(cg_dir, "cgroup.procs")) as fh:
                members = fh.read().split()
            if members:
                found = True
                with open(os.path.join(cg_dir, "cgroup.kill"), "w") as fh:
                    fh.write("1")
        except OSError:
            pass
    return found


def group_alive(pgid):
    try:
        os.killpg(pgid, 0)
        return True
    except ProcessLookupError:
        return False
    except PermissionError:
        return True


SIGNAL_CAUSES = {
    signal.SIGXCPU: "cpu_time_limit",
    signal.SIGXFSZ: "file_size_limit",
}
# Python and Node turn these limits into exceptions instead of dying of the signal.
FSIZE_MARKERS = ["File too large", "EFBIG", "File size limit exceeded"]
# Any runtime: allocation failures that name memory (the runtime's own oom_markers come first).
MEMORY_MARKERS = ["MemoryError", "Array buffer allocation failed", "Cannot allocate memory", "std::bad_alloc"]
NPROC_MARKERS = ["Resource temporarily unavailable", "EAGAIN", "can't start new thread"]


def describe_exit(
    status, via_bwrap, timed_out, timeout, runtime, limits, stdout_path, stderr_path, oom_kills
):
    """Name why a run ended, from evidence: the wait status, the cgroup's events, the limits, the output."""
    if os.WIFSIGNALED(status):
        sig, code = os.WTERMSIG(status), -os.WTERMSIG(status)
    else:
        sig, code = None, os.WEXITSTATUS(status)
        # bwrap reports a child killed by signal N as exit status 128+N; it has no other channel.
        if via_bwrap and 128 < code < 128 + 65:
            sig, code = code - 128, -(code - 128)
    fsize = limits["file_size_mb"] * 1024 * 1024
    failed = code != 0
    if timed_out:
        reason = "timeout"
    elif oom_kills:
        reason = "memory_limit"
    elif failed and any(size_of(p) >= fsize for p in (stdout_path, stderr_path)):
        reason = "output_limit"
    elif sig in SIGNAL_CAUSES:
        reason = SIGNAL_CAUSES[sig]
    elif failed and tail_mentions(stderr_path, (runtime.get("oom_markers") or []) + MEMORY_MARKERS):
        reason = "memory_limit"
    elif failed and tail_mentions(stderr_path, FSIZE_MARKERS):
        reason = "file_size_limit"
    elif failed and tail_mentions(stderr_path, NPROC_MARKERS):
        reason = "process_limit"
    elif sig is not None:
        reason = "signal"
    else:
        reason = "exited"
    messages = {
        "timeout": "timed out: the run was killed after its %g s limit" % timeout,
        "memory_limit": "ran out of memory: the limit is %d MB" % limits["memory_mb"],
        "cpu_time_limit": "used up its CPU-time limit of %d s" % limits["cpu_seconds"],
        "file_size_limit": "wrote a file past the %d MB file-size limit" % limits["file_size_mb"],
        "output_limit": "printed more than the %d MB output limit; the output up to it is kept"
        % limits["file_size_mb"],
        "process_limit": "hit the limit of %d processes" % limits["processes"],
        "signal": "killed by signal %s (%s)" % (sig, signal_name(sig)),
    }
    if reason != "exited":
        error = messages[reason]
        if reason == "timeout" and tail_mentions(stderr_path, NPROC_MARKERS):
            error += "; it had also hit the limit of %d processes" % limits["processes"]
    elif failed:
        error = "exited with status %d" % code
    else:
        error = None
    return {
        "success": reason == "exited" and not failed,
        "return_code": code,
        "signal": sig,
        "termination_reason": reason,
        "timed_out": timed_out,
        "error_message": error,
    }


def signal_name(sig):
    try:
        return signal.Signals(sig).name
    except (ValueError, TypeError):
        return "unknown"


def size_of(path):
    try:
        return os.path.getsize(path)
    except OSError:
        return 0


def tail_mentions(path, markers):
    if not markers:
        return False
    with open(path, "rb") as fh:
        fh.seek(max(0, size_of(path) - 8192))
        tail = fh.read().decode("utf-8", "replace")
    return any(m in tail for m in markers)


def inline_text(path, limit):
    """Head and tail of a captured stream, at most ``limit`` characters, with what was left out."""
    size = size_of(path)
    with open(path, "rb") as fh:
        if size <= limit:
            data = fh.read()
            text = data.decode("utf-8", "replace")
            if len(text) <= limit:
                return {
                    "text": text,
                    "bytes": size,
                    "truncated": False,
                    "omitted_bytes": 0,
                    "valid_utf8": is_utf8(data),
                }
            fh.seek(0)
        head_len = limit // 2
        tail_len = limit - head_len
        # UTF-8 is at most 4 bytes a character: reading 4x the characters is always enough.
        head_raw = fh.read(head_len * 4)
        fh.seek(max(0, size - tail_len * 4))
        tail_raw = fh.read()
    head = head_raw.decode("utf-8", "replace")[:head_len]
    tail = tail_raw.decode("utf-8", "replace")[-tail_len:] if tail_len else ""
    shown = len(head.encode("utf-8", "replace")) + len(tail.encode("utf-8", "replace"))
    omitted = max(0, size - shown)
    return {
        "text": head + tail,
        "head_chars": len(head),
        "bytes": size,
        "truncated": True,
        "omitted_bytes": omitted,
        "valid_utf8": is_utf8(head_raw) and is_utf8(tail_raw),
    }


def is_utf8(data):
    try:
        data.decode("utf-8")
        return True
    except UnicodeDecodeError:
        # A multi-byte character cut at the edge of a read is not an encoding error.
        try:
            data[:-3].decode("utf-8")
            return True
        except UnicodeDecodeError:
            return False


def snapshot_files(root):
    """name -> (size, mtime_ns) of every regular file below ``root``, never following symlinks."""
    found = {}
    for dirpath, dirnames, filenames in os.walk(root):
        rel_dir = os.path.relpath(dirpath, root)
        if rel_dir == ".":
            dirnames[:] = [d for d in dirnames if d != ".tmp"]
        for name in filenames:
            path = os.path.join(dirpath, name)
            try:
                st = os.lstat(path)
            except OSError:
                continue
            if stat.S_ISREG(st.st_mode) or stat.S_ISLNK(st.st_mode):
                rel = name if rel_dir == "." else os.path.join(rel_dir, name)
                found[rel] = (st.st_size, st.st_mtime_ns, st.st_ino)
        if len(found) > MAX_FILES_LISTED * 10:
            break
    return found


class Streamer(object):
    """Follows the capture files and emits new bytes as events, in order, while the run goes on."""

    def __init__(self, stdout_path, stderr_path, emit):
        self.paths = (("stdout", stdout_path), ("stderr", stderr_path))
        self.offsets = {"stdout": 0, "stderr": 0}
        self.emit = emit
        self.done = threading.Event()
        self.thread = threading.Thread(target=self._loop, daemon=True)

    def start(self):
        self.thread.start()

    def stop(self):
        self.done.set()
        self.thread.join()
        self._pump()

    def _loop(self):
        while not self.done.wait(0.05):
            self._pump()

    def _pump(self):
        for name, path in self.paths:
            with open(path, "rb") as fh:
                fh.seek(self.offsets[name])
                data = fh.read(1 << 20)
            if data:
                self.offsets[name] += len(data)
                self.emit({"stream": name, "b64": base64.b64encode(data).decode("ascii")})


# --------------------------------------------------------------------------------------------------
# Reading files back, cleaning up, probing
# --------------------------------------------------------------------------------------------------


def task_root(base, meta):
    return meta["workdir"]


def list_files(req):
    base = prepare_base(req.get("base_dir"))
    meta = load_record(base, req["task_hash"])
    root = task_root(base, meta)
    safe_owner = meta.get("uid") if os.geteuid() == 0 else None
    files = []
    skipped = []
    if os.path.isdir(root):
        for dirpath, dirnames, filenames in os.walk(root):
            rel_dir = os.path.relpath(dirpath, root)
            if rel_dir == ".":
                dirnames[:] = [d for d in dirnames if d != ".tmp"]
            for d in dirnames:
                if os.path.islink(os.path.join(dirpath, d)):
                    rel = d if rel_dir == "." else os.path.join(rel_dir, d)
                    skipped.append({"path": rel, "reason": "symlink (never followed)"})
            dirnames.sort()
            for name in sorted(filenames):
                rel = name if rel_dir == "." else os.path.join(rel_dir, name)
                st = os.lstat(os.path.join(dirpath, name))
                if stat.S_ISLNK(st.st_mode):
                    skipped.append({"path": rel, "reason": "symlink (never followed)"})
                elif not stat.S_ISREG(st.st_mode):
                    skipped.append({"path": rel, "reason": "not a regular file"})
                elif not file_is_safe(st, safe_owner):
                    skipped.append({"path": rel, "reason": "hard link to a file the task does not own"})
                else:
                    files.append({"path": rel, "size": st.st_size})
                if len(files) >= MAX_FILES_LISTED:
                    break
    streams = []
    for name, fname in sorted(STREAMS.items()):
        streams.append(
            {
                "path": name,
                "size": size_of(os.path.join(record_dir(base, meta["task_hash"]), fname)),
            }
        )
    return {
        "task_hash": meta["task_hash"],
        "session_id": meta.get("session_id"),
        "working_directory": root,
        "exists": os.path.isdir(root),
        "files": files,
        "streams": streams,
        "skipped": skipped,
        "truncated": len(files) >= MAX_FILES_LISTED,
    }


def read_file(req):
    base = prepare_base(req.get("base_dir"))
    meta = load_record(base, req["task_hash"])
    name = req["path"]
    offset = int(req.get("offset") or 0)
    length = int(req.get("length") or 1 << 20)
    if offset < 0 or length < 0:
        raise RunnerError("invalid_input", "offset and length must not be negative")
    if name in STREAMS:
        path = os.path.join(record_dir(base, meta["task_hash"]), STREAMS[name])
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        size = os.fstat(fd).st_size
    else:
        safe_owner = meta.get("uid") if os.geteuid() == 0 else None
        fd, st = open_file_in(task_root(base, meta), name, safe_owner)
        size = st.st_size
    try:
        os.lseek(fd, offset, os.SEEK_SET)
        chunks = []
        remaining = length
        while remaining > 0:
            chunk = os.read(fd, min(remaining, 1 << 20))
            if not chunk:
                break
            chunks.append(chunk)
            remaining -= len(chunk)
    finally:
        os.close(fd)
    data = b"".join(chunks)
    return {
        "path": name,
        "size": size,
        "offset": offset,
        "b64": base64.b64encode(data).decode("ascii"),
    }


WORKDIR_KINDS = (
    (TASKS, "task", TASK_HASH_RE),
    (EPHEMERAL, "task", TASK_HASH_RE),
    (SESSIONS, "session", SESSION_ID_RE),
)


def inventory(req):
    """Every task, session and run record under the base dir, with its age, for a cleanup policy to choose."""
    base = prepare_base(req.get("base_dir"))
    want_sizes = bool(req.get("sizes"))
    entries = []
    for sub, kind, pattern in WORKDIR_KINDS + ((RUNS, "run", TASK_HASH_RE),):
        root = os.path.join(base, sub)
        for name in sorted(os.listdir(root)):
            path = os.path.join(root, name)
            if not pattern.match(name) or not is_real_dir(path):
                continue
            entry = {"kind": kind, "id": name, "mtime": os.lstat(path).st_mtime}
            if kind == "run":
                try:
                    meta = load_record(base, name)
                    entry["session_id"] = meta.get("session_id")
                except (RunnerError, ValueError):
                    entry["session_id"] = None
            if want_sizes:
                entry["bytes"] = tree_size(path)
            entries.append(entry)
    return {"base_dir": base, "now": time.time(), "entries": entries}


def tree_size(path):
    total = 0
    for dirpath, _dirs, files in os.walk(path):
        for name in files:
            try:
                total += os.lstat(os.path.join(dirpath, name)).st_blocks * 512
            except OSError:
                pass
    return total


def remove(req):
    """Remove the named tasks, sessions and run records; nothing outside the base dir can be named."""
    base = prepare_base(req.get("base_dir"))
    removed = []
    released = []
    for item in req.get("entries") or []:
        kind, name = item.get("kind"), item.get("id")
        if kind == "session":
            subs, pattern = (SESSIONS,), SESSION_ID_RE
        elif kind == "task":
            subs, pattern = (TASKS, EPHEMERAL), TASK_HASH_RE
        elif kind == "run":
            subs, pattern = (RUNS,), TASK_HASH_RE
        else:
            raise RunnerError("invalid_input", "cannot remove a %r; kinds are task, session, run" % (kind,))
        if not isinstance(name, str) or not pattern.match(name):
            raise RunnerError("invalid_input", "%r is not a valid %s id" % (name, kind))
        for sub in subs:
            path = os.path.join(base, sub, name)
            if os.path.lexists(path) and is_real_dir(path):
                remove_tree(path)
                removed.append({"kind": kind, "id": name})
                if kind != "run":
                    released.append(kind + ":" + name)
    if os.geteuid() == 0:
        UidPool(base, *SANDBOX_UID_RANGE).release(released)
    return {"base_dir": base, "removed": removed}


def is_real_dir(path):
    st = os.lstat(path)
    return stat.S_ISDIR(st.st_mode)


def remove_tree(path):
    def onerror(func, target, exc_info):
        # Code may have made a dir unreadable to its owner; the owner may open it again.
        try:
            os.chmod(os.path.dirname(target), 0o700)
            os.chmod(target, 0o700) if os.path.isdir(target) and not os.path.islink(target) else None
            func(target)
        except OSError:
            pass

    shutil.rmtree(path, onerror=onerror)


def probe(req):
    base = prepare_base(req.get("base_dir"))
    runtimes = []
    for rt in req.get("runtimes") or []:
        runtimes.append(probe_runtime(rt))
    usage = shutil.disk_usage(base)
    bwrap = find_bwrap()
    privileged = os.geteuid() == 0
    cg = cgroup_root()
    controllers = cgroup_controllers(cg) if cg else []
    return {
        "runner_python": "%d.%d.%d" % sys.version_info[:3],
        "base_dir": base,
        "disk_free_bytes": usage.free,
        "disk_total_bytes": usage.total,
        "privileged": privileged,
        "bwrap": bwrap,
        "bwrap_usable": bool(bwrap) and bwrap_works(bwrap, SANDBOX_UID_RANGE[0] if privileged else None),
        "cgroup": cg,
        "cgroup_controllers": controllers,
        "cgroup_kill": bool(cg) and os.path.exists(os.path.join(cg, "cgroup.kill")),
        "imds_guard": imds_guard_present(),
        "on_ec2": on_ec2(),
        "netns_usable": netns_works(),
        "runtimes": runtimes,
    }


def probe_runtime(rt):
    argv = list(rt.get("version_argv") or [])
    info = {"name": rt["name"], "available": False, "version": None, "executable": None}
    if not argv:
        return info
    exe = resolve_executable(argv[0])
    if exe is None:
        info["error"] = "%s not found on PATH %s" % (argv[0], SYSTEM_PATH)
        return info
    info["executable"] = exe
    try:
        res = subprocess.run(
            [exe] + argv[1:],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            timeout=10,
            env={"PATH": SYSTEM_PATH, "LANG": "C.UTF-8"},
        )
    except (OSError, subprocess.SubprocessError) as exc:
        info["error"] = str(exc)
        return info
    text = res.stdout.decode("utf-8", "replace").strip()
    info["available"] = res.returncode == 0
    info["version"] = text.splitlines()[0] if text else None
    return info


OPS = {
    "run": run_task,
    "list": list_files,
    "read": read_file,
    "inventory": inventory,
    "remove": remove,
    "probe": probe,
}


def handle(req, emit=None):
    """Serve one request; never raises. Returns the envelope dict."""
    emit = emit or (lambda event: None)
    try:
        if not isinstance(req, dict) or req.get("v") != PROTOCOL:
            raise RunnerError("protocol", "request is not a version-%d runner request" % PROTOCOL)
        op = OPS.get(req.get("op"))
        if op is None:
            raise RunnerError("protocol", "unknown op %r" % (req.get("op"),))
        if req.get("op") == "run":
            return {"ok": True, "result": op(req, emit)}
        return {"ok": True, "result": op(req)}
    except RunnerError as exc:
        return {"ok": False, "error": {"kind": exc.kind, "message": exc.message}}
    except Exception as exc:
        return {
            "ok": False,
            "error": {"kind": "internal", "message": "%s: %s" % (type(exc).__name__, exc)},
        }


def respond(req, emit=None):
    """Serve one request; return its envelope as one JSON line's text, fitted under the request's cap."""
    envelope = handle(req, emit)
    return fit_envelope(envelope, req.get("max_envelope_chars") if isinstance(req, dict) else None)


def shrink_stream(stream, limit):
    """Cut an inline stream to ``limit`` characters, keeping its head and tail, and account for the cut."""
    text = stream["text"]
    if len(text) <= limit:
        return
    head_chars = stream.get("head_chars", len(text)) if stream["truncated"] else len(text)
    head = text[: min(head_chars, limit // 2)]
    tail_len = limit - len(head)
    tail_src = text[head_chars:] if stream["truncated"] else text[len(head) :]
    tail = tail_src[-tail_len:] if tail_len else ""
    stream["text"] = head + tail
    stream["head_chars"] = len(head)
    stream["truncated"] = True
    shown = len(head.encode("utf-8", "replace")) + len(tail.encode("utf-8", "replace"))
    stream["omitted_bytes"] = max(0, stream["bytes"] - shown)


def fit_envelope(envelope, max_chars):
    """Serialise the envelope, shrinking inline output until the line fits a transport's output cap."""
    line = json.dumps({"envelope": envelope}, separators=(",", ":"))
    result = envelope.get("result") or {}
    streams = [result[k] for k in ("stdout", "stderr") if isinstance(result.get(k), dict)]
    while max_chars and len(line) > max_chars and any(s["text"] for s in streams):
        # Escaping makes a character cost 1 to 6 in JSON: scale every stream by the overshoot and retry.
        factor = max_chars / float(len(line)) * 0.9
        for stream in streams:
            limit = int(len(stream["text"]) * factor)
            shrink_stream(stream, limit if limit >= 16 else 0)
        line = json.dumps({"envelope": envelope}, separators=(",", ":"))
    return line


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    out = sys.stdout
    lock = threading.Lock()
    # The caller giving up (a cancelled SSM command, a terminated local subprocess) kills the run's
    # program; the envelope still follows, for whoever is still listening.
    signal.signal(signal.SIGTERM, cancel_all_runs)

    def emit(event):
        with lock:
            out.write(json.dumps({"event": event}, separators=(",", ":")) + "\n")
            out.flush()

    try:
        if argv:
            with open(argv[0], "rb") as fh:
                raw = fh.read()
        else:
            raw = sys.stdin.buffer.read()
        req = json.loads(raw.decode("utf-8"))
    except (OSError, ValueError) as exc:
        error = {"kind": "protocol", "message": "cannot read the request: %s" % exc}
        text = fit_envelope({"ok": False, "error": error}, None)
    else:
        text = respond(req, emit)
    with lock:
        out.write(text + "\n")
        out.flush()
    return 0


if __name__ == "__main__":
    code = main()
    sys.exit(RESERVED_EXIT.get(code, code))
