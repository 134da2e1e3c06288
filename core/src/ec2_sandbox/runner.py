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
import select
import shutil
import signal
import socket
import stat
import struct
import subprocess
import sys
import threading
import time
import types
import warnings

# The runner imports only what it uses at run time (typing costs milliseconds at every start).
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any, Callable

PROTOCOL = 1
SYSTEM_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
TASK_HASH_RE = re.compile(r"^[0-9a-f]{12,64}$")
SESSION_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
ENV_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
STREAMS = {"@stdout": "stdout", "@stderr": "stderr"}
# Directories under the base dir, one per kind of thing the runner keeps.
TASKS, SESSIONS, EPHEMERAL, RUNS, LOCKS = "tasks", "sessions", "ephemeral", "runs", "locks"
# A session's /tmp (the same for all its runs and its interpreter), and its interpreter's host files.
SESSION_TMP, KERNELS = "session-tmp", "kernels"
KILL_GRACE_SECONDS = 0.5
MAX_FILES_LISTED = 10000
# Exit statuses SSM gives a meaning of its own; the runner maps them away.
RESERVED_EXIT = {137: 3, 194: 3}
SANDBOX_UID_RANGE = (200000, 65536)  # first uid, count: one uid per session or session-less task
# The range's last uid is no run's: it owns the files of tasks whose uid was recycled (UidPool), and the
# bubblewrap probe runs as it, so that no probe is ever a process of a session's uid.
RESERVED_UID = SANDBOX_UID_RANGE[0] + SANDBOX_UID_RANGE[1] - 1


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
# Trees the sandbox can write: walked and removed through dir fds only
#
# Code in a session may be running while the runner lists or removes its dir, renaming entries and planting
# links as it goes. So every step below opens the next dir relative to the fd of the one before, refusing
# links (O_NOFOLLOW); nothing is ever resolved as a path again, and no mode is changed through a path.
# --------------------------------------------------------------------------------------------------

O_DIR_NOFOLLOW = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
# Deeper than this, a walk stops descending (a listing notes it) and a removal moves the subtree up to
# the top before going on: an attacker's 10,000-deep tree costs neither 10,000 fds nor the stack.
MAX_WALK_DEPTH = 64


def open_dir_at(parent_fd, name):
    return os.open(name, O_DIR_NOFOLLOW, dir_fd=parent_fd)


def walk_tree(root_fd, skip_top=(), max_entries=None):
    """Yield ``(relative path, lstat result)`` for everything below ``root_fd``, dirs before their contents.

    Symlinks are reported, never followed; a dir replaced by a link between its listing and its opening is
    skipped (the open refuses the link). Entries deeper than MAX_WALK_DEPTH are reported as one
    ``(path, None)`` item for the dir that was not entered.
    """
    stack = [(os.dup(root_fd), "", 0)]
    seen = 0
    try:
        while stack:
            fd, prefix, depth = stack.pop()
            try:
                with os.scandir(fd) as it:
                    entries = sorted(it, key=lambda e: e.name, reverse=True)
                for entry in entries:
                    if not prefix and entry.name in skip_top:
                        continue
                    try:
                        st = entry.stat(follow_symlinks=False)
                    except OSError:
                        continue
                    rel = prefix + entry.name
                    seen += 1
                    if max_entries is not None and seen > max_entries:
                        return
                    yield rel, st
                    if not stat.S_ISDIR(st.st_mode):
                        continue
                    if depth + 1 >= MAX_WALK_DEPTH:
                        yield rel + "/", None
                        continue
                    try:
                        stack.append((open_dir_at(fd, entry.name), rel + "/", depth + 1))
                    except OSError:
                        continue
            except OSError:
                pass
            finally:
                os.close(fd)
    finally:
        for fd, _, _ in stack:
            os.close(fd)


def remove_at(parent_fd, name):
    """Remove ``name`` (below ``parent_fd``) and everything in it; True when it is gone.

    Only ever unlinks and rmdirs relative to a dir fd that was opened without following links, so a link
    planted mid-way is removed as a link, never followed. A privileged runner needs no mode change (root
    passes permission checks); an unprivileged one makes its own dirs writable again through the fd it holds.
    """
    for _ in range(3):
        if _removed(os.unlink, parent_fd, name, NOT_A_FILE):
            return True
        fd = _open_dir_for_removal(parent_fd, name)
        if fd is None:
            continue  # replaced by a non-dir meanwhile: unlink again
        try:
            _empty_dir(fd)
        finally:
            os.close(fd)
        if _removed(os.rmdir, parent_fd, name, (errno.ENOTEMPTY, errno.EEXIST, errno.ENOTDIR)):
            return True
    return False


# What unlink says of a dir (EISDIR), or of an entry it may not remove as it stands (EPERM, EACCES).
NOT_A_FILE = (errno.EISDIR, errno.EPERM, errno.EACCES)


def _removed(remove_call, dir_fd, name, retry_errnos):
    """True once ``name`` is gone; False when ``remove_call`` failed with one of ``retry_errnos``."""
    try:
        remove_call(name, dir_fd=dir_fd)
    except FileNotFoundError:
        pass
    except OSError as exc:
        if exc.errno not in retry_errnos:
            raise
        return False
    return True


def _open_dir_for_removal(parent_fd, name):
    try:
        return open_dir_at(parent_fd, name)
    except OSError as exc:
        if exc.errno in (errno.ELOOP, errno.ENOTDIR, errno.ENOENT):
            return None
        if exc.errno != errno.EACCES:
            raise
    # Ours but closed to us (code chmod'ed it 000): reopen it by fd, never by path. O_PATH holds the very
    # inode the walk reached; /proc/self/fd/N names that inode, not the path.
    pfd = os.open(name, os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=parent_fd)
    try:
        os.chmod("/proc/self/fd/%d" % pfd, 0o700)
        return os.open("/proc/self/fd/%d" % pfd, O_DIR_NOFOLLOW)
    finally:
        os.close(pfd)


def _empty_dir(top_fd):
    """Remove everything in the dir ``top_fd``; a subtree deeper than MAX_WALK_DEPTH is first moved up."""
    for _ in range(200):
        if os.geteuid() != 0:
            os.fchmod(top_fd, 0o700)
        if not _empty_level(top_fd, top_fd, 0):
            return


def _empty_level(fd, top_fd, depth):
    """One pass over ``fd``; True when a deep subtree was moved up to ``top_fd`` (another pass is due)."""
    moved = False
    for name in os.listdir(fd):
        if _removed(os.unlink, fd, name, NOT_A_FILE):
            continue
        if depth + 1 >= MAX_WALK_DEPTH:
            os.rename(name, ".rm-%s" % os.urandom(8).hex(), src_dir_fd=fd, dst_dir_fd=top_fd)
            moved = True
            continue
        sub = _open_dir_for_removal(fd, name)
        if sub is None:
            continue
        try:
            if os.geteuid() != 0:
                os.fchmod(sub, 0o700)
            moved = _empty_level(sub, top_fd, depth + 1) or moved
        finally:
            os.close(sub)
        try:
            os.rmdir(name, dir_fd=fd)
        except OSError as exc:
            if exc.errno == errno.ENOTDIR:  # replaced by a link or a file while it was emptied
                try:
                    os.unlink(name, dir_fd=fd)
                except FileNotFoundError:
                    pass
            elif exc.errno not in (errno.ENOENT, errno.ENOTEMPTY):
                raise
            moved = moved or exc.errno != errno.ENOENT
    return moved


# --------------------------------------------------------------------------------------------------
# The base dir and its bookkeeping
# --------------------------------------------------------------------------------------------------


def default_base_dir():
    if os.geteuid() == 0:
        return "/var/lib/ec2-sandbox"
    state = os.environ.get("XDG_STATE_HOME") or os.path.join(os.path.expanduser("~"), ".local", "state")
    return os.path.join(state, "ec2-sandbox")


_PREPARED: "set[str]" = set()


def prepare_base(base_dir):
    base = os.path.abspath(base_dir or default_base_dir())
    if base in _PREPARED:
        # In-process runners serve many requests; the layout was checked on the first one.
        return base
    privileged = os.geteuid() == 0
    os.makedirs(base, exist_ok=True)
    # Privileged: others may traverse (each work dir is then closed to all but its own uid) but not list.
    mode = 0o711 if privileged else 0o700
    for sub in ("", TASKS, SESSIONS, EPHEMERAL, SESSION_TMP):
        path = os.path.join(base, sub)
        ensure_dir(path, mode)
    # Runs stay root's; privileged, a run's uid must traverse to its own program (never list the others).
    ensure_dir(os.path.join(base, RUNS), mode)
    ensure_dir(os.path.join(base, LOCKS), 0o700)
    ensure_dir(os.path.join(base, KERNELS), 0o700)
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
            raw = fh.read()
    except FileNotFoundError:
        raise RunnerError("not_found", "no task %s on this target (it may have been cleaned up)" % task_hash)
    if not raw:
        # Made, and held, by a run that is still writing its inputs (Workspace.open, then write_record).
        raise RunnerError("not_found", "task %s is still starting; ask again in a moment" % task_hash)
    return json.loads(raw.decode("utf-8"))


class UseLock(object):
    """Held, shared, by every run of a task or session while it goes on; taken exclusively by cleanup.

    A task's lock is its record's meta.json, a session's a file of its own in ``<base>/locks``: both the
    runner's alone. Their mtime is when the task or session was last used, evidence that code in the
    sandbox cannot touch, unlike a work dir's own mtime. Cleanup unlinks a session's lock under the exclusive
    hold, so a run that opened it just before checks that it still has a link. With ``create`` false, a
    missing file means nothing holds it (``fd`` is None).
    """

    def __init__(self, path, exclusive=False, create=True):
        self.path = path
        self.fd = None
        flags = os.O_RDWR | os.O_NOFOLLOW | os.O_CLOEXEC | (os.O_CREAT if create else 0)
        for _ in range(100):
            try:
                fd = os.open(path, flags, 0o600)
            except FileNotFoundError:
                if create:
                    raise
                return
            try:
                fcntl.flock(fd, (fcntl.LOCK_EX | fcntl.LOCK_NB) if exclusive else fcntl.LOCK_SH)
            except OSError:
                os.close(fd)
                raise InUse()
            if os.fstat(fd).st_nlink:
                self.fd = fd
                return
            os.close(fd)  # cleanup removed it after we opened it: take the new one
        raise RunnerError("environment", "could not lock %s" % path)

    def touch(self):
        os.utime(self.fd)

    def release(self, unlink=False):
        if self.fd is None:
            return
        if unlink:
            try:
                os.unlink(self.path)
            except OSError:
                pass
        os.close(self.fd)
        self.fd = None


def session_lock_path(base, session_id):
    return os.path.join(base, LOCKS, "session." + session_id)


def task_lock_path(base, task_hash):
    return os.path.join(record_dir(base, task_hash), "meta.json")


class InUse(Exception):
    """Cleanup found a run in progress (or a live process) where it meant to remove something."""


def last_used(*paths):
    """When a task or session was last used: the mtime of the first of ``paths`` that exists (the runner's
    own record first, its dir after)."""
    for path in paths:
        try:
            return os.lstat(path).st_mtime
        except OSError:
            continue
    return 0.0


# Machine-wide claims on sandbox uids (one file per uid, naming the base dir that holds it): two base dirs
# on one machine must never hand the same uid to two sessions. Persistent, as the files a uid owns are.
UID_CLAIMS_DIR = "/var/lib/ec2-sandbox/.uid-claims"


class UidPool(object):
    """Hands out one unprivileged uid per session (or per session-less task).

    Two holders never share a uid, so neither can read, write or signal the other's processes and files. The
    pool is per base dir, a small file per uid under ``runs/uids/`` (``u-<xx>/u.<uid>``: its holder's key,
    or FREE), written over in place by each holder in turn, and one per session (``k-<xx>/k.<digest of
    key>``: its uid; a session holds a uid while the two files name each other); a task's record names
    its uid. They are spread over 256 dirs of each kind made with the pool: a claim writes two or three
    small files, creates none once the range has gone round, and no dir holds more than a few hundred
    entries, whatever the number of past runs. Uids go round in order, so the one after the last handed
    out is the one held longest. A claim file per uid in UID_CLAIMS_DIR keeps other base dirs
    off the same uid.

    There is no limit on runs between cleanups: when the next uid is still held by a finished task, the
    uid is recycled. The task's files are first given to :attr:`retired` (the range's last uid, which no
    run ever gets) and its record names that owner, so the uid's next holder cannot reach them, by path or
    by hard link, while the task's output stays readable. Sessions, and tasks with a run in progress or a
    live process, keep their uid until cleanup. Uids are recycled :attr:`RECYCLE_BATCH` at a time (the
    next ones in turn held by tasks), for one look at the machine's processes: the claims after it find
    their uid free.
    """

    #: Uids taken back at once from finished tasks, for one pass over /proc.
    RECYCLE_BATCH = 256
    #: The pool dir's layout: "2" spread the files over subdirs (an earlier version kept them flat), "3"
    #: keeps no file per task (a task's record names its uid).
    LAYOUT = "3"
    #: What a free uid's file says.
    FREE = "-"

    def __init__(self, base, first, count):
        self.base = base
        self.dir = os.path.join(base, RUNS, "uids")
        self.legacy = os.path.join(base, RUNS, "uids.json")
        self.first = first
        #: The range's last uid owns the files of tasks whose uid was recycled; no run gets it.
        self.retired = first + count - 1
        self.count = count - 1

    # ------------------------------------------------------------------ storage
    def _key_file(self, key):
        digest = hashlib.sha256(key.encode("utf-8")).hexdigest()[:40]
        return "k-%s/k.%s" % (digest[:2], digest)

    def _uid_file(self, uid):
        return "u-%02x/u.%d" % (uid & 0xFF, uid)

    def _read(self, name):
        try:
            fd = os.open(os.path.join(self.dir, name), os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        except (FileNotFoundError, NotADirectoryError):
            return None
        try:
            return os.read(fd, 4096).decode("utf-8", "replace")
        finally:
            os.close(fd)

    def _write(self, name, text):
        # In place: every pool file is written under the pool's lock. One a killed runner left mixed names
        # no session (their holds are checked both ways), or a task of no run, which recycling takes back
        # like any finished task's. Written over, never truncated to nothing first: ext4 writes a file
        # truncated to zero out at its close.
        data = text.encode("utf-8")
        fd = os.open(
            os.path.join(self.dir, name), os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600
        )
        try:
            os.pwrite(fd, data, 0)
            if os.fstat(fd).st_size > len(data):
                os.ftruncate(fd, len(data))
        finally:
            os.close(fd)

    def _unlink(self, name):
        try:
            os.unlink(os.path.join(self.dir, name))
        except FileNotFoundError:
            pass

    def _held(self, key):
        """The uid ``key`` holds, or None: the uid the holder's side names (a task's record, a session's
        file in the pool), if the uid's file names ``key`` back."""
        if key.startswith("task:"):
            uid = self._recorded_uid(key[5:])
        else:
            raw = self._read(self._key_file(key))
            uid = int(raw) if raw is not None and raw.isdigit() else None
        return uid if uid is not None and self._read(self._uid_file(uid)) == key else None

    def _recorded_uid(self, task_hash):
        """The uid a task's record names (its run writes it once it holds one)."""
        try:
            uid = load_record(self.base, task_hash).get("uid")
        except (RunnerError, OSError, ValueError, AttributeError):
            return None
        return uid if isinstance(uid, int) else None

    def _holder(self, uid):
        """The key holding ``uid``, or None. A uid's file outlives its holder: it is written over by the
        next, or with FREE. A task holds the uid its file names (a task has one run, which claims once;
        its uid goes back by release or recycling, both of which write the file); a session only while
        its own file names the uid back (a file a killed runner left half written names nobody)."""
        key = self._read(self._uid_file(uid))
        if not key or key == self.FREE:
            return None
        if key.startswith("task:"):
            return key if TASK_HASH_RE.match(key[5:]) else None
        return key if self._held(key) == uid else None

    def _locked(self, work):
        if self.dir not in _PREPARED:
            ensure_dir(self.dir, 0o700)
        fd = os.open(os.path.join(self.dir, ".lock"), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            if self.dir not in _PREPARED:
                self._lay_out()
                _PREPARED.add(self.dir)
            if os.path.exists(self.legacy):
                self._migrate()
            return work()
        finally:
            os.close(fd)

    def _lay_out(self):
        """Make the subdirs (all of them, once), and move in the files of a pool that kept them flat; a
        pool of layout "2" gives up its files per task."""
        layout = self._read("layout")
        if layout == self.LAYOUT:
            return
        if layout == "2":
            self._drop_task_files()
        for shard in range(256):
            for kind in ("k", "u"):
                ensure_dir(os.path.join(self.dir, "%s-%02x" % (kind, shard)), 0o700)
        for name in os.listdir(self.dir):
            if name.startswith("u.") and name[2:].isdigit():
                os.rename(os.path.join(self.dir, name), os.path.join(self.dir, self._uid_file(int(name[2:]))))
            elif name.startswith("k.") and len(name) == 42 and not name.endswith(".tmp"):
                os.rename(os.path.join(self.dir, name), os.path.join(self.dir, "k-%s" % name[2:4], name))
            elif name.endswith(".tmp"):
                self._unlink(name)
        self._write("layout", self.LAYOUT)

    def _drop_task_files(self):
        """Layout "2" to "3": a task's own file goes; the uid's file alone says the task holds it. No uid
        is freed here: a runner of layout "2" on the same base dir may have started the task without
        one, and only recycling (the task's lock, its uid's processes) may take a uid back."""
        for shard in range(256):
            for name in os.listdir(os.path.join(self.dir, "u-%02x" % shard)):
                if not (name.startswith("u.") and name[2:].isdigit()):
                    continue
                key = self._read(self._uid_file(int(name[2:])))
                if key and key.startswith("task:"):
                    self._unlink(self._key_file(key))

    def _migrate(self):
        """Take over the whole-map file of earlier versions (read once, then set aside)."""
        try:
            with open(self.legacy, "rb") as fh:
                raw = fh.read()
            table = json.loads(raw.decode("utf-8")) if raw else {}
        except (OSError, ValueError):
            table = {}
        for key, uid in sorted(table.items()):
            if isinstance(uid, int):
                self._write(self._uid_file(uid), key)
                if not key.startswith("task:"):
                    self._write(self._key_file(key), str(uid))
        os.rename(self.legacy, self.legacy + ".migrated")

    # ------------------------------------------------------------------ claims
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
            if holder == self.base:
                return True
            if holder is not None and os.path.isdir(holder):
                return False
            if holder is not None and holder != "":
                # Taken over from a base dir that is gone (removed by hand, not by cleanup): its runs'
                # processes may outlive it, and must not share a uid with this base dir's runs.
                kill_uid(uid)
            # Unclaimed, or held by a base dir that no longer exists. Written in place, under the lock: a
            # claim cut short names no existing base dir, so it is free again.
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
            with os.fdopen(fd, "wb") as fh:
                fh.write(self.base.encode("utf-8"))
            return True
        finally:
            os.close(lock)

    def acquire(self, key):
        def work():
            uid = self._held(key)
            if uid is not None:
                return uid
            raw = self._read("next")
            position = int(raw) if raw and raw.isdigit() else 0
            tried = set()
            for step in range(self.count):
                index = (position + step) % self.count
                uid = self.first + index
                holder = self._holder(uid)
                if holder is not None and (
                    uid in tried or not self._recycle(index, holder, tried, self.count - step)
                ):
                    continue
                if not self._claim(uid):
                    continue
                self._write(self._uid_file(uid), key)
                if not key.startswith("task:"):
                    self._write(self._key_file(key), str(uid))
                self._write("next", str(index + 1))
                return uid
            raise RunnerError(
                "environment",
                "all %d sandbox uids are held by sessions, runs in progress or their processes; run cleanup"
                % self.count,
            )

        return self._locked(work)

    def _recycle(self, index, holder, tried, limit):
        """Take back the uid at ``index`` from ``holder`` if that is a finished task, and with it the next
        uids in turn that finished tasks hold (up to RECYCLE_BATCH, half the range, and ``limit`` uids looked
        at): True once the first one is free.

        Every uid looked at goes into ``tried`` (the caller does not look again). The tasks are locked
        first, then the machine's processes are read once: a task locked here cannot start a process
        meanwhile, and a uid no process runs with can get one only from a run of its holder. A uid with a
        live process stays its task's.
        """
        candidates = []
        # Never round to the uids handed out last, however small the range.
        for step in range(min(self.RECYCLE_BATCH, max(1, self.count // 2), limit)):
            uid = self.first + (index + step) % self.count
            if step:
                if uid in tried:
                    continue
                holder = self._holder(uid)
                if holder is None:
                    continue
            tried.add(uid)
            kind, _, ident = holder.partition(":")
            if kind == "task" and TASK_HASH_RE.match(ident):
                candidates.append((uid, holder, ident))
            elif not step:
                return False  # a session's: kept until cleanup
        locks = []
        try:
            for uid, holder, ident in candidates:
                try:
                    lock = UseLock(task_lock_path(self.base, ident), exclusive=True, create=False)
                except InUse:
                    continue  # a run of it is in progress
                locks.append((uid, holder, ident, lock))
            busy = uids_with_processes() if locks else ()
            free = [entry for entry in locks if entry[0] not in busy]
            recycled = set()
            # A process that hid from the pass (a new pid at every step) dies here, in one kernel pass per
            # uid; if the sweep is cut short, no uid is recycled.
            if free and not kill_uids([entry[0] for entry in free]):
                free = []
            parents = open_task_parents(self.base) if free else []
            try:
                for uid, _, ident, _ in free:
                    retire_task_files(self.base, ident, uid, self.retired, parents)
                    self._write(self._uid_file(uid), self.FREE)
                    recycled.add(uid)
            finally:
                for parent in parents:
                    os.close(parent)
        finally:
            for entry in locks:
                entry[3].release()
        return self.first + index in recycled

    def table(self):
        """Every holder and its uid (reads the whole pool: for inspection, never on a run's path)."""

        def work():
            found = {}
            for shard in range(256):
                for name in os.listdir(os.path.join(self.dir, "u-%02x" % shard)):
                    if name.startswith("u.") and name[2:].isdigit():
                        key = self._holder(int(name[2:]))
                        if key is not None:
                            found[key] = int(name[2:])
            return found

        return self._locked(work)

    def lookup(self, key):
        """The uid ``key`` holds, or None."""
        if os.path.exists(self.legacy):
            return self._locked(lambda: self._held(key))
        if self.dir not in _PREPARED:
            if not os.path.isdir(self.dir):
                return None  # no pool yet: nothing is held
            return self._locked(lambda: self._held(key))  # laid out first, once per process
        return self._held(key)

    def release(self, keys):
        def work():
            for key in keys:
                uid = self._held(key)
                if uid is None:
                    continue
                if key.startswith("task:"):
                    self._write(self._uid_file(uid), self.FREE)
                else:
                    self._unlink(self._key_file(key))
                # Under the pool's lock: once it is released, acquire() may give the uid to a new key of
                # this base dir and claim it again, and that claim must not be the one dropped here.
                self._unclaim(uid)

        if keys:
            self._locked(work)

    def _unclaim(self, uid):
        path = os.path.join(UID_CLAIMS_DIR, str(uid))
        try:
            with open(path, "rb") as fh:
                if fh.read().decode("utf-8", "replace") == self.base:
                    os.unlink(path)
        except OSError:
            pass


def open_task_parents(base):
    """Dir fds of ``<base>/tasks`` and ``<base>/ephemeral`` (those that exist), for retire_task_files."""
    fds = []
    for sub in (TASKS, EPHEMERAL):
        try:
            fds.append(os.open(os.path.join(base, sub), O_DIR_NOFOLLOW))
        except OSError:
            continue
    return fds


def retire_task_files(base, task_hash, uid, retired, parents=None):
    """Give a finished task's files (owned by ``uid``) to ``retired``, and say so in its record.

    The work dir goes first (0700, ``retired``'s: nothing below it can be reached by path from then on),
    then everything below it that ``uid`` owns, through dir fds, so that a hard link the task made to one of
    its files elsewhere leads to a file ``uid`` no longer owns either. ``parents``: the fds of
    open_task_parents, for many tasks in a row (the caller closes them).
    """
    fds = open_task_parents(base) if parents is None else parents
    try:
        for parent in fds:
            try:
                top = open_dir_at(parent, task_hash)
            except OSError:
                continue
            try:
                st = os.fstat(top)
                if st.st_uid == uid:
                    os.fchown(top, retired, retired)
                    os.fchmod(top, 0o700)
                _retire_below(top, uid, retired, 0)
            finally:
                os.close(top)
    finally:
        if parents is None:
            for parent in fds:
                os.close(parent)
    rdir = record_dir(base, task_hash)
    try:
        with open(os.path.join(rdir, "meta.json"), "rb") as fh:
            meta = json.loads(fh.read().decode("utf-8"))
    except (OSError, ValueError):
        return
    if meta.get("uid") == uid:
        meta["uid"] = retired
        tmp = os.path.join(rdir, "meta.json.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        with os.fdopen(fd, "wb") as fh:
            fh.write(json.dumps(meta).encode("utf-8"))
        os.rename(tmp, os.path.join(rdir, "meta.json"))


def _retire_below(dir_fd, uid, retired, depth):
    for name in os.listdir(dir_fd):
        try:
            st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
        except OSError:
            continue
        if st.st_uid == uid:
            os.chown(name, retired, retired, dir_fd=dir_fd, follow_symlinks=False)
        if stat.S_ISDIR(st.st_mode) and depth < MAX_WALK_DEPTH:
            try:
                fd = open_dir_at(dir_fd, name)
            except OSError:
                continue
            try:
                _retire_below(fd, uid, retired, depth + 1)
            finally:
                os.close(fd)


# --------------------------------------------------------------------------------------------------
# Isolation probing
# --------------------------------------------------------------------------------------------------

_BWRAP_CACHE: "dict[tuple[str, int | None], tuple[bool, bool]]" = {}
_BWRAP_LOCK = threading.Lock()
# No user namespaces inside the box (a large kernel attack surface), and a session of its own.
BWRAP_HARDENING = ["--unshare-user", "--disable-userns", "--new-session"]


def find_bwrap():
    return shutil.which("bwrap", path=SYSTEM_PATH)


def bwrap_works(bwrap, as_uid, base=None):
    """bwrap may be installed yet unusable (user namespaces disabled); find out once.

    Every unprivileged uid gets the same answer, so one probe as RESERVED_UID serves them all.
    """
    if as_uid is not None:
        as_uid = RESERVED_UID
    key = (bwrap, as_uid)
    with _BWRAP_LOCK:
        # Runs served side by side wait for the one probe: none may see a half-made answer and go
        # without namespaces.
        if key not in _BWRAP_CACHE:
            answer = _remembered_probe(key, base)
            if answer is None:
                answer = _probe_bwrap(bwrap, as_uid)
                _remember_probe(key, answer, base)
            _BWRAP_CACHE[key] = answer
    return _BWRAP_CACHE[key][0]


# A root runner is often a new process per request (SSM): it keeps the probe's answer on disk for a while
# instead of starting a sandbox before every run. Root-only file; stale once bwrap is replaced.
BWRAP_PROBE_NAME = ".bwrap-probe.json"


def bwrap_probe_file(base):
    """Where a root runner keeps the probe's answer: in its base dir (root's, 0711), else the default one."""
    return os.path.join(base or "/var/lib/ec2-sandbox", BWRAP_PROBE_NAME)


BWRAP_PROBE_TTL = 600


def _remembered_probe(key, base):
    if os.geteuid() != 0:
        return None
    try:
        fd = os.open(bwrap_probe_file(base), os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
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


def _remember_probe(key, answer, base):
    if os.geteuid() != 0:
        return
    try:
        path = bwrap_probe_file(base)
        os.makedirs(os.path.dirname(path), 0o711, exist_ok=True)
        tmp = "%s.%d.tmp" % (path, os.getpid())
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        with os.fdopen(fd, "wb") as fh:
            fh.write(json.dumps({"%s|%s" % key: list(answer)}).encode("utf-8"))
        os.rename(tmp, path)
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
    return _BWRAP_CACHE[(bwrap, RESERVED_UID if as_uid is not None else None)][1]


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


def imds_warning(network, guarded):
    """Why the metadata service may be reachable from user code, or None when it is not (or cannot be:
    a machine that says it is not on EC2)."""
    if not network or guarded:
        return None
    ec2 = on_ec2()
    if ec2 is False:
        return None
    where = "this EC2 instance" if ec2 else "this target (if it is an EC2 instance)"
    if imds_guard_present():
        return (
            "network is on and the code runs as uid %d, outside the sandbox uids that %s keeps off the "
            "instance metadata service: code may obtain the instance role's credentials; run the runner as "
            "root (ssh_sudo for ssh/eic) so that each session gets a sandbox uid" % (os.geteuid(), where)
        )
    return (
        "network is on and %s has no firewall rule keeping sandbox uids off the instance metadata service "
        "(marker %s is missing): code may obtain the instance role's credentials; run the provisioning "
        "script or `ec2-sandbox prepare-instance`" % (where, IMDS_MARKER)
    )


# --------------------------------------------------------------------------------------------------
# The syscall filter (seccomp-bpf): every run's program behind it, cold or warm, with or without bwrap
#
# Built here as a plain array of struct sock_filter rather than through libseccomp: the runner ships as one
# stdlib-only file, and libseccomp (or its Python binding) is not on every target. The program is short
# and linear: the architecture first (any other ABI, x32 and 32-bit compat included, gets ENOSYS), then
# one comparison per denied call, then the calls allowed only with some arguments.
# --------------------------------------------------------------------------------------------------

# Syscall numbers: (x86_64, aarch64); None where the architecture has no such call. From the kernel's
# arch/x86/entry/syscalls/syscall_64.tbl and include/uapi/asm-generic/unistd.h (which aarch64 uses);
# tests/attacks/test_syscall_filter.py checks both tables against libseccomp's.
SYSCALLS = {
    # Kernel interfaces behind most local privilege escalations, and nothing a sandboxed program needs.
    "io_uring_setup": (425, 425),
    "io_uring_enter": (426, 426),
    "io_uring_register": (427, 427),
    "keyctl": (250, 219),
    "add_key": (248, 217),
    "request_key": (249, 218),
    "bpf": (321, 280),
    "perf_event_open": (298, 241),
    "userfaultfd": (323, 282),
    "ptrace": (101, 117),
    "process_vm_readv": (310, 270),
    "process_vm_writev": (311, 271),
    "kcmp": (312, 272),
    "pidfd_getfd": (438, 438),
    "open_by_handle_at": (304, 265),
    "name_to_handle_at": (303, 264),
    "fanotify_init": (300, 262),
    "syslog": (103, 116),
    # Mounts and namespaces: the sandbox is built before the filter; nothing inside may change it.
    "mount": (165, 40),
    "umount2": (166, 39),
    "pivot_root": (155, 41),
    "move_mount": (429, 429),
    "open_tree": (428, 428),
    "fsopen": (430, 430),
    "fsconfig": (431, 431),
    "fsmount": (432, 432),
    "fspick": (433, 433),
    "mount_setattr": (442, 442),
    "setns": (308, 268),
    # The machine's administration.
    "kexec_load": (246, 104),
    "kexec_file_load": (320, 294),
    "init_module": (175, 105),
    "finit_module": (313, 273),
    "delete_module": (176, 106),
    "reboot": (169, 142),
    "swapon": (167, 224),
    "swapoff": (168, 225),
    "acct": (163, 89),
    "quotactl": (179, 60),
    "quotactl_fd": (443, 443),
    "settimeofday": (164, 170),
    "clock_settime": (227, 112),
    "clock_adjtime": (305, 266),
    "adjtimex": (159, 171),
    "iopl": (172, None),
    "ioperm": (173, None),
    "lookup_dcookie": (212, 18),
    "uselib": (134, None),
    "vhangup": (153, 58),
    "nfsservctl": (180, 42),
    # Memory no rlimit counts: SysV shared memory and message queues (which outlive a run without
    # bubblewrap's IPC namespace), memfd pages; mmap's shared anonymous maps are refused by their flags.
    "shmget": (29, 194),
    "msgget": (68, 186),
    "memfd_create": (319, 279),
    # clone3 passes its flags in memory a filter cannot read: refused, so that libc falls back on clone.
    "clone3": (435, 435),
    # Checked by their arguments (FILTERED_CALLS).
    "socket": (41, 198),
    "clone": (56, 220),
    "unshare": (272, 97),
    "personality": (135, 92),
    "mmap": (9, 222),
}
# Where a library falls back on ENOSYS (libuv probes io_uring; glibc's clone3 and memfd users fall back);
# EPERM for the rest.
ENOSYS_CALLS = frozenset(["io_uring_setup", "io_uring_enter", "io_uring_register", "clone3", "memfd_create"])
FILTERED_CALLS = frozenset(["socket", "clone", "unshare", "personality", "mmap"])
SECCOMP_ARCHES = {"x86_64": (0, 0xC000003E), "aarch64": (1, 0xC00000B7)}  # table column, AUDIT_ARCH_*
X32_SYSCALL_BIT = 0x40000000
# Socket families a sandbox may open: unix, IPv4, IPv6 and netlink for route queries (what getaddrinfo
# and interface listings use). AF_PACKET, AF_KEY, AF_VSOCK, AF_ALG and the rest get EAFNOSUPPORT.
SOCKET_FAMILIES = (1, 2, 10)
AF_NETLINK, NETLINK_ROUTE = 16, 0
# Every CLONE_NEW* flag; for clone() the low byte is the exit signal, so CLONE_NEWTIME (0x80) is not one.
CLONE_NEW_FLAGS = 0x7E020000
UNSHARE_NEW_FLAGS = CLONE_NEW_FLAGS | 0x80
MAP_SHARED_ANONYMOUS = 0x01 | 0x20
PERSONALITY_QUERY = 0xFFFFFFFF

_BPF_LD_W_ABS, _BPF_JEQ, _BPF_JSET, _BPF_JGE, _BPF_RET, _BPF_AND = 0x20, 0x15, 0x45, 0x35, 0x06, 0x54
SECCOMP_RET_ALLOW = 0x7FFF0000
SECCOMP_RET_ERRNO = 0x00050000


def _ins(code, k, jt=0, jf=0):
    return struct.pack("=HBBI", code, jt, jf, k & 0xFFFFFFFF)


def _ret(action):
    return _ins(_BPF_RET, action)


def _errno(err):
    return _ret(SECCOMP_RET_ERRNO | err)


def _arg_low(index):
    """Load the low 32 bits of syscall argument ``index`` (struct seccomp_data: nr, arch, ip, args[6])."""
    return _ins(_BPF_LD_W_ABS, 16 + 8 * index + (0 if sys.byteorder == "little" else 4))


def _filtered(name):
    """The instructions that decide a call allowed only with some arguments (the accumulator is free)."""
    allow, eperm = _ret(SECCOMP_RET_ALLOW), _errno(errno.EPERM)
    if name == "socket":
        n = len(SOCKET_FAMILIES)
        body = [_arg_low(0)]
        body += [_ins(_BPF_JEQ, fam, n - i + 3, 0) for i, fam in enumerate(SOCKET_FAMILIES)]
        body += [_ins(_BPF_JEQ, AF_NETLINK, 0, 2), _arg_low(2), _ins(_BPF_JEQ, NETLINK_ROUTE, 1, 0)]
        return body + [_errno(errno.EAFNOSUPPORT), allow]
    if name in ("clone", "unshare"):
        mask = CLONE_NEW_FLAGS if name == "clone" else UNSHARE_NEW_FLAGS
        return [_arg_low(0), _ins(_BPF_JSET, mask, 0, 1), eperm, allow]
    if name == "personality":
        return [_arg_low(0), _ins(_BPF_JEQ, 0, 1, 0), _ins(_BPF_JEQ, PERSONALITY_QUERY, 0, 1), allow, eperm]
    if name == "mmap":
        match = _ins(_BPF_JEQ, MAP_SHARED_ANONYMOUS, 0, 1)
        return [_arg_low(3), _ins(_BPF_AND, MAP_SHARED_ANONYMOUS), match, eperm, allow]
    raise ValueError(name)


_SECCOMP_PROGRAMS: "dict[tuple, bytes]" = {}


def seccomp_program(machine=None, allowed=()):
    """The filter's bytes (struct sock_filter[]) for ``machine``, with the calls in ``allowed`` let through;
    None on an architecture without a table here. Built once per combination: runs ask for it every time."""
    key = (machine or os.uname().machine, tuple(sorted(allowed)))
    if key not in _SECCOMP_PROGRAMS:
        _SECCOMP_PROGRAMS[key] = _build_seccomp_program(*key)
    return _SECCOMP_PROGRAMS[key]


def _build_seccomp_program(machine, allowed):
    arch = SECCOMP_ARCHES.get(machine)
    if arch is None:
        return None
    column, audit_arch = arch
    prog = [
        _ins(_BPF_LD_W_ABS, 4),
        _ins(_BPF_JEQ, audit_arch, 1, 0),
        _errno(errno.ENOSYS),
        _ins(_BPF_LD_W_ABS, 0),
    ]
    if column == 0:  # x32 calls are x86_64 numbers with this bit set
        prog += [_ins(_BPF_JGE, X32_SYSCALL_BIT, 0, 1), _errno(errno.ENOSYS)]
    decided = []
    for name, numbers in SYSCALLS.items():
        nr = numbers[column]
        if nr is None or name in allowed:
            continue
        if name in FILTERED_CALLS:
            decided.append((nr, _filtered(name)))
        else:
            decided.append((nr, [_errno(errno.ENOSYS if name in ENOSYS_CALLS else errno.EPERM)]))
    return b"".join(prog + _search(sorted(decided)))


def _search(decided):
    """A binary search over the call numbers, each leaf a short run of comparisons ending in ALLOW.

    A linear list would cost every call (and the kernel's per-number cache, worked out for every number
    each time a filter is installed: twice a warm run) one comparison per refused call; the tree costs
    about log2 of them. The accumulator holds the call number throughout; every body ends in a return.
    """
    if len(decided) <= 3:
        leaf = []
        for nr, body in decided:
            leaf += [_ins(_BPF_JEQ, nr, 0, len(body))] + body
        return leaf + [_ret(SECCOMP_RET_ALLOW)]
    middle = len(decided) // 2
    below, above = _search(decided[:middle]), _search(decided[middle:])
    return [_ins(_BPF_JGE, decided[middle][0], len(below), 0)] + below + above


PR_SET_SECCOMP, SECCOMP_MODE_FILTER, PR_GET_SECCOMP = 22, 2, 21


def seccomp_usable():
    """Whether this kernel filters syscalls (CONFIG_SECCOMP_FILTER) and this machine has a table here."""
    if _LIBC is None or os.uname().machine not in SECCOMP_ARCHES:
        return False
    return _LIBC.prctl(PR_GET_SECCOMP, 0, 0, 0, 0) >= 0


def seccomp_fprog(program):
    """A struct sock_fprog for prctl(PR_SET_SECCOMP), and the buffer it points into (keep both alive)."""
    buf = _CTYPES.create_string_buffer(program, len(program))
    fields = (("len", _CTYPES.c_ushort), ("filter", _CTYPES.c_void_p))
    fprog_type = type("SockFprog", (_CTYPES.Structure,), {"_fields_": fields})
    return fprog_type(len(program) // 8, _CTYPES.addressof(buf)), buf


def install_seccomp(fprog):
    """Install a filter in the calling process (no_new_privs must be set); raises OSError if refused."""
    if _LIBC.prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, _CTYPES.byref(fprog), 0, 0) != 0:
        err = _CTYPES.get_errno()
        raise OSError(err, "prctl(PR_SET_SECCOMP): %s" % os.strerror(err))


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


_NETNS_CACHE: "list[bool]" = []


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
    in every pid namespace, so a process forking meanwhile cannot slip through. (kill(-1) succeeds whenever
    the machine has any other process, so it cannot say whether one of the uid's was there.)
    """
    with spawning():
        pid = quiet_fork()
        if pid == 0:
            code = 2
            try:
                drop_privileges(uid)
                code = 0
                for _ in range(3):
                    os.kill(-1, signal.SIGKILL)
            finally:
                os._exit(code)
        with _SPAWNS:
            OWN_CHILDREN.add(pid)
    try:
        os.waitpid(pid, 0)
    finally:
        own_child_done(pid)
    reap_orphans()


def kill_uids(uids, limit=10.0):
    """SIGKILL every process of each of ``uids``, as kill_uid does, from one child for them all: it takes
    each uid in turn as its real and effective uid (root stays its saved uid, to come back; it has no
    capability meanwhile) and signals all it may. True if the child went through every uid: a process of
    one of them could kill or stop it first, and then nothing is known."""
    with spawning():
        pid = quiet_fork()
        if pid == 0:
            code = 2
            try:
                for uid in uids:
                    os.setresuid(uid, uid, 0)
                    try:
                        # One pass is whole: the kernel walks every process under the lock a fork takes.
                        os.kill(-1, signal.SIGKILL)
                    except OSError:
                        pass  # none of the uid's
                    os.setresuid(0, 0, 0)
                code = 0
            finally:
                os._exit(code)
        with _SPAWNS:
            OWN_CHILDREN.add(pid)
    try:
        status = await_child(pid, limit)
    finally:
        own_child_done(pid)
    reap_orphans()
    return status is not None and os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0


def await_child(pid, limit):
    """The wait status of child ``pid``; None if it took longer than ``limit`` seconds (then killed)."""
    deadline = time.monotonic() + limit
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return status
        if time.monotonic() > deadline:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            return None
        time.sleep(0.001)


def uid_quiet(uid, grace=2.0):
    """No live process of ``uid``, or none left after ``grace`` seconds: a sandbox that has just ended may
    still be on its way out (bubblewrap's processes exit after the run's result)."""
    deadline = time.monotonic() + grace
    while uid_has_processes(uid):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def uid_has_processes(uid):
    """Whether any live process on the machine runs with ``uid`` as its real, effective or saved uid."""
    return uid in uids_with_processes()


def uids_with_processes():
    """Every uid a live process on the machine runs with as its real, effective or saved uid, in one pass
    over /proc (a zombie, waiting for its parent to reap it, runs nothing and holds nothing)."""
    found = set()
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            fd = os.open("/proc/%s/status" % name, os.O_RDONLY | os.O_CLOEXEC)
        except OSError:
            continue
        try:
            data = os.read(fd, 4096)
        except OSError:
            continue
        finally:
            os.close(fd)
        # The kernel escapes the one field a process sets itself (Name), so these are its own lines.
        at = data.find(b"\nState:")
        if at >= 0 and data[at + 7 : at + 9].strip()[:1] == b"Z":
            continue
        at = data.find(b"\nUid:")
        if at >= 0:
            found.update(int(v) for v in data[at + 5 : data.find(b"\n", at + 5)].split()[:3])
    return found


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
            if not uid_has_processes(self.uid):
                return False
            kill_uid(self.uid)
            return True
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


def make_preexec(limits, rlimit_memory, run_uid, cgroup_dir, netns=False, fprog=None):
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
        if fprog is not None:
            install_seccomp(fprog[0])

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


def bwrap_argv(workdir, network, hardened=False, memory_bytes=None, ro_files=(), tmp_dir=None):
    """bubblewrap's options for a run's sandbox (the executable, the env and the program come apart).

    They reach bubblewrap through ``--args FD`` (see spawn_args): /proc/PID/cmdline is readable by every
    user of the machine, so nothing of the run's own may stand in argv.
    """
    argv = ["--die-with-parent", "--unshare-all"]
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
    # The private /tmp, /dev/shm and /run are memory that no rlimit counts: together they get at most the
    # memory limit (3/4 for /tmp, 1/4 for /dev/shm), /run 1 MB.
    for path, size in tmpfs_sizes(memory_bytes):
        if path == "/tmp" and tmp_dir is not None:
            # A session's /tmp is a dir of its own on disk, as its work dir is: counted by the disk
            # limits, not by memory.
            argv += ["--bind", tmp_dir, "/tmp"]
            parts = workdir.split("/")
            if len(parts) > 3 and parts[1] == "tmp":
                # A base dir under /tmp (tests, a developer's machine): the mount points of the binds below
                # go in a tmpfs of their own, not in the session's /tmp, where they would stay.
                argv += ["--tmpfs", "/tmp/" + parts[2]]
            continue
        if hardened and size:
            argv += ["--size", str(size)]
        argv += ["--tmpfs", path]
    argv += ["--bind", workdir, workdir]
    for path in ro_files:
        argv += ["--ro-bind", path, path]
    # The root is bwrap's own tmpfs: read-only, so the work dir and the tmpfs mounts are the only writable
    # places.
    argv += ["--remount-ro", "/", "--chdir", workdir]
    return argv


def tmpfs_sizes(memory_bytes):
    if not memory_bytes:
        return (("/tmp", None), ("/dev/shm", None), ("/run", 1 << 20))
    return (("/tmp", memory_bytes * 3 // 4), ("/dev/shm", memory_bytes // 4), ("/run", 1 << 20))


def data_fd(data):
    """A readable fd holding ``data`` from its start, in memory, never on a path anyone can open."""
    try:
        fd = os.memfd_create("ec2-sandbox", getattr(os, "MFD_CLOEXEC", 1))
    except (AttributeError, OSError):
        read_end, write_end = os.pipe()
        if len(data) > 65536:
            os.close(read_end)
            os.close(write_end)
            raise RunnerError("environment", "memfd_create is unavailable and the request is too large")
        os.write(write_end, data)
        os.close(write_end)
        return read_end
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]
    os.lseek(fd, 0, os.SEEK_SET)
    return fd


def spawn_args(options, env):
    """An fd for ``bwrap --args FD``: the sandbox options, then a clear env with the run's own variables."""
    args = list(options) + ["--clearenv"]
    for name in sorted(env):
        args += ["--setenv", name, env[name]]
    blob = b"".join(a.encode("utf-8", "surrogateescape") + b"\0" for a in args)
    return data_fd(blob)


class Workspace(object):
    """Where a run lives on the target: its work dir (the sandbox's), its record (the runner's) and the uses
    it holds on both, so that cleanup never removes them under it."""

    def __init__(self, base, req):
        self.base = base
        self.task_hash = req["task_hash"]
        if not TASK_HASH_RE.match(self.task_hash or ""):
            raise RunnerError("invalid_input", "task_hash must be 12-64 lowercase hex characters")
        self.session_id = req.get("session_id")
        if self.session_id is not None and not SESSION_ID_RE.match(self.session_id):
            raise RunnerError(
                "invalid_input",
                "session_id %r must be 1-64 characters of letters, digits, '.', '_' or '-', starting with "
                "a letter or digit" % (self.session_id,),
            )
        self.ephemeral = bool(req.get("ephemeral")) and self.session_id is None
        if self.session_id is not None:
            self.sub, self.name, self.uid_key = SESSIONS, self.session_id, "session:" + self.session_id
        else:
            self.sub = EPHEMERAL if self.ephemeral else TASKS
            self.name, self.uid_key = self.task_hash, "task:" + self.task_hash
        self.workdir = os.path.join(base, self.sub, self.name)
        # A session's /tmp lives on between its runs (under bubblewrap; without it, .tmp in the work dir).
        self.tmpdir = os.path.join(base, SESSION_TMP, self.name) if self.session_id is not None else None
        self.rdir = record_dir(base, self.task_hash)
        self.locks = []
        self.uid = None

    def open(self, privileged, hold_session=True):
        try:
            os.mkdir(self.rdir, 0o700)
        except FileExistsError:
            raise RunnerError(
                "invalid_input", "task %s already exists; task hashes are unique per run" % self.task_hash
            )
        # Held until the run is over: cleanup skips what a run holds, and waits for nothing.
        self.locks.append(UseLock(task_lock_path(self.base, self.task_hash)))
        # A session's interpreter does not hold its session: cleanup closes an idle one (a cell holds it).
        if self.session_id is not None and hold_session:
            self.locks.append(UseLock(session_lock_path(self.base, self.session_id)))
        if privileged:
            self.uid = UidPool(self.base, *SANDBOX_UID_RANGE).acquire(self.uid_key)
        self._make_dir(self.sub)
        if self.tmpdir is not None:
            self._make_dir(SESSION_TMP)

    def _make_dir(self, sub):
        make_owned_dir(self.base, sub, self.name, self.uid)

    @property
    def owner(self):
        return (self.uid, self.uid) if self.uid is not None else None

    def close(self):
        """The run is over: mark it used now (by the runner's own clock and files), drop an ephemeral dir."""
        try:
            if self.ephemeral:
                parent = os.open(os.path.join(self.base, EPHEMERAL), O_DIR_NOFOLLOW)
                try:
                    remove_at(parent, self.name)
                finally:
                    os.close(parent)
                if self.uid is not None:
                    UidPool(self.base, *SANDBOX_UID_RANGE).release([self.uid_key])
            for lock in self.locks:
                lock.touch()
        finally:
            for lock in self.locks:
                lock.release()


def make_owned_dir(base, sub, name, uid):
    """``<base>/<sub>/<name>``, made if missing, and (privileged) its uid's alone."""
    parent = os.open(os.path.join(base, sub), O_DIR_NOFOLLOW)
    try:
        try:
            os.mkdir(name, 0o700, dir_fd=parent)
        except FileExistsError:
            pass
        try:
            fd = open_dir_at(parent, name)
        except OSError:
            raise RunnerError("environment", "%s/%s is not a directory" % (sub, name))
        try:
            if uid is not None:
                os.fchown(fd, uid, uid)
                os.fchmod(fd, 0o700)
        finally:
            os.close(fd)
    finally:
        os.close(parent)


def write_record(ws, runtime, code):
    """The run's record: meta.json, then its program beside it, out of the work dir's listing. The record
    stays root's; the run's group may read the program and nothing else there."""
    meta = {
        "task_hash": ws.task_hash,
        "session_id": ws.session_id,
        "ephemeral": ws.ephemeral,
        "workdir": ws.workdir,
        "runtime": runtime["name"],
        "uid": ws.uid,
        "started": time.time(),
    }
    # Into the file the run's use lock already holds (Workspace.open made it).
    meta_fd = os.open(task_lock_path(ws.base, ws.task_hash), os.O_WRONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    with os.fdopen(meta_fd, "w") as fh:
        json.dump(meta, fh)
    program_dir = os.path.join(ws.rdir, "program")
    os.mkdir(program_dir, 0o750 if ws.owner else 0o700)
    source_path = os.path.join(program_dir, runtime["filename"])
    fd = os.open(source_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(code)
    if ws.owner is not None:
        os.chmod(ws.rdir, 0o711)
        os.chown(program_dir, 0, ws.uid)
        os.chown(source_path, 0, ws.uid)
        os.chmod(source_path, 0o440)
    return source_path


def run_task(req, emit):
    base = prepare_base(req.get("base_dir"))
    ws = Workspace(base, req)
    ws.open(os.geteuid() == 0)
    try:
        before = snapshot_files(ws.workdir)
        write_inputs(ws.workdir, req.get("files"), ws.owner)
        source_path = write_record(ws, req["runtime"], base64.b64decode(req["code_b64"]))
        plan = RunPlan(req, ws, source_path)
        result = with_workspace(execute(req, emit, ws, plan), ws, before)
        result.update(
            {
                "isolation": "bwrap" if plan.bwrap else "none",
                "imds_guard": plan.imds_guarded,
                "warnings": plan.warnings,
            }
        )
        return result
    finally:
        ws.close()


def write_inputs(workdir, entries, owner):
    """Write a request's files into a work dir; each is ``raw`` bytes (from an in-process caller only) or
    ``b64``. Returns their paths and sizes."""
    written = []
    for entry in entries or []:
        data = entry["raw"] if isinstance(entry.get("raw"), bytes) else base64.b64decode(entry["b64"])
        write_file_in(workdir, entry["path"], data, owner)
        written.append({"path": entry["path"], "size": len(data)})
    return written


def with_workspace(result, ws, before):
    """``result`` with where the run was and what it made (files that differ from ``before``)."""
    after = snapshot_files(ws.workdir)
    created = sorted(name for name, sig in after.items() if before.get(name) != sig)
    result.update(
        {
            "task_hash": ws.task_hash,
            "session_id": ws.session_id,
            "working_directory": ws.workdir,
            "files_created": created[:MAX_FILES_LISTED],
            "files_created_truncated": len(created) > MAX_FILES_LISTED,
            "run_as_uid": ws.uid if ws.uid is not None else os.geteuid(),
        }
    )
    return result


def choose_bwrap(isolation, run_uid, base):
    """The bubblewrap to run under, or None; raises when the request insists on one that cannot run."""
    if isolation not in ("auto", "bwrap"):
        return None
    candidate = find_bwrap()
    if candidate and bwrap_works(candidate, run_uid, base):
        return candidate
    if isolation == "bwrap":
        raise RunnerError(
            "environment",
            "isolation 'bwrap' is required but bubblewrap is %s on this target; install the 'bubblewrap' "
            "package or set isolation to 'auto'" % ("not usable" if candidate else "not installed"),
        )
    return None


def imds_guard_covers(run_uid):
    """The provisioning firewall keeps the sandbox uid range off the metadata service: it protects a run
    only when the run's code runs under one of those uids."""
    return imds_guard_present() and is_sandbox_uid(run_uid)


class RunPlan(object):
    """What a run will be, decided from the request and what this target offers, before any process starts:
    its isolation, argv, environment, limits, and what is really enforced (with warnings for what is not)."""

    def __init__(self, req, ws, source_path):
        runtime, limits = req["runtime"], req["limits"]
        self.runtime, self.limits = runtime, limits
        self.timeout = float(req["timeout"])
        self.uid = ws.uid
        self.network = bool(req.get("network"))
        self.bwrap = choose_bwrap(req.get("isolation", "auto"), ws.uid, ws.base)
        self.hardened = bool(self.bwrap) and bwrap_hardened(self.bwrap, ws.uid)
        self.source_path = source_path
        self.workdir = ws.workdir
        self.session_tmp = ws.tmpdir
        self.tmpdir = "/tmp" if self.bwrap else os.path.join(ws.workdir, ".tmp")
        # Fds the program inherits (a session's interpreter: its channel to the host).
        self.pass_fds = ()
        self.env = build_env(req.get("env"), ws.workdir, self.tmpdir)
        heap_mb = max(16, limits["memory_mb"] * 3 // 4)
        values = {"file": source_path, "memory_mb": str(limits["memory_mb"]), "heap_mb": str(heap_mb)}
        self.argv = substitute(list(runtime["argv"]), values)
        exe = resolve_executable(self.argv[0])
        if exe is None:
            raise RunnerError(
                "runtime_missing",
                "runtime %r needs %r, which is not installed on this target"
                % (runtime["name"], self.argv[0]),
            )
        self.argv[0] = exe
        # Without bubblewrap, root can still give the run a network namespace of its own.
        self.netns = not self.bwrap and not self.network and ws.uid is not None and netns_works()
        self.rlimit_memory = runtime.get("rlimit_memory", "data")
        self.imds_guarded = self.network and imds_guard_covers(ws.uid)
        self.warnings = []
        if not self.network and not self.bwrap and not self.netns:
            self.warnings.append(
                "network is off in the configuration, but without bubblewrap or a network namespace (root "
                "with CAP_SYS_ADMIN) nothing enforces it: this run could reach the network"
            )
        imds = imds_warning(self.network, self.imds_guarded)
        if imds:
            self.warnings.append(imds)
        self.disk_quota = mb_bytes(limits.get("disk_mb"))
        self.disk_reserve = mb_bytes(req.get("disk_reserve_mb"))
        self.seccomp = None
        if req.get("syscall_filter", "default") != "none":
            if seccomp_usable():
                self.seccomp = seccomp_program(allowed=tuple(runtime.get("syscalls_allowed") or ()))
            else:
                self.warnings.append(
                    "syscall_filter is 'default', but this target cannot filter syscalls (a kernel without "
                    "seccomp, or an architecture other than x86_64 and aarch64): the run reaches the whole "
                    "kernel interface"
                )

    def enforced(self, cg_limits):
        """What limits_enforced reports: only what is in force for this run."""
        enforced = ["rlimit:cpu", "rlimit:fsize", "rlimit:nofile"]
        if "memory" not in cg_limits and self.rlimit_memory:
            enforced.append("rlimit:" + self.rlimit_memory)
        if self.uid is not None:
            enforced.append("rlimit:nproc")
        if "--max-old-space-size" in " ".join(self.runtime["argv"]):
            enforced.append("runtime:heap")
        enforced += ["cgroup:" + c for c in cg_limits]
        if self.bwrap:
            enforced.append("namespaces:bwrap")
        if self.seccomp:
            enforced.append("seccomp:default")
        if self.disk_quota is not None:
            enforced.append("disk:quota")
        if self.disk_reserve is not None:
            enforced.append("disk:reserve")
        if self.uid is not None:
            enforced.append("uid:private")
        enforced.append("network:off" if (self.bwrap and not self.network) or self.netns else "network:on")
        if self.imds_guarded:
            enforced.append("imds:blocked")
        if self.bwrap:
            enforced.append("kill:pid-namespace")
        elif "kill" in cg_limits:
            enforced.append("kill:cgroup")
        elif self.sweeps(cg_limits):
            enforced.append("kill:uid")
        else:
            enforced.append("kill:process-group")
        return enforced

    def sweeps(self, cg_limits):
        """Whether the run's end must kill every process of its uid (nothing else catches those that left
        its process group)."""
        return self.uid is not None and not self.bwrap and "kill" not in cg_limits

    def bwrap_options(self):
        return bwrap_argv(
            self.workdir,
            self.network,
            self.hardened,
            self.limits["memory_mb"] * 1024 * 1024,
            [self.source_path],
            self.session_tmp,
        )


def execute(req, emit, ws, plan):
    """Start the run (warm where it can, else cold), wait for it under its limits, and say how it ended."""
    if not plan.bwrap:
        try:
            os.mkdir(plan.tmpdir, 0o700)
            if ws.owner is not None:
                os.lchown(plan.tmpdir, ws.uid, ws.uid)
        except FileExistsError:
            pass
    cg_root = cgroup_root() if req.get("cgroups", True) else None
    # Under bwrap the pid namespace already kills every process of the run; a cgroup is worth its cost
    # (a few ms a run) only when it also brings resource controllers.
    if cg_root is not None and plan.bwrap and not cgroup_controllers(cg_root):
        cg_root = None
    cg_dir, cg_limits = make_cgroup(cg_root, ws.task_hash, plan.limits) if cg_root else (None, [])
    enforced = plan.enforced(cg_limits)
    rlimit_memory = None if "memory" in cg_limits else plan.rlimit_memory
    sweep = plan.sweeps(cg_limits)
    if not plan.bwrap and "kill" not in cg_limits and not sweep:
        plan.warnings.append(
            "without bubblewrap, a cgroup or root, only the run's process group is killed at its end: a "
            "program that calls setsid() can outlive the run"
        )
    budget = DiskBudget(ws.workdir, plan.disk_quota, plan.disk_reserve, plan.session_tmp)
    stdout_path = os.path.join(ws.rdir, "stdout")
    stderr_path = os.path.join(ws.rdir, "stderr")
    out_fd = os.open(stdout_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
    err_fd = os.open(stderr_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
    # A session's uid is shared by its runs, which may not all be alike (isolation is per environment); a
    # task's is its single run's own, and needs no lease unless that run sweeps.
    lease = UidLease(ws.base, ws.uid) if ws.uid is not None and (sweep or ws.session_id) else None
    streamer = None
    try:
        outcome, streamer = start_and_watch(
            req, emit, ws, plan, cg_dir, rlimit_memory, (out_fd, err_fd), budget
        )
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
    evidence = Evidence(outcome, plan.limits, cg_dir, stdout_path, stderr_path, ws.workdir)
    if cg_dir is not None:
        remove_cgroup(cg_dir)
    if outcome.not_started:
        raise RunnerError(
            "environment", "the sandbox could not be set up for this run: %s" % outcome.not_started
        )
    result = describe_exit(evidence, plan.runtime, plan.limits, plan.timeout)
    if outcome.cancelled and not result["success"]:
        result["error_message"] = "cancelled: the caller gave up and the run was killed"
    inline_chars = int(req.get("inline_chars", 20000))
    result.update(
        {
            "execution_time": round(outcome.elapsed, 4),
            "cpu_time": round(outcome.cpu_time, 4),
            "peak_memory_kb": evidence.peak_kb,
            "stdout": inline_text(stdout_path, inline_chars),
            "stderr": inline_text(stderr_path, inline_chars),
            "limits_enforced": enforced,
            "stray_processes_killed": leftovers,
        }
    )
    return result


def start_and_watch(req, emit, ws, plan, cg_dir, rlimit_memory, fds, budget):
    """A warm start where one applies, else (or when the zygote cannot set the run up) a cold one."""
    out_fd, err_fd = fds
    stdout_path, stderr_path = os.path.join(ws.rdir, "stdout"), os.path.join(ws.rdir, "stderr")
    rlimits = rlimit_table(plan.limits, rlimit_memory) + nproc_limit(plan.limits, ws.uid)
    # A warm start needs the sandbox to be bubblewrap's alone: a cgroup would have to take the program in.
    warm = (
        warm_zygote(req, plan.runtime, plan.argv, ws.workdir, ws.base)
        if plan.bwrap and cg_dir is None
        else None
    )
    if warm is not None:
        zyg, how = warm
        warm_req = dict(
            how,
            bwrap_argv=holder_argv(plan),
            path=SYSTEM_PATH,
            uid=ws.uid,
            workdir=ws.workdir,
            env=dict(plan.env, PWD=ws.workdir),  # bubblewrap sets PWD for the programs it starts
            # As many processes of the run's uid as under a cold start: bubblewrap, the placeholder (in the
            # place of bubblewrap's pid 1) and the program; the program's parent keeps root's uid.
            rlimits=rlimits,
            seccomp=plan.seccomp,
        )
        started = time.monotonic()
        handle = start_warm(zyg, warm_req, out_fd, err_fd)
        if handle is not None:
            streamer = start_streamer(req, stdout_path, stderr_path, emit)
            outcome = watch(handle, started, plan.timeout, ws.task_hash, budget)
            if outcome is not None:
                zyg.failures = 0
                return outcome, streamer
            warm_failed(zyg)  # the zygote could not set the run up: start it cold
            if streamer is not None:
                streamer.stop()
            for fd in (out_fd, err_fd):
                os.ftruncate(fd, 0)
                os.lseek(fd, 0, os.SEEK_SET)
    # bubblewrap installs the filter itself (--seccomp); without it, the child does, just before exec.
    fprog = seccomp_fprog(plan.seccomp) if plan.seccomp and not plan.bwrap else None
    preexec = make_preexec(plan.limits, rlimit_memory, ws.uid, cg_dir, plan.netns, fprog)
    started = time.monotonic()
    try:
        handle = ColdRun(plan, preexec, out_fd, err_fd, cg_dir)
    except subprocess.SubprocessError as exc:
        raise RunnerError("environment", "the sandbox could not be set up for this run: %s" % exc)
    streamer = start_streamer(req, stdout_path, stderr_path, emit)
    return watch(handle, started, plan.timeout, ws.task_hash, budget), streamer


class Outcome(object):
    """How a started run ended, as the runner saw it."""

    def __init__(self, status, cpu_time, maxrss_kb, elapsed, timed_out, cancelled, leftovers, handle, disk):
        self.status = status
        self.cpu_time = cpu_time
        self.maxrss_kb = maxrss_kb
        self.elapsed = elapsed
        self.timed_out = timed_out
        self.cancelled = cancelled
        self.leftovers = leftovers
        # bubblewrap reports a program's death by signal N as exit status 128+N, and a program can exit with
        # that status itself; a warm start, or a run without bubblewrap, sees the program's own wait status.
        self.exact_status = handle.exact_status
        self.usage_complete = handle.usage_complete
        # What the disk guard ended the run for ("quota" or "reserve"), from the runner's own measure.
        self.disk = disk
        # Set when the sandbox never started the program (bubblewrap failed to build it).
        self.not_started = (not timed_out and not cancelled and not disk) and handle.not_started()


class ColdRun(object):
    """The runtime started as a new process (under bubblewrap or not), the runner's own child."""

    def __init__(self, plan, preexec, out_fd, err_fd, cg_dir):
        self.cg_dir = cg_dir
        self.uid = plan.uid if plan.uid is not None else os.geteuid()
        self.exact_status = not plan.bwrap
        # Whether the usage counts measure the program: not when bubblewrap's pid 1 goes unreaped, nor when
        # the fork's copy of a large runner (the in-process transport's host) set the peak before exec.
        self.usage_complete = not plan.bwrap and own_rss_kb() < plan.limits["memory_mb"] * 1024 // 4
        self.info = self.said = None
        passed = []
        if plan.bwrap:
            # bubblewrap writes to the info fd once the sandbox is built, just before it starts the program.
            self.info, info_w = os.pipe()
            passed = [info_w]
            options = plan.bwrap_options() + ["--info-fd", str(info_w)]
            if plan.seccomp:
                passed.append(data_fd(plan.seccomp))
                options += ["--seccomp", str(passed[-1])]
            args = spawn_args(options, plan.env)
            passed.append(args)
            argv, env = [plan.bwrap, "--args", str(args), "--"] + plan.argv, {"PATH": SYSTEM_PATH}
        else:
            argv, env = plan.argv, plan.env
        try:
            with spawning():
                inherited = passed + list(plan.pass_fds)
                self.proc = self._spawn(argv, env, preexec, out_fd, err_fd, plan.workdir, inherited)
                with _SPAWNS:
                    OWN_CHILDREN.add(self.proc.pid)
        except BaseException:
            if self.info is not None:
                os.close(self.info)
            raise
        finally:
            for fd in passed:
                os.close(fd)

    @staticmethod
    def _spawn(argv, env, preexec, out_fd, err_fd, cwd, passed):
        return subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=out_fd,
            stderr=err_fd,
            cwd=cwd,
            env=env,
            preexec_fn=preexec,
            close_fds=True,
            pass_fds=passed,
        )

    def kill(self, grace):
        kill_group(self.proc.pid, self.cg_dir, grace)

    def wait(self):
        try:
            _, status, usage = os.wait4(self.proc.pid, 0)
        finally:
            own_child_done(self.proc.pid)
        self.proc.returncode = status  # tell Popen the child is reaped
        cpu, maxrss = usage.ru_utime + usage.ru_stime, usage.ru_maxrss
        self.said = self._read_info()
        pid1 = sandbox_pid1(self.said)
        if pid1 is not None and not SUBREAPER:
            # Not ours to reap: wait until it is gone (the kernel kills it with the monitor), so that nothing
            # of the run is left when its result is.
            await_exit(pid1, self.uid)
        if pid1 is not None and SUBREAPER:
            # bubblewrap's monitor exits without reaping the sandbox's pid 1, whose usage (its own and the
            # program's, which it reaped) would be lost; as a subreaper, the runner reaps it instead.
            try:
                _, _, more = os.wait4(pid1, 0)
            except ChildProcessError:
                pass
            else:
                cpu += more.ru_utime + more.ru_stime
                maxrss = max(maxrss, more.ru_maxrss)
                self.usage_complete = True
        return status, cpu, maxrss

    def _read_info(self):
        if self.info is None:
            return None
        try:
            os.set_blocking(self.info, False)
            try:
                return os.read(self.info, 4096)
            except BlockingIOError:
                return b""
        finally:
            os.close(self.info)
            self.info = None

    def not_started(self):
        return self.said is not None and b"child-pid" not in self.said

    def leftovers(self):
        # Whatever the program left behind (background children, daemons) goes with it.
        return kill_group(self.proc.pid, self.cg_dir, grace=0)


class WarmStart(object):
    """A Python run forked from the zygote (see zygote.py); its end also ends its sandbox."""

    exact_status = usage_complete = True

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

    def not_started(self):
        return False  # the zygote reports set-up failures itself (WarmSetupError)


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


def mb_bytes(mb):
    return None if mb is None else int(mb) * 1024 * 1024


#: A running run's dirs are measured at least this often, whatever the filesystem's count says.
DISK_WALK_SECONDS = 1.0


class DiskBudget(object):
    """A run's disk: refused at the start when the target is below its free-space reserve; ended (by
    DISK_GUARD) when the reserve or the work dir's quota is crossed while it goes on.

    Polling is cheap: one statvfs per run a tick, and a walk of the work dir only once the filesystem as a
    whole has grown by more than the run may still write. A run can write past the quota between two ticks
    (at most what the disk takes in a tick); a task's /tmp under bubblewrap is memory, capped on its own; a
    session's /tmp is a dir on disk (``tmpdir``), counted with its work dir.
    """

    def __init__(self, workdir, quota, reserve, tmpdir=None):
        self.workdir, self.quota, self.reserve = workdir, quota, reserve
        self.dirs = [workdir] + ([tmpdir] if tmpdir else [])
        self.exceeded = None
        st = os.statvfs(workdir)
        if reserve is not None and free_bytes(st) < reserve:
            raise RunnerError(
                "environment",
                "the target has %d MB of disk free, below its reserve of %d MB: no run starts until space is "
                "freed (ec2-sandbox cleanup, or the cleanup tool)" % (free_bytes(st) >> 20, reserve >> 20),
            )
        self.fs_used_at_start = used_bytes(st)
        self.walked = time.monotonic()
        # A work dir already at its quota still runs (a run that only removes files is how it gets back
        # under), but any growth ends it.
        self.remaining = None if quota is None else max(0, quota - self.size())

    def size(self):
        return sum(tree_size(path) for path in self.dirs)

    def check(self):
        """The reason to end the run now ("reserve", "quota"), or None."""
        st = os.statvfs(self.workdir)
        if self.reserve is not None and free_bytes(st) < self.reserve:
            return "reserve"
        if self.quota is None:
            return None
        # The filesystem's own count is cheap, but other work on the machine that frees space can hide a
        # run's growth from it: the dirs are walked anyway every DISK_WALK_SECONDS.
        grown = used_bytes(st) - self.fs_used_at_start > self.remaining
        due = time.monotonic() - self.walked >= DISK_WALK_SECONDS
        if not (grown or due):
            return None
        self.walked = time.monotonic()
        return "quota" if self.size() > self.quota else None


def free_bytes(st):
    return st.f_bavail * st.f_frsize


def used_bytes(st):
    return (st.f_blocks - st.f_bfree) * st.f_frsize


class DiskGuard(object):
    """One thread that checks the disk for every run in progress (a thread per run would cost more)."""

    INTERVAL = 0.25

    def __init__(self):
        self.lock = threading.Lock()
        self.runs = {}
        self.thread = None

    def add(self, key, budget, kill):
        if budget.quota is None and budget.reserve is None:
            return
        with self.lock:
            self.runs[key] = (budget, kill)
            if self.thread is None:
                self.thread = threading.Thread(target=self._loop, name="ec2-sandbox-disk", daemon=True)
                self.thread.start()

    def remove(self, key):
        with self.lock:
            self.runs.pop(key, None)

    def _loop(self):
        while True:
            time.sleep(self.INTERVAL)
            with self.lock:
                runs = list(self.runs.values())
            for budget, kill in runs:
                try:
                    reason = budget.check()
                except OSError:
                    continue
                if reason and not budget.exceeded:
                    budget.exceeded = reason
                    kill()


DISK_GUARD = DiskGuard()


def watch(handle, started, timeout, task_hash, budget):
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
    DISK_GUARD.add(task_hash, budget, lambda: handle.kill(0))
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
        DISK_GUARD.remove(task_hash)
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
        handle,
        budget.exceeded,
    )


def await_exit(pid, uid, limit=10.0):
    """Wait (a bounded while) until ``pid`` has exited, if it is still a bubblewrap of ``uid``."""
    if not hasattr(os, "pidfd_open"):
        return
    try:
        pidfd = os.pidfd_open(pid)
    except OSError:
        return  # gone already
    try:
        if process_comm(pid) == b"bwrap" and process_uid(str(pid)) == uid:
            select.select([pidfd], [], [], limit)
    finally:
        os.close(pidfd)


def own_rss_kb():
    """This process's resident set now, in KB (what a child forked from it starts with)."""
    try:
        with open("/proc/self/statm", "rb") as fh:
            return int(fh.read().split()[1]) * (os.sysconf("SC_PAGE_SIZE") // 1024)
    except (OSError, ValueError, IndexError):
        return 1 << 40


def sandbox_pid1(info):
    """The pid of the sandbox's first process from bubblewrap's --info-fd JSON, or None."""
    if not info:
        return None
    try:
        return int(json.loads(info.decode("utf-8"))["child-pid"])
    except (ValueError, KeyError, TypeError):
        return None


# A runner in a process of its own (main(), the SSH runner service) is the subreaper of its runs: it reaps
# bubblewrap's pid 1 (see ColdRun.wait) and whatever a run without bubblewrap left behind. The in-process
# transport's host is not made one: orphans of the host's other code would wait there forever.
SUBREAPER = False
PR_SET_CHILD_SUBREAPER = 36
# Children this process started and waits for itself, which reap_orphans must leave alone; the count of
# spawns under way keeps it from mistaking a child whose pid is not yet known for an orphan.
OWN_CHILDREN: "set[int]" = set()
_SPAWNS = threading.Condition()
_SPAWNING = [0]


def become_subreaper():
    """Make this process the subreaper of its runs (see SUBREAPER); True if it now is."""
    global SUBREAPER
    SUBREAPER = _LIBC is not None and _LIBC.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) == 0
    return SUBREAPER


class spawning(object):
    """Around a fork whose pid goes into OWN_CHILDREN: reap_orphans waits until it is known."""

    def __enter__(self):
        with _SPAWNS:
            _SPAWNING[0] += 1

    def __exit__(self, *exc):
        with _SPAWNS:
            _SPAWNING[0] -= 1
            _SPAWNS.notify_all()


def own_child_done(pid):
    with _SPAWNS:
        OWN_CHILDREN.discard(pid)


def process_uid(pid):
    """The real uid of process ``pid`` (a zombie's too), or None."""
    try:
        with open("/proc/%s/status" % pid, "rb") as fh:
            for line in fh:
                if line.startswith(b"Uid:"):
                    return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        pass
    return None


def is_sandbox_uid(uid):
    first, count = SANDBOX_UID_RANGE
    return uid is not None and first <= uid < first + count


def process_comm(pid):
    try:
        with open("/proc/%s/comm" % pid, "rb") as fh:
            return fh.read().strip()
    except OSError:
        return b""


def reap_orphans():
    """Reap the zombies that were reparented to this subreaper (processes a run left behind, killed by the
    uid sweep): without it a long-lived runner would keep one per leftover, forever."""
    if not SUBREAPER:
        return
    me = str(os.getpid()).encode()
    with _SPAWNS:
        while _SPAWNING[0]:
            _SPAWNS.wait()
        for name in os.listdir("/proc"):
            if not name.isdigit() or int(name) in OWN_CHILDREN:
                continue
            try:
                with open("/proc/%s/stat" % name, "rb") as fh:
                    fields = fh.read().rsplit(b")", 1)[1].split()
            except OSError:
                continue
            # Only a sandbox uid's leftovers: bubblewrap's own pid 1 (named so by the kernel from its
            # executable) is reaped by the ColdRun.wait that waits for it, and the runner's own helpers
            # (probes, root's) by whoever started them.
            if (
                fields[0] == b"Z"
                and fields[1] == me
                and is_sandbox_uid(process_uid(name))
                and process_comm(name) != b"bwrap"
            ):
                try:
                    os.waitpid(int(name), os.WNOHANG)
                except ChildProcessError:
                    pass


def start_streamer(req, stdout_path, stderr_path, emit):
    if not req.get("stream"):
        return None
    streamer = Streamer(stdout_path, stderr_path, emit)
    streamer.start()
    return streamer


# --------------------------------------------------------------------------------------------------
# Warm starts (zygote.py): only a long-lived runner keeps a zygote, and asks for it with "warm": true
# --------------------------------------------------------------------------------------------------


class _AloneSetupError(Exception):
    """A zygote's set-up failure where the runner runs alone and makes the zygote's module itself."""


_zygote_module: "Any"
try:
    from . import zygote as _zygote_module

    WarmSetupError: "type[Exception]" = _zygote_module.SetupError
except ImportError:  # the runner alone on a target, run as a script
    _zygote_module = None
    WarmSetupError = _AloneSetupError


# What CPython, the dynamic loader or libc read once at start-up: a zygote started earlier cannot honour
# them, so a run that sets any of them starts cold.
WARM_UNSAFE_ENV = re.compile(r"^(PYTHON|LC_|LD_|MALLOC_|GLIBC_)|^(LANG|LANGUAGE|HOME)$")
WARM_MAX_FAILURES = 3
_ZYGOTES: "dict[tuple, Any]" = {}
_ZYGOTES_REFUSED: "set[tuple]" = set()
_ZYGOTE_LOCK = threading.Lock()


def zygote_module(base):
    """The zygote's module: imported beside the runner, or - a runner shipped alone, as the SSH service runs
    it - made from its companion source, kept for the zygote process in the root-only kernels dir."""
    global _zygote_module
    if _zygote_module is not None or "zygote.py" not in COMPANIONS:
        return _zygote_module
    with _ZYGOTE_LOCK:
        if _zygote_module is None:
            source = COMPANIONS["zygote.py"].encode("utf-8")
            path = os.path.join(base, KERNELS, "zygote-%s.py" % hashlib.sha256(source).hexdigest()[:16])
            if not os.path.exists(path):
                tmp = "%s.%d" % (path, os.getpid())
                fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
                with os.fdopen(fd, "wb") as fh:
                    fh.write(source)
                os.rename(tmp, path)
            module = types.ModuleType("ec2_sandbox_zygote")
            module.__file__ = path
            exec(compile(source, path, "exec"), module.__dict__)  # noqa: S102 - the runner's own companion
            # Its set-up failures must be the ones this runner catches.
            module.SetupError = WarmSetupError
            _zygote_module = module
    return _zygote_module


def warm_zygote(req, runtime, argv, workdir, base):
    """How a long-lived runner starts this run from a zygote: ``(zygote, how)``, where ``how`` is
    ``{"program": path}`` for a Python program the zygote runs itself, or ``{"exec": argv}`` for any other
    runtime, which the zygote's program process executes once its sandbox, uid and limits are set. Either
    way the zygote is the program's parent's parent, and reports its real wait status and usage. ``None``
    when the run must start cold (not asked for, start-up-sensitive environment, or no zygote here)."""
    if not req.get("warm") or zygote_module(base) is None:
        return None
    if runtime.get("warm_start") != "python" or runtime["argv"][-1:] != ["{file}"]:
        python = resolve_executable("python3")
        zyg = zygote_for((python,)) if python else None
        return (zyg, {"exec": list(argv)}) if zyg is not None else None
    if any(WARM_UNSAFE_ENV.match(name) for name in req.get("env") or {}):
        return None
    # A user site directory (pip install --user in a session) is added to sys.path at start-up.
    if os.path.lexists(os.path.join(workdir, ".local")):
        return None
    zyg = zygote_for(tuple(argv[:-1]))
    return (zyg, {"program": argv[-1]}) if zyg is not None else None


def zygote_for(key):
    """The zygote for an interpreter and its flags, started on first use; None where none can run."""
    # An interpreter upgraded in place (a package update) gets a new zygote, as it would a cold start.
    st = os.stat(key[0])
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


def holder_argv(plan):
    """The run's bubblewrap as a cold start would build it, reporting its pid, around a placeholder.

    The placeholder runs under the run's uid, so it gets the run's syscall filter too (fd 4, which the
    zygote fills): unfiltered, it is a process the program could take over through /proc/1/mem.
    """
    placeholder = resolve_executable("cat") or "/bin/cat"
    extra = ["--seccomp", "4"] if plan.seccomp else []
    tail = ["--clearenv", "--as-pid-1", "--info-fd", "3"] + extra + ["--", placeholder]
    return [plan.bwrap] + plan.bwrap_options() + tail


# Runs in progress in this process, by task hash, with how to stop each: a caller that gives up (an
# in-process transport cancelled, SIGTERM to a runner process) must not leave its program running.
ACTIVE_RUNS: "dict[str, Callable[[], None]]" = {}
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


def make_cgroup(root, task_hash, limits):
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


def cgroup_event(cg_dir, events_file, key):
    """One counter of a cgroup's events file (memory.events, pids.events): the kernel's count."""
    if cg_dir is None:
        return 0
    try:
        with open(os.path.join(cg_dir, events_file)) as fh:
            for line in fh:
                name, _, value = line.partition(" ")
                if name == key:
                    return int(value)
    except (OSError, ValueError):
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


# What a program's stderr may say when a limit refused it something. Only ever a hint: the program can print
# any of these itself. A reason rests on what the program cannot fake (see Evidence).
FSIZE_MARKERS = ["File too large", "EFBIG", "File size limit exceeded"]
MEMORY_MARKERS = ["MemoryError", "Array buffer allocation failed", "Cannot allocate memory", "std::bad_alloc"]
NPROC_MARKERS = ["Resource temporarily unavailable", "EAGAIN", "can't start new thread"]
# Without a memory cgroup, the kernel's count of the run's peak resident memory must reach this share of
# the limit before the runner believes a memory error the program reports.
PEAK_SHARE_FOR_MEMORY = 0.5


class Evidence(object):
    """What the runner itself saw of a run's end, each fact from a source the program cannot write: the wait
    status, the runner's watchdog, the kernel's resource usage, cgroup event counters, and the sizes of the
    capture files and of the files in the work dir. Its stderr is read only for hints."""

    def __init__(self, outcome, limits, cg_dir, stdout_path, stderr_path, workdir):
        self.timed_out = outcome.timed_out
        self.disk = outcome.disk
        self.cpu_time = outcome.cpu_time
        self.limits = limits
        self.fsize = limits["file_size_mb"] * 1024 * 1024
        self.output_at_limit = any(size_of(p) >= self.fsize for p in (stdout_path, stderr_path))
        self.workdir = workdir
        self._file_at_limit = None
        if os.WIFSIGNALED(outcome.status):
            self.code, self.signal = -os.WTERMSIG(outcome.status), os.WTERMSIG(outcome.status)
        else:
            self.code, self.signal = os.WEXITSTATUS(outcome.status), None
            if not outcome.exact_status and 128 < self.code < 128 + 65:
                # Killed by signal N, or exit(128 + N): believed only where a fact confirms that signal.
                self.signal = self._confirmed(self.code - 128, outcome)
                if self.signal is not None:
                    self.code = -self.signal
        self.oom_kills = cgroup_event(cg_dir, "memory.events", "oom_kill")
        self.memory_max_events = cgroup_event(cg_dir, "memory.events", "max")
        self.pids_max_events = cgroup_event(cg_dir, "pids.events", "max")
        self.peak_kb = cgroup_peak_kb(cg_dir) or int(outcome.maxrss_kb)
        # Without a cgroup, the kernel's usage counts are the measure, where they cover the program.
        self.peak_counted = cgroup_peak_kb(cg_dir) is not None or outcome.usage_complete
        self.has_memory_cgroup = cg_dir is not None and os.path.exists(os.path.join(cg_dir, "memory.max"))
        self.stderr_path = stderr_path

    def _confirmed(self, sig, outcome):
        if sig == signal.SIGKILL and outcome.timed_out:
            return sig  # the runner's own kill
        if sig == signal.SIGXCPU and self.cpu_limit_reached():
            return sig
        if sig == signal.SIGXFSZ and (self.output_at_limit or self.file_at_limit()):
            return sig
        return None

    def cpu_limit_reached(self):
        # The kernel sends SIGXCPU at the tick that crosses the limit, from a count that the reported usage
        # (scaled from sampled ticks) may trail under load: half the limit is the bar a forged SIGXCPU fails.
        return self.cpu_time >= self.limits["cpu_seconds"] * 0.5

    def file_at_limit(self):
        """Some file of the work dir (or a capture file) reached the file-size limit."""
        if self._file_at_limit is None:
            sizes = (sig[0] for sig in snapshot_files(self.workdir).values())
            self._file_at_limit = self.output_at_limit or any(size >= self.fsize for size in sizes)
        return self._file_at_limit

    def memory_limit_reached(self):
        if self.oom_kills or self.memory_max_events:
            return True
        if self.has_memory_cgroup or not self.peak_counted:
            return False
        return self.peak_kb >= self.limits["memory_mb"] * 1024 * PEAK_SHARE_FOR_MEMORY

    def stderr_says(self, markers):
        return tail_mentions(self.stderr_path, markers)


def describe_exit(ev, runtime, limits, timeout):
    """Name why a run ended, from evidence the program cannot fake; what only its stderr suggests becomes a
    hint in the message, never the reason."""
    sig, code = ev.signal, ev.code
    failed = code != 0
    memory_markers = (runtime.get("oom_markers") or []) + MEMORY_MARKERS
    if ev.timed_out:
        reason = "timeout"
    elif ev.disk:
        reason = "disk_limit"
    elif ev.oom_kills:
        reason = "memory_limit"
    elif failed and ev.output_at_limit:
        reason = "output_limit"
    elif sig == signal.SIGXCPU and ev.cpu_limit_reached():
        reason = "cpu_time_limit"
    elif failed and (sig == signal.SIGXFSZ or ev.stderr_says(FSIZE_MARKERS)) and ev.file_at_limit():
        reason = "file_size_limit"
    elif failed and ev.pids_max_events:
        reason = "process_limit"
    elif failed and ev.stderr_says(memory_markers) and ev.memory_limit_reached():
        reason = "memory_limit"
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
        "disk_limit": (
            "wrote more than the work dir's %s MB disk quota" % limits.get("disk_mb")
            if ev.disk == "quota"
            else "brought the target's free disk below its reserve"
        ),
        "signal": "killed by signal %s (%s)" % (sig, signal_name(sig)),
    }
    if reason != "exited":
        error = messages[reason]
    elif failed:
        error = "exited with status %d" % code
        if not ev.signal and 128 < code < 128 + 65:
            error += " (what a death by %s looks like through bubblewrap; nothing confirms a signal)" % (
                signal_name(code - 128)
            )
    else:
        error = None
    hint = limit_hint(ev, reason, failed, memory_markers, limits)
    if hint:
        error = "%s; %s" % (error, hint)
    return {
        "success": reason == "exited" and not failed,
        "return_code": code,
        "signal": sig,
        "termination_reason": reason,
        "timed_out": ev.timed_out,
        "error_message": error,
    }


def limit_hint(ev, reason, failed, memory_markers, limits):
    """What the program's stderr suggests about a limit the evidence does not show (None if nothing)."""
    if not failed or reason in ("memory_limit", "process_limit", "file_size_limit", "output_limit"):
        return None
    said = "its output suggests it %s (a hint: nothing the program cannot fake confirms it)"
    if ev.stderr_says(NPROC_MARKERS):
        return said % ("hit the limit of %d processes" % limits["processes"])
    if ev.stderr_says(memory_markers):
        return said % ("ran out of memory (the limit is %d MB)" % limits["memory_mb"])
    if ev.stderr_says(FSIZE_MARKERS):
        return said % ("wrote past the %d MB file-size limit" % limits["file_size_mb"])
    return None


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


def cut_text(text, limit, head_chars=None):
    """The one rule that cuts output: at most ``limit`` characters, up to half of them from the start and
    the rest from the end. ``head_chars``: ``text`` is already a head (its first ``head_chars``
    characters) and a tail of a longer output, and the new cut keeps within each. Returns (head, tail)."""
    if head_chars is None:
        head_chars = min(len(text), limit // 2)
    head = text[: min(head_chars, limit // 2)]
    rest = text[head_chars:]
    tail = rest[max(0, len(rest) - (limit - len(head))) :]
    return head, tail


def cut_stream(text, size, limit, head_chars=None):
    """The inline form of a captured stream of ``size`` bytes: its whole ``text`` when that fits ``limit``
    characters and nothing was cut before, else head and tail by :func:`cut_text`, with the bytes between
    them counted. Only the client's presentation puts words between head and tail."""
    if head_chars is None and len(text) <= limit:
        return {"text": text, "bytes": size, "truncated": False, "omitted_bytes": 0}
    head, tail = cut_text(text, limit, head_chars)
    shown = len(head.encode("utf-8", "replace")) + len(tail.encode("utf-8", "replace"))
    return {
        "text": head + tail,
        "head_chars": len(head),
        "bytes": size,
        "truncated": True,
        "omitted_bytes": max(0, size - shown),
    }


def inline_text(path, limit):
    """Head and tail of a captured stream, at most ``limit`` characters, with what was left out."""
    size = size_of(path)
    # UTF-8 is at most 4 bytes a character: a stream up to 4x ``limit`` bytes is read whole, a longer
    # one as its first and last 2x ``limit`` bytes (the tail a few more, to start at a character), which
    # hold every character the cut keeps.
    with open(path, "rb") as fh:
        if size <= 4 * limit + 8:
            data = fh.read()
            stream = cut_stream(data.decode("utf-8", "replace"), size, limit)
            stream["valid_utf8"] = is_utf8(data)
            return stream
        head_raw = fh.read(2 * limit)
        fh.seek(size - 2 * limit - 8)
        tail_raw = fh.read()
    skip = 0  # bytes that end a character begun before the tail (3 at most)
    while skip < 3 and 0x80 <= tail_raw[skip] < 0xC0:
        skip += 1
    tail_raw = tail_raw[skip:]
    head = head_raw.decode("utf-8", "replace")
    stream = cut_stream(head + tail_raw.decode("utf-8", "replace"), size, limit, len(head))
    stream["valid_utf8"] = is_utf8(head_raw) and is_utf8(tail_raw)
    return stream


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


def public_name(rel):
    """A work-dir path as callers see it: one starting with '@' gets './' so it can never be a stream name."""
    return "./" + rel if rel.startswith("@") else rel


def open_workdir(path):
    """The work dir's fd (its last component never followed as a link), or None when it is gone."""
    try:
        return os.open(path, O_DIR_NOFOLLOW)
    except OSError as exc:
        if exc.errno in (errno.ENOENT, errno.ELOOP, errno.ENOTDIR):
            return None
        raise


def snapshot_files(root):
    """name -> (size, mtime_ns, inode) of every regular file and link below ``root``, through dir fds."""
    found = {}
    fd = open_workdir(root)
    if fd is None:
        return found
    try:
        for rel, st in walk_tree(fd, skip_top=(".tmp",), max_entries=MAX_FILES_LISTED * 10):
            if st is not None and (stat.S_ISREG(st.st_mode) or stat.S_ISLNK(st.st_mode)):
                found[public_name(rel)] = (st.st_size, st.st_mtime_ns, st.st_ino)
    finally:
        os.close(fd)
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


def files_of(base, req):
    """Whose files a list or read request names: a task's (its record) or a session's (its work dir)."""
    session_id = req.get("session_id")
    if req.get("task_hash") is not None or session_id is None:
        return load_record(base, req.get("task_hash"))
    check_session(session_id)
    uid = UidPool(base, *SANDBOX_UID_RANGE).lookup("session:" + session_id) if os.geteuid() == 0 else None
    return {
        "task_hash": None,
        "session_id": session_id,
        "workdir": os.path.join(base, SESSIONS, session_id),
        "uid": uid,
    }


def check_session(session_id):
    if not isinstance(session_id, str) or not SESSION_ID_RE.match(session_id):
        raise RunnerError(
            "invalid_input",
            "session_id %r must be 1-64 characters of letters, digits, '.', '_' or '-', starting with a "
            "letter or digit" % (session_id,),
        )


class SessionDir(object):
    """A session's work dir, made with its uid and held (as a run holds it) while files are written."""

    def __init__(self, base, session_id):
        check_session(session_id)
        self.lock = UseLock(session_lock_path(base, session_id))
        try:
            self.uid = None
            if os.geteuid() == 0:
                self.uid = UidPool(base, *SANDBOX_UID_RANGE).acquire("session:" + session_id)
            make_owned_dir(base, SESSIONS, session_id, self.uid)
            make_owned_dir(base, SESSION_TMP, session_id, self.uid)
        except BaseException:
            self.lock.release()
            raise
        self.workdir = os.path.join(base, SESSIONS, session_id)
        self.owner = (self.uid, self.uid) if self.uid is not None else None

    def close(self):
        self.lock.touch()
        self.lock.release()


def write_files(req):
    """Write files into a session's work dir without running anything (nested paths made as needed)."""
    base = prepare_base(req.get("base_dir"))
    session = SessionDir(base, req.get("session_id"))
    try:
        written = write_inputs(session.workdir, req.get("files"), session.owner)
        return {"session_id": req["session_id"], "written": written}
    finally:
        session.close()


def remove_files(req):
    """Remove files or dirs (whole trees) from a session's work dir, through dir fds only."""
    base = prepare_base(req.get("base_dir"))
    session = SessionDir(base, req.get("session_id"))
    removed, missing = [], []
    try:
        root_fd = os.open(session.workdir, O_DIR_NOFOLLOW)
        try:
            for path in req.get("paths") or []:
                parts = check_relative_path(path, "path")
                try:
                    parent = open_dir_nofollow(root_fd, parts[:-1])
                except FileNotFoundError:
                    missing.append(path)
                    continue
                try:
                    os.stat(parts[-1], dir_fd=parent, follow_symlinks=False)
                    gone = remove_at(parent, parts[-1])
                except FileNotFoundError:
                    gone = False
                finally:
                    os.close(parent)
                (removed if gone else missing).append(path)
        finally:
            os.close(root_fd)
        return {"session_id": req["session_id"], "removed": removed, "missing": missing}
    finally:
        session.close()


def list_files(req):
    base = prepare_base(req.get("base_dir"))
    meta = files_of(base, req)
    root = task_root(base, meta)
    safe_owner = meta.get("uid") if os.geteuid() == 0 else None
    files = []
    skipped = []
    fd = open_workdir(root)
    if fd is not None:
        try:
            for rel, st in walk_tree(fd, skip_top=(".tmp",)):
                name = public_name(rel)
                if st is None:
                    skipped.append(
                        {"path": name, "reason": "more than %d dirs deep (not listed)" % MAX_WALK_DEPTH}
                    )
                elif stat.S_ISDIR(st.st_mode):
                    continue
                elif stat.S_ISLNK(st.st_mode):
                    skipped.append({"path": name, "reason": "symlink (never followed)"})
                elif not stat.S_ISREG(st.st_mode):
                    skipped.append({"path": name, "reason": "not a regular file"})
                elif not file_is_safe(st, safe_owner):
                    skipped.append({"path": name, "reason": "hard link to a file the task does not own"})
                else:
                    files.append({"path": name, "size": st.st_size})
                if len(files) >= MAX_FILES_LISTED:
                    break
        finally:
            os.close(fd)
    streams = []
    for name, fname in sorted(STREAMS.items()) if meta["task_hash"] else ():
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
        "exists": fd is not None,
        "files": sorted(files, key=lambda f: f["path"]),
        "streams": streams,
        "skipped": skipped,
        "truncated": len(files) >= MAX_FILES_LISTED,
    }


def read_file(req):
    base = prepare_base(req.get("base_dir"))
    meta = files_of(base, req)
    name = req["path"]
    offset = int(req.get("offset") or 0)
    length = int(req["length"]) if req.get("length") is not None else 1 << 20
    if offset < 0 or length < 0:
        raise RunnerError("invalid_input", "offset and length must not be negative")
    record_file = STREAMS.get(name) or (
        name[1:] if isinstance(name, str) and DISPLAY_RE.match(name) else None
    )
    if record_file is not None:
        if meta["task_hash"] is None:
            raise RunnerError("invalid_input", "%s is a task's, not a session's: give its task_hash" % name)
        try:
            fd = os.open(
                os.path.join(record_dir(base, meta["task_hash"]), record_file), os.O_RDONLY | os.O_CLOEXEC
            )
        except FileNotFoundError:
            raise RunnerError("not_found", "task %s has no %s" % (meta["task_hash"], name))
        size = os.fstat(fd).st_size
    else:
        # './@stdout' is the work dir's file of that name (listings show it so), never the stream.
        rel = name[2:] if isinstance(name, str) and name.startswith("./") else name
        safe_owner = meta.get("uid") if os.geteuid() == 0 else None
        fd, st = open_file_in(task_root(base, meta), rel, safe_owner)
        size = st.st_size
    try:
        os.lseek(fd, offset, os.SEEK_SET)
        chunks = []
        remaining = length
        # The size known at open in one read (no copy to join), then whatever the file grew by since.
        step = max(size - offset, 1 << 20)
        while remaining > 0:
            chunk = os.read(fd, min(remaining, step))
            step = 1 << 20
            if not chunk:
                break
            chunks.append(chunk)
            remaining -= len(chunk)
    finally:
        os.close(fd)
    data = b"".join(chunks)
    page = {"path": name, "size": size, "offset": offset}
    if req.get("raw") is True:  # an in-process caller takes the bytes as they are
        page["raw"] = data
    else:
        page["b64"] = base64.b64encode(data).decode("ascii")
    return page


WORKDIR_KINDS = (
    (TASKS, "task", TASK_HASH_RE),
    (EPHEMERAL, "task", TASK_HASH_RE),
    (SESSIONS, "session", SESSION_ID_RE),
)


def inventory(req):
    """Every task, session and run record under the base dir, with when it was last used (by the runner's
    own records, which code cannot touch), for a cleanup policy to choose."""
    base = prepare_base(req.get("base_dir"))
    want_sizes = bool(req.get("sizes"))
    entries = []
    for sub, kind, pattern in WORKDIR_KINDS + ((RUNS, "run", TASK_HASH_RE),):
        root = os.path.join(base, sub)
        for name in sorted(os.listdir(root)):
            path = os.path.join(root, name)
            if not pattern.match(name) or not is_real_dir(path):
                continue
            if kind == "run":
                mtime = os.lstat(path).st_mtime
            elif kind == "task":
                mtime = last_used(task_lock_path(base, name), path)
            else:
                mtime = last_used(session_lock_path(base, name), path)
            entry = {"kind": kind, "id": name, "mtime": mtime}
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
    fd = open_workdir(path)
    if fd is None:
        return 0
    try:
        return sum(st.st_blocks * 512 for _, st in walk_tree(fd) if st is not None)
    finally:
        os.close(fd)


def remove(req):
    """Remove the named tasks, sessions and run records; nothing outside the base dir can be named, and
    nothing in use (a run in progress, a live process of its uid) is removed: it is reported as skipped."""
    base = prepare_base(req.get("base_dir"))
    removed = []
    skipped = []
    for item in req.get("entries") or []:
        kind, name = item.get("kind"), item.get("id")
        if kind == "session":
            subs, pattern = (SESSIONS, SESSION_TMP), SESSION_ID_RE
        elif kind == "task":
            subs, pattern = (TASKS, EPHEMERAL), TASK_HASH_RE
        elif kind == "run":
            subs, pattern = (RUNS,), TASK_HASH_RE
        else:
            raise RunnerError("invalid_input", "cannot remove a %r; kinds are task, session, run" % (kind,))
        if not isinstance(name, str) or not pattern.match(name):
            raise RunnerError("invalid_input", "%r is not a valid %s id" % (name, kind))
        try:
            gone = remove_entry(base, kind, name, subs)
        except InUse as exc:
            skipped.append({"kind": kind, "id": name, "reason": str(exc) or "a run is in progress"})
            continue
        if gone:
            removed.append({"kind": kind, "id": name})
        elif gone is False:
            skipped.append({"kind": kind, "id": name, "reason": "files kept appearing while it was removed"})
    return {"base_dir": base, "removed": removed, "skipped": skipped}


def remove_entry(base, kind, name, subs):
    """Remove one entry under its exclusive use lock: True if removed, None if absent, False if it could
    not be emptied. Raises InUse when a run holds it or a process of its uid still lives."""
    if kind == "session":
        lock = UseLock(session_lock_path(base, name), exclusive=True)
    else:
        lock = UseLock(task_lock_path(base, name), exclusive=True, create=False)
    unlink_lock = False
    try:
        # A run record is its task's: it names the task's uid, and goes only when that uid is quiet too
        # (else the task, removed later, could no longer be found to have a live process).
        uid_key = ("task:" if kind == "run" else kind + ":") + name
        uid = UidPool(base, *SANDBOX_UID_RANGE).lookup(uid_key) if os.geteuid() == 0 else None
        if kind == "session":
            # An idle interpreter goes with its session (a busy one holds the session: InUse above).
            ask_host(base, name, {"op": "cleanup"}, 90)
        if uid is not None and not uid_quiet(uid):
            raise InUse("processes of its uid %d are still running" % uid)
        found = None
        for sub in subs:
            parent = os.open(os.path.join(base, sub), O_DIR_NOFOLLOW)
            try:
                try:
                    st = os.stat(name, dir_fd=parent, follow_symlinks=False)
                except FileNotFoundError:
                    continue
                if not stat.S_ISDIR(st.st_mode):
                    continue
                found = remove_at(parent, name)
            finally:
                os.close(parent)
        # Gone (or never there): a session's lock goes too, under the exclusive hold (UseLock says why that
        # is safe); a task's is its record's meta.json, which goes with the record.
        unlink_lock = kind == "session" and found is not False
        if found and uid is not None and kind != "run":
            UidPool(base, *SANDBOX_UID_RANGE).release([uid_key])
        return found
    finally:
        lock.release(unlink=unlink_lock)


def cleanup(req):
    """The "age" policy applied by the runner itself: what the instance's cleanup timer asks for (the client's
    cleanup tool chooses through its own policy, then calls remove)."""
    hours = req.get("hours")
    if isinstance(hours, bool) or not isinstance(hours, (int, float)) or not 0 <= hours <= 87600:
        raise RunnerError("invalid_input", "hours must be a number from 0 to 87600, got %r" % (hours,))
    found = inventory({"base_dir": req.get("base_dir")})
    cutoff = found["now"] - hours * 3600
    chosen = [{"kind": e["kind"], "id": e["id"]} for e in found["entries"] if e["mtime"] < cutoff]
    if req.get("dry_run"):
        return {"base_dir": found["base_dir"], "removed": chosen, "skipped": [], "dry_run": True}
    return remove({"base_dir": found["base_dir"], "entries": chosen})


def is_real_dir(path):
    st = os.lstat(path)
    return stat.S_ISDIR(st.st_mode)


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
    sandbox_uid = RESERVED_UID if privileged else None
    return {
        "runner_python": "%d.%d.%d" % sys.version_info[:3],
        "base_dir": base,
        "disk_free_bytes": usage.free,
        "disk_total_bytes": usage.total,
        "privileged": privileged,
        "bwrap": bwrap,
        "bwrap_usable": bool(bwrap) and bwrap_works(bwrap, sandbox_uid, base),
        "cgroup": cg,
        "cgroup_controllers": controllers,
        "cgroup_kill": bool(cg) and os.path.exists(os.path.join(cg, "cgroup.kill")),
        "imds_guard": imds_guard_present(),
        "seccomp": seccomp_usable(),
        "on_ec2": on_ec2(),
        "netns_usable": netns_works(),
        "runtimes": runtimes,
        "interpreters": live_interpreters(base),
    }


def live_interpreters(base):
    """Sessions' interpreters that are up: session, busy or idle, cells run, resident memory."""
    found = []
    root = os.path.join(base, KERNELS)
    for name in sorted(os.listdir(root)):
        if not name.endswith(".json"):
            continue
        try:
            with open(os.path.join(root, name), "rb") as fh:
                state = json.loads(fh.read().decode("utf-8"))
        except (OSError, ValueError):
            continue
        if state.get("state") not in ("running", "busy") or not pid_alive(state.get("host_pid")):
            continue
        found.append(
            {
                "session_id": state.get("session_id"),
                "busy": state.get("state") == "busy",
                "executions": state.get("executions"),
                "idle_seconds": round(max(0.0, time.time() - (state.get("last_used") or time.time())), 1),
                "memory_kb": uid_rss_kb(state.get("uid")),
            }
        )
    return found


def pid_alive(pid):
    if not isinstance(pid, int) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def uid_rss_kb(uid):
    """Resident memory of every process of a sandbox uid (None when the runs share the runner's uid)."""
    if not isinstance(uid, int):
        return None
    total = 0
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open("/proc/%s/status" % entry, "rb") as fh:
                text = fh.read().decode("ascii", "replace")
        except OSError:
            continue
        fields = dict(line.split(":", 1) for line in text.splitlines() if ":" in line)
        if fields.get("Uid", "").split()[:1] == [str(uid)]:
            total += int((fields.get("VmRSS") or "0 kB").split()[0])
    return total


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


# --------------------------------------------------------------------------------------------------
# Sessions' interpreters (kernel.py): one per session, started on the first stateful cell, reached by every
# later one - from this process or any other runner on the target (SSM starts one per call) - through a
# unix socket in the root-only kernels dir, served by the session's host: a process of this runner's code,
# outside the sandbox, that started the interpreter as a run and decides what each cell's result means.
# --------------------------------------------------------------------------------------------------

# Filled in when the runner is shipped alone (protocol.runner_source): its companions' sources by file name.
COMPANIONS: "dict[str, str]" = {}
#: After an interrupt, how long a cell may take to stop before its interpreter is killed.
KERNEL_GRACE_SECONDS = 2.0
#: How long an interpreter may take to start and say hello.
KERNEL_START_SECONDS = 60.0
#: An interpreter's run ends after this long whatever happens (its wall-clock limit as a run).
KERNEL_LIFETIME_SECONDS = 7 * 86400
DEFAULT_IDLE_SECONDS = 1800.0
#: Why an interpreter ended, as results and status say it. Ends the caller asked for lose nothing unasked.
KERNEL_ENDS = {
    "idle": "the interpreter was idle for longer than session_idle_timeout and exited",
    "interrupt": "a cell did not stop within %g s of its interrupt (its time ran out, or its caller gave "
    "up), so the interpreter was killed" % KERNEL_GRACE_SECONDS,
    "memory_limit": "the interpreter was killed at the memory limit",
    "disk_limit": "the session's files reached the disk limit and the interpreter was killed",
    "exited": "the interpreter exited (a cell ended its process)",
    "killed": "the interpreter was killed by a signal",
    "channel": "a cell wrote into the interpreter's channel to its host, so the interpreter was killed",
    "host_gone": "the interpreter's host process is gone (killed, or the target restarted)",
    "lifetime": "the interpreter reached its maximum lifetime of %d days"
    % (KERNEL_LIFETIME_SECONDS // 86400),
    "cleanup": "the session was cleaned up",
    "restart": "the interpreter was restarted on request",
    "close": "the interpreter was closed on request",
    "start": "the interpreter could not start",
}
ASKED_ENDS = ("restart", "close")
FRAME = struct.Struct("!I")
#: The largest frame the host takes from an interpreter (the host is root's, outside the sandbox's memory
#: limit): a larger one breaks the channel and ends the interpreter.
MAX_KERNEL_FRAME = 32 << 20
#: Bytes an interpreter may send between cells, when nothing is asked of it, before that counts as abuse.
MAX_UNSOLICITED_BYTES = 1 << 20
#: Extensions of the files a cell's rich results are kept in (in its record, read as @display-N.EXT).
MIME_FILES = {
    "image/png": "png",
    "image/jpeg": "jpg",
    "image/svg+xml": "svg",
    "text/html": "html",
    "text/markdown": "md",
    "text/latex": "tex",
    "application/json": "json",
}
DISPLAY_RE = re.compile(r"^@display-([0-9]{1,4})\.([a-z]{2,4})$")


def companion_source(name):
    """The source of a file shipped with the runner (kernel.py): beside it, or carried inside it."""
    if name in COMPANIONS:
        return COMPANIONS[name].encode("utf-8")
    with open(os.path.join(os.path.dirname(os.path.abspath(__file__)), name), "rb") as fh:
        return fh.read()


def own_source():
    """This runner's own source, for the session host it starts (from a file, or as it was received)."""
    source = globals().get("RUNNER_SOURCE")
    if source is not None:
        return source
    with open(os.path.abspath(__file__), "rb") as fh:
        return fh.read()


def kernel_key(session_id):
    # Socket paths are short (108 bytes): a digest names a session's files, and the dir is root's alone.
    return hashlib.sha256(session_id.encode("utf-8")).hexdigest()[:24]


class KernelFiles(object):
    """A session's host files in ``<base>/kernels``, reached through the dir's fd (no path code can touch)."""

    def __init__(self, base, session_id):
        self.base = base
        self.session_id = session_id
        self.key = kernel_key(session_id)
        self.dir_fd = os.open(os.path.join(base, KERNELS), O_DIR_NOFOLLOW)

    def path(self, suffix):
        return "/proc/self/fd/%d/%s%s" % (self.dir_fd, self.key, suffix)

    def close(self):
        if self.dir_fd is not None:
            os.close(self.dir_fd)
            self.dir_fd = None

    def read_state(self):
        try:
            fd = os.open(self.key + ".json", os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=self.dir_fd)
        except FileNotFoundError:
            return None
        with os.fdopen(fd, "rb") as fh:
            try:
                return json.loads(fh.read().decode("utf-8"))
            except ValueError:
                return None

    def write_state(self, state):
        tmp = "%s.json.%d" % (self.key, os.getpid())
        fd = os.open(
            tmp,
            os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC,
            0o600,
            dir_fd=self.dir_fd,
        )
        with os.fdopen(fd, "w") as fh:
            json.dump(dict(state, session_id=self.session_id), fh)
        os.rename(tmp, self.key + ".json", src_dir_fd=self.dir_fd, dst_dir_fd=self.dir_fd)

    def connect(self):
        """A connection to the live host, or None."""
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.connect(self.path(".sock"))
        except OSError:
            sock.close()
            return None
        return sock

    def lock(self):
        fd = os.open(
            self.key + ".lock",
            os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC,
            0o600,
            dir_fd=self.dir_fd,
        )
        fcntl.flock(fd, fcntl.LOCK_EX)
        return fd


def send_frame(sock, message, fds=()):
    data = json.dumps(message, separators=(",", ":")).encode("utf-8")
    data = FRAME.pack(len(data)) + data
    if fds:
        sent = sock.sendmsg(
            [data], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, struct.pack("%di" % len(fds), *fds))]
        )
        data = data[sent:]
    if data:
        sock.sendall(data)


class FrameReader(object):
    """Frames from a stream socket, read as far as they have arrived (never blocking past ``select``)."""

    def __init__(self, sock, limit):
        self.sock = sock
        self.limit = limit
        self.buffer = b""
        self.closed = False
        self.received = 0

    def pop(self):
        """The next whole frame already received, or None. Raises ValueError on a malformed one."""
        if len(self.buffer) < FRAME.size:
            return None
        (size,) = FRAME.unpack(self.buffer[: FRAME.size])
        if size > self.limit:
            raise ValueError("a frame of %d bytes" % size)
        if len(self.buffer) < FRAME.size + size:
            return None
        body, self.buffer = self.buffer[FRAME.size : FRAME.size + size], self.buffer[FRAME.size + size :]
        message = json.loads(body.decode("utf-8"))
        if not isinstance(message, dict):
            raise ValueError("a frame that is not an object")
        return message

    def fill(self):
        """Read what is there (the socket is readable); False at end of stream."""
        try:
            data = self.sock.recv(1 << 20)
        except OSError:
            data = b""
        if not data:
            self.closed = True
            return False
        self.received += len(data)
        self.buffer += data
        return True

    def wait(self, deadline):
        """The next frame, waiting until ``deadline`` (monotonic; None: no limit). None at the deadline or at
        end of stream (``closed`` says which)."""
        while True:
            message = self.pop()
            if message is not None:
                return message
            if self.closed:
                return None
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                return None
            if select.select([self.sock], [], [], left)[0]:
                self.fill()


class SessionHost(object):
    """The session's interpreter, started as a run and served cell by cell, in order, over its socket."""

    def __init__(self, req):
        self.req = req
        self.base = prepare_base(req.get("base_dir"))
        self.session_id = req["session_id"]
        self.idle = float(req.get("idle_timeout") or DEFAULT_IDLE_SECONDS)
        self.files = KernelFiles(self.base, self.session_id)
        self.count = 0
        self.end = None  # why the host ended the interpreter, when it did
        self.ended = threading.Event()
        self.outcome = None  # the interpreter's run result, once it is over
        self.kernel_hash = os.urandom(16).hex()
        self.listener = None
        self.started = time.time()
        self.last_used = self.started

    def start(self):
        """Bind the socket, start the interpreter as a run of the session, and wait for its hello."""
        sock_name = self.files.key + ".sock"
        try:
            os.unlink(sock_name, dir_fd=self.files.dir_fd)
        except FileNotFoundError:
            pass
        self.listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.listener.bind(self.files.path(".sock"))
        self.listener.listen(64)
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        self.channel = ours
        self.reader = FrameReader(ours, MAX_KERNEL_FRAME)
        req = self.req
        ws = Workspace(self.base, {"task_hash": self.kernel_hash, "session_id": self.session_id})
        ws.open(os.geteuid() == 0, hold_session=False)
        self.uid = ws.uid
        try:
            source_path = write_record(ws, req["runtime"], base64.b64decode(req["kernel_b64"]))
            run_req = {
                "runtime": req["runtime"],
                "limits": dict(req["limits"], cpu_seconds=KERNEL_LIFETIME_SECONDS),
                "timeout": KERNEL_LIFETIME_SECONDS,
                "isolation": req.get("isolation", "auto"),
                "syscall_filter": req.get("syscall_filter", "default"),
                "network": req.get("network"),
                "disk_reserve_mb": req.get("disk_reserve_mb"),
                "env": req.get("env") or {},
                "inline_chars": 4000,
            }
            plan = RunPlan(run_req, ws, source_path)
            plan.env["EC2_SANDBOX_KERNEL_FD"] = str(theirs.fileno())
            plan.env["MPLBACKEND"] = "module://ec2_sandbox_inline"
            plan.pass_fds = (theirs.fileno(),)
            self.plan = plan
        except BaseException:
            ws.close()
            raise
        thread = threading.Thread(target=self._run, args=(run_req, ws, plan, theirs), name="kernel")
        thread.daemon = True
        thread.start()
        hello = self.reader.wait(time.monotonic() + KERNEL_START_SECONDS)
        if hello is None or hello.get("op") != "hello":
            self.stop("start")
            thread.join(30)
            detail = (self.outcome or {}).get("error_message") or "it did not answer"
            stderr = ((self.outcome or {}).get("stderr") or {}).get("text", "").strip()
            raise RunnerError(
                "environment",
                "the session's interpreter could not start: %s%s"
                % (detail, ("; " + stderr[-2000:]) if stderr else ""),
            )
        self.python = hello.get("python")
        self.thread = thread
        self.save_state("running")

    def _run(self, run_req, ws, plan, theirs):
        try:
            self.outcome = execute(run_req, lambda event: None, ws, plan)
        except Exception as exc:
            self.outcome = {"termination_reason": "not_started", "error_message": str(exc)}
        finally:
            theirs.close()
            ws.close()
            self.ended.set()
            try:
                self.channel.shutdown(socket.SHUT_RDWR)  # wakes whoever waits on the interpreter
            except OSError:
                pass

    def save_state(self, state, reason=None):
        self.files.write_state(
            {
                "state": state,
                "reason": reason,
                "host_pid": os.getpid(),
                "uid": self.uid,
                "kernel_task": self.kernel_hash,
                "python": getattr(self, "python", None),
                "started": self.started,
                "last_used": self.last_used,
                "executions": self.count,
                "busy": state == "busy",
                "at": time.time(),
            }
        )

    def stop(self, reason):
        """End the interpreter (its whole sandbox) for ``reason``; the first reason given is the one kept."""
        if self.end is None:
            self.end = reason
        cancel_run(self.kernel_hash)

    def why_ended(self):
        """The end's reason: the host's own when it ended the interpreter, else its run's evidence."""
        if self.end is not None:
            return self.end
        outcome = self.outcome or {}
        reason = outcome.get("termination_reason")
        if reason in ("memory_limit", "disk_limit"):
            return reason
        if reason == "timeout":
            return "lifetime"
        if reason == "signal" or outcome.get("signal"):
            return "killed"
        return "exited"

    def serve(self):
        self.received_at_rest = self.reader.received
        while not self.ended.is_set():
            idle_left = self.idle - (time.time() - self.last_used)
            if idle_left <= 0:
                self.stop("idle")
                break
            readable = select.select([self.listener, self.channel], [], [], min(idle_left, 5.0))[0]
            if self.channel in readable:
                # Nothing is asked of the interpreter between cells: a frame now is a cell's doing (its
                # threads write where they like), and the end of the stream is the interpreter's end.
                if not self.reader.fill():
                    break
                try:
                    while self.reader.pop() is not None:
                        pass
                except ValueError:
                    self.stop("channel")
                    break
                # A cell's thread that floods the channel would keep this root process busy: no more.
                if self.reader.received - self.received_at_rest > MAX_UNSOLICITED_BYTES:
                    self.stop("channel")
                    break
            if self.listener in readable:
                try:
                    conn, _ = self.listener.accept()
                except OSError:
                    continue
                try:
                    self.handle(conn)
                finally:
                    conn.close()
                if self.end is not None:
                    break
        self.finish()

    def close_socket(self):
        # New callers must not reach a host that is going: the socket goes first.
        if self.listener is None:
            return
        try:
            os.unlink(self.files.key + ".sock", dir_fd=self.files.dir_fd)
        except OSError:
            pass
        self.listener.close()
        self.listener = None

    def finish(self):
        if self.end is None and not self.ended.is_set():
            self.stop("exited")
        self.ended.wait(60)
        # The reason first, the socket after: a caller that finds no host must find why it ended.
        self.save_state("ended", self.why_ended())
        self.close_socket()

    def handle(self, conn):
        conn.settimeout(10)
        try:
            send_frame(conn, {"op": "turn"})  # this caller's turn has come (it may have waited in line)
        except OSError:
            return
        reader = FrameReader(conn, 1 << 30)
        request = reader.wait(time.monotonic() + 10)
        if request is None:
            return
        op = request.get("op")
        if op == "cell":
            reply = self.cell(request, conn, reader)
        elif op in ASKED_ENDS or op == "cleanup":
            self.stop(op)
            self.ended.wait(60)
            self.save_state("ended", op)
            self.close_socket()  # before the reply: the caller's next call must find no host, not this one
            reply = {"ok": True, "executions": self.count}
        elif op == "status":
            reply = {"ok": True, "executions": self.count, "python": self.python, "started": self.started}
        else:
            reply = {"ok": False, "error": "unknown op %r" % (op,)}
        try:
            conn.settimeout(30)
            send_frame(conn, reply)
        except OSError:
            pass

    def cell(self, request, conn, caller):
        """Run one cell: its output goes to the files of its record, made by the runner that asked."""
        if self.ended.is_set() or self.end is not None:
            return self.lost()
        rdir = record_dir(self.base, request["task_hash"])
        fds = []
        try:
            for name in ("stdout", "stderr"):
                fds.append(
                    os.open(
                        os.path.join(rdir, name), os.O_WRONLY | os.O_APPEND | os.O_NOFOLLOW | os.O_CLOEXEC
                    )
                )
        except OSError as exc:
            for fd in fds:
                os.close(fd)
            return {"ok": False, "error": "the cell's output files cannot be opened: %s" % exc}
        self.count += 1
        cell_id = self.count
        self.save_state("busy")
        started = time.monotonic()
        try:
            send_frame(
                self.channel, {"op": "execute", "id": cell_id, "code": request["code"], "count": cell_id}, fds
            )
        except OSError:
            return self.lost()
        finally:
            for fd in fds:
                os.close(fd)
        timeout = float(request["timeout"])
        deadline = started + timeout
        interrupted = grace_end = done = None
        while done is None:
            now = time.monotonic()
            if interrupted is None and now >= deadline:
                interrupted = "timeout"
            if interrupted is not None and grace_end is None:
                grace_end = now + KERNEL_GRACE_SECONDS
                try:
                    send_frame(self.channel, {"op": "interrupt", "id": cell_id})
                except OSError:
                    pass
            if grace_end is not None and now >= grace_end:
                self.stop("interrupt")
                break
            limit = grace_end if grace_end is not None else deadline
            wait = [self.channel] if interrupted else [self.channel, conn]
            readable = select.select(wait, [], [], max(0.0, limit - time.monotonic()))[0]
            # The caller hung up (cancelled, or its transport gave up): interrupt the cell, as a notebook
            # does when its client goes.
            if conn in readable and interrupted is None and not caller.fill():
                interrupted = "cancelled"
                continue
            if self.channel in readable:
                if not self.reader.fill():
                    break
                try:
                    message = self.reader.pop()
                    while message is not None:
                        if message.get("op") == "done" and message.get("id") == cell_id:
                            done = message
                            break
                        message = self.reader.pop()
                except ValueError:
                    self.stop("channel")
                    break
        elapsed = time.monotonic() - started
        self.last_used = time.time()
        self.received_at_rest = self.reader.received
        if done is None:
            self.ended.wait(60)
            return dict(
                self.lost(), execution_count=cell_id, elapsed=elapsed, timed_out=interrupted == "timeout"
            )
        self.save_state("running")
        return {
            "ok": True,
            "state": "kept",
            "execution_count": cell_id,
            "elapsed": elapsed,
            "timed_out": interrupted == "timeout",
            "cancelled": interrupted == "cancelled",
            "results": done.get("results") if isinstance(done.get("results"), list) else [],
            "cell_error": done.get("error") if isinstance(done.get("error"), dict) else None,
        }

    def lost(self):
        self.ended.wait(60)
        reason = self.why_ended()
        outcome = self.outcome or {}
        return {
            "ok": True,
            "state": "lost",
            "lost_reason": reason,
            "lost_message": KERNEL_ENDS.get(reason, reason),
            "signal": outcome.get("signal"),
            "return_code": outcome.get("return_code"),
            "peak_memory_kb": outcome.get("peak_memory_kb"),
        }


def host_main(req_fd, ready_fd):
    """The session host's process (started detached by start_host): serve until the interpreter ends."""
    signal.signal(signal.SIGTERM, lambda *_: cancel_all_runs())
    signal.signal(signal.SIGPIPE, signal.SIG_IGN)
    become_subreaper()
    if _LIBC is not None:
        _LIBC.prctl(15, b"ec2sbx-session", 0, 0, 0)  # PR_SET_NAME: what ps shows
    with os.fdopen(req_fd, "rb") as fh:
        req = json.loads(fh.read().decode("utf-8"))
    try:
        host = SessionHost(req)
        host.start()
    except Exception as exc:
        message = exc.message if isinstance(exc, RunnerError) else "%s: %s" % (type(exc).__name__, exc)
        os.write(ready_fd, ("error " + json.dumps(message) + "\n").encode("utf-8"))
        os.close(ready_fd)
        return
    os.write(ready_fd, b"ready\n")
    os.close(ready_fd)
    host.serve()


# Runs the host from the runner's source on an fd, in a process of its own: a grandchild, so that nothing
# (an SSM command's runner, a client's in-process transport) has to reap it.
HOST_LOADER = r"""
import os, sys, types
src_fd, req_fd, ready_fd = (int(a) for a in sys.argv[1:4])
if os.fork():
    os._exit(0)
os.setsid()
with os.fdopen(src_fd, "rb") as fh:
    source = fh.read()
runner = types.ModuleType("ec2_sandbox_runner")
runner.__dict__["RUNNER_SOURCE"] = source
sys.modules["ec2_sandbox_runner"] = runner
exec(compile(source, "ec2_sandbox_runner.py", "exec"), runner.__dict__)
runner.host_main(req_fd, ready_fd)
"""


def start_host(files, req):
    """Start the session's host and wait until its interpreter is up; raises RunnerError when it cannot."""
    host_req = {
        k: req.get(k)
        for k in (
            "base_dir",
            "session_id",
            "runtime",
            "limits",
            "isolation",
            "syscall_filter",
            "network",
            "disk_reserve_mb",
            "env",
            "idle_timeout",
        )
    }
    host_req["base_dir"] = files.base
    host_req["kernel_b64"] = base64.b64encode(companion_source("kernel.py")).decode("ascii")
    src_fd = data_fd(own_source())
    req_fd = data_fd(json.dumps(host_req).encode("utf-8"))
    ready_r, ready_w = os.pipe()
    try:
        python = sys.executable or resolve_executable("python3")
        with spawning():
            proc = subprocess.Popen(
                [python, "-I", "-S", "-c", HOST_LOADER, str(src_fd), str(req_fd), str(ready_w)],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                close_fds=True,
                pass_fds=(src_fd, req_fd, ready_w),
                env={"PATH": SYSTEM_PATH, "LANG": "C.UTF-8"},
            )
        proc.wait()
    finally:
        for fd in (src_fd, req_fd, ready_w):
            os.close(fd)
    with os.fdopen(ready_r, "rb") as fh:
        said = fh.readline().decode("utf-8", "replace").strip()
    if said == "ready":
        return
    if said.startswith("error "):
        raise RunnerError("environment", json.loads(said[6:]))
    raise RunnerError("environment", "the session's interpreter host did not start")


def reach_host(base, req):
    """A connection to the session's host, starting one when none is live: ``(conn, previous_end)``, where
    previous_end is why an earlier interpreter of the session ended (None when it lives on, or never was)."""
    files = KernelFiles(base, req["session_id"])
    try:
        conn = files.connect()
        if conn is not None:
            return conn, None
        lock_fd = files.lock()
        try:
            conn = files.connect()  # another caller may have started it while this one waited
            if conn is not None:
                return conn, None
            state = files.read_state()
            previous = None
            if state is not None:
                reason = state.get("reason") if state.get("state") == "ended" else "host_gone"
                previous = {"reason": reason, "executions": state.get("executions")}
            start_host(files, req)
            conn = files.connect()
            if conn is None:
                raise RunnerError("environment", "the session's interpreter started but cannot be reached")
            return conn, previous
        finally:
            os.close(lock_fd)
    finally:
        files.close()


def ask_host(base, session_id, message, timeout):
    """Send one request to the session's live host, if any; its reply, or None when no host is live."""
    files = KernelFiles(base, session_id)
    try:
        conn = files.connect()
    finally:
        files.close()
    if conn is None:
        return None
    try:
        conn.settimeout(timeout)
        reader = FrameReader(conn, 1 << 20)
        if reader.wait(time.monotonic() + timeout) is None:  # its turn
            return None
        send_frame(conn, message)
        return reader.wait(time.monotonic() + timeout)
    except OSError:
        return None
    finally:
        conn.close()


def run_cell(req, emit):
    """A stateful cell: the code runs in the session's interpreter, which keeps its variables."""
    base = prepare_base(req.get("base_dir"))
    if req.get("session_id") is None:
        raise RunnerError("invalid_input", "a stateful cell needs a session_id: its state is the session's")
    try:
        code = base64.b64decode(req["code_b64"]).decode("utf-8")
    except (ValueError, UnicodeDecodeError):
        raise RunnerError("invalid_input", "a cell's code must be UTF-8 text")
    timeout = float(req["timeout"])
    ws = Workspace(base, req)
    ws.open(os.geteuid() == 0)
    conn = None
    try:
        write_inputs(ws.workdir, req.get("files"), ws.owner)
        write_record(ws, req["runtime"], code.encode("utf-8"))
        paths = {}
        for name in ("stdout", "stderr"):
            paths[name] = os.path.join(ws.rdir, name)
            os.close(os.open(paths[name], os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600))
        before = snapshot_files(ws.workdir)
        conn, reader, previous = take_turn(base, req, timeout)
        streamer = start_streamer(req, paths["stdout"], paths["stderr"], emit)

        def hang_up():
            _shutdown(conn)

        with ACTIVE_LOCK:
            ACTIVE_RUNS[ws.task_hash] = hang_up
        if STOPPING.is_set():
            hang_up()
        try:
            if conn is None:
                reply = {
                    "ok": False,
                    "error": "the session's interpreter is still busy with earlier cells after %gs; try "
                    "again when they are done" % timeout,
                }
            else:
                send_frame(conn, {"op": "cell", "task_hash": ws.task_hash, "code": code, "timeout": timeout})
                reply = reader.wait(time.monotonic() + timeout + KERNEL_GRACE_SECONDS + 30)
        finally:
            with ACTIVE_LOCK:
                ACTIVE_RUNS.pop(ws.task_hash, None)
            if streamer is not None:
                streamer.stop()
        if reply is None:
            reply = {"ok": False, "error": "the session's interpreter did not answer in time"}
        return with_workspace(cell_result(req, ws, reply, previous, paths), ws, before)
    finally:
        if conn is not None:
            conn.close()
        ws.close()


def take_turn(base, req, wait):
    """Reach the session's host and wait (at most ``wait`` s) until it takes this call, behind the session's
    earlier cells: ``(conn, reader, previous_end)``, conn None when the turn did not come in time."""
    for _ in range(3):
        conn, previous = reach_host(base, req)
        reader = FrameReader(conn, 1 << 30)
        if reader.wait(time.monotonic() + wait) is not None:
            return conn, reader, previous
        conn.close()
        if not reader.closed:
            return None, None, previous
        # The host was ending (idle, or closed by another caller) when this call reached it: start anew.
    raise RunnerError("environment", "the session's interpreter keeps ending before it takes a cell")


def _shutdown(sock):
    if sock is None:
        return
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass


def cell_result(req, ws, reply, previous, paths):
    """A cell's result in the shape of a run's, from the host's word (what happened) and the interpreter's
    (what the cell showed)."""
    inline_chars = int(req.get("inline_chars", 20000))
    state = reply.get("state")
    error = reply.get("cell_error") if state == "kept" else None
    result = {
        "success": bool(reply.get("ok")) and state == "kept" and error is None and not reply.get("timed_out"),
        "return_code": None,
        "timed_out": bool(reply.get("timed_out")),
        "termination_reason": "timeout" if reply.get("timed_out") else "exited",
        "signal": reply.get("signal"),
        "error_message": None,
        "execution_time": round(float(reply.get("elapsed") or 0.0), 4),
        "cpu_time": 0.0,
        "peak_memory_kb": reply.get("peak_memory_kb") or 0,
        "stdout": inline_text(paths["stdout"], inline_chars),
        "stderr": inline_text(paths["stderr"], inline_chars),
        "execution_count": reply.get("execution_count"),
        "cell_error": error,
        "rich_results": store_results(ws, reply.get("results") or [], req.get("max_envelope_chars")),
        "state": None
        if not reply.get("ok")
        else "new"
        if previous is not None or reply.get("execution_count") == 1
        else "kept",
        "state_lost": None,
        "stateful": True,
        "isolation": None,
        "limits_enforced": [],
        "warnings": [],
        "imds_guard": False,
    }
    if previous is not None and previous["reason"] not in ASKED_ENDS:
        result["state_lost"] = {
            "reason": previous["reason"],
            "message": "earlier state is gone: " + KERNEL_ENDS.get(previous["reason"], previous["reason"]),
        }
    if not reply.get("ok"):
        result["error_message"] = reply.get("error") or "the session's interpreter failed"
        result["termination_reason"] = "not_started"
    elif state == "lost":
        reason = reply.get("lost_reason")
        result["state"] = "lost"
        result["state_lost"] = {"reason": reason, "message": KERNEL_ENDS.get(reason, reason)}
        result["termination_reason"] = (
            "timeout"
            if reply.get("timed_out")
            else reason
            if reason in ("memory_limit", "disk_limit")
            else "signal"
        )
        result["error_message"] = "the cell's interpreter ended and its state is lost: " + KERNEL_ENDS.get(
            reason, reason
        )
    elif reply.get("timed_out"):
        result["error_message"] = (
            "timed out after %gs: the cell was interrupted (KeyboardInterrupt); the session's state is "
            "kept" % float(req["timeout"])
        )
    elif reply.get("cancelled"):
        result["error_message"] = "cancelled: the caller gave up and the cell was interrupted"
    elif error is not None:
        result["return_code"] = 1
        result["error_message"] = "%s: %s" % (error.get("name"), error.get("value"))
    else:
        result["return_code"] = 0
    return result


def store_results(ws, results, max_envelope_chars):
    """Keep each rich result's data in the cell's record (read later as @display-N.EXT), and leave inline
    only what fits the transport's envelope: the rest is named by its file."""
    budget = (int(max_envelope_chars) // 2) if max_envelope_chars else 64 << 20
    stored = []
    for index, item in enumerate(results[:100]):
        if not isinstance(item, dict) or not isinstance(item.get("data"), dict):
            continue
        data, files = {}, {}
        for mime, value in item["data"].items():
            if not isinstance(mime, str) or not isinstance(value, str):
                continue
            ext = MIME_FILES.get(mime)
            if ext is not None:
                raw = (
                    base64.b64decode(value) if mime in ("image/png", "image/jpeg") else value.encode("utf-8")
                )
                name = "display-%d.%s" % (index, ext)
                fd = os.open(
                    os.path.join(ws.rdir, name), os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600
                )
                with os.fdopen(fd, "wb") as fh:
                    fh.write(raw)
                files[mime] = "@" + name
            if len(value) <= budget:
                data[mime] = value
                budget -= len(value)
        stored.append({"main": bool(item.get("main")), "data": data, "files": files})
    return stored


def session_op(req):
    """restart, close or status of a session's interpreter (without starting one)."""
    base = prepare_base(req.get("base_dir"))
    session_id = req.get("session_id")
    if not isinstance(session_id, str) or not SESSION_ID_RE.match(session_id):
        raise RunnerError("invalid_input", "session_id %r is not a valid session id" % (session_id,))
    action = req.get("action")
    if action not in ("restart", "close", "status"):
        raise RunnerError("invalid_input", "action must be restart, close or status, got %r" % (action,))
    reply = ask_host(base, session_id, {"op": action}, 30 if action == "status" else 90)
    files = KernelFiles(base, session_id)
    try:
        state = files.read_state()
    finally:
        files.close()
    return {
        "session_id": session_id,
        "live": reply is not None and action == "status",
        "executions": (reply or {}).get("executions", (state or {}).get("executions")),
        "ended": None if reply is not None and action == "status" else (state or {}).get("reason"),
    }


OPS = {
    "run": run_task,
    "cell": run_cell,
    "session": session_op,
    "write": write_files,
    "remove_files": remove_files,
    "list": list_files,
    "read": read_file,
    "inventory": inventory,
    "remove": remove,
    "cleanup": cleanup,
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
        if req.get("op") in ("run", "cell"):
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
    """Cut an inline stream to ``limit`` characters by the same rule, keeping within its head and tail."""
    if len(stream["text"]) <= limit:
        return
    head_chars = stream.get("head_chars") if stream["truncated"] else None
    stream.update(cut_stream(stream["text"], stream["bytes"], limit, head_chars))


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
    become_subreaper()

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
