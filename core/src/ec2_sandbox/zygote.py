"""Warm starts: Python programs forked from an interpreter that is already running, inside a fresh sandbox.

Starting CPython costs more than everything else in a short run, and bubblewrap adds its own start-up on
top. A long-lived runner (the in-process local transport) therefore keeps one idle interpreter per Python
runtime: the zygote. It never runs user code itself. For each run:

1. it starts the run's own bubblewrap sandbox, with the arguments of a cold start, with ``cat`` as a
   placeholder pid 1 that holds the sandbox open (and proves, by echoing a byte, that its set-up is
   complete); as pid 1 it cannot be killed from inside;
2. it forks the program's parent into that sandbox's pid namespace. The parent joins the sandbox's other
   namespaces: user (both levels when user namespaces are disabled inside), mount, network, IPC, UTS and
   cgroup. It keeps root's uid, so that the program cannot signal it, and reaps the program's orphans;
3. the parent forks the program, which takes the run's uid, drops every capability the user namespace gave
   it (and checks that none is left), sets no_new_privs, its rlimits and its output files, and runs the
   code as ``python3 main.py`` would, in a fresh ``__main__``;
4. the parent reports the program's wait status and resource usage and exits; it held the placeholder's
   input, so the sandbox ends, and the kernel kills whatever the program left running in it.

A zygote without root cannot enter a pid namespace itself, so there a supervisor process per run does
steps 1 and 2 (it first joins the sandbox's user namespace, as its owner).

The runner falls back to a cold start for anything the interpreter reads only when it starts (PYTHON*,
LC_*, LANG, LD_* and malloc tuning in the user's environment, a user site directory in the work dir), and
whenever the zygote reports that it could not set a run up.

Runs of other runtimes (node, bash, sh, plugins') take the same steps, except that at step 3 the program
process executes the runtime instead of running Python code: the zygote is their launcher, and its program's
parent sees their real wait status and resource usage, which a cold start through bubblewrap cannot.

This file is stdlib-only and Python 3.8-compatible. The zygote runs it as ``python3 -c LOADER PATH FD``; the
runner imports it for :class:`Zygote`, whose imports are deferred so that they never load in the zygote
(whatever the zygote imports is in ``sys.modules`` for every program it starts).
"""

# The C modules under signal and socket, marshal for requests: the Python wrappers and json would pull in
# enum and re, which every run would then carry in its (copied) memory.
import _frozen_importlib_external
import _signal as signal
import _socket as socket
import atexit
import ctypes
import fcntl
import gc
import marshal
import os
import resource
import select
import sys

CLONE_NEWNS = 0x00020000
CLONE_NEWCGROUP = 0x02000000
CLONE_NEWUTS = 0x04000000
CLONE_NEWIPC = 0x08000000
CLONE_NEWUSER = 0x10000000
CLONE_NEWPID = 0x20000000
CLONE_NEWNET = 0x40000000
# Joined in this order, after the user namespace that owns them and before the nested one (if any).
NAMESPACES = (
    ("mnt", CLONE_NEWNS),
    ("net", CLONE_NEWNET),
    ("ipc", CLONE_NEWIPC),
    ("uts", CLONE_NEWUTS),
    ("cgroup", CLONE_NEWCGROUP),
)
NS_GET_PARENT = 0xB702  # _IO(0xb7, 0x2)
PR_SET_PDEATHSIG = 1
PR_CAPBSET_DROP = 24
PR_SET_NO_NEW_PRIVS = 38
PR_SET_SECCOMP, SECCOMP_MODE_FILTER = 22, 2
PR_SET_CHILD_SUBREAPER = 36
PR_CAP_AMBIENT = 47
PR_CAP_AMBIENT_CLEAR_ALL = 4
LINUX_CAPABILITY_VERSION_3 = 0x20080522
SYS_CAPSET = {"x86_64": 126, "aarch64": 91}.get(os.uname().machine)
MAX_REQUEST_BYTES = 1 << 20
# How the zygote starts: python3 -c LOADER <this file> <socket fd>.
LOADER = "import sys;exec(compile(open(sys.argv[1],'rb').read(),sys.argv[1],'exec'))"
FDS_PER_REQUEST = 3  # stdout, stderr, report pipe

_libc = ctypes.CDLL(None, use_errno=True)
# Resolved here, once: in a forked run each first use would look the symbol up again.
_setns, _prctl, _syscall = _libc.setns, _libc.prctl, _libc.syscall
CapHeader, CapData = ctypes.c_uint32 * 2, ctypes.c_uint32 * 6
with open("/proc/sys/kernel/cap_last_cap") as _fh:
    CAP_LAST = int(_fh.read())


class SetupError(Exception):
    """A run could not be set up warm; the runner starts it cold instead."""


def _call(what, result):
    if result != 0:
        err = ctypes.get_errno()
        raise SetupError("%s: %s" % (what, os.strerror(err)))


def setns(fd, nstype, what):
    _call("setns(%s)" % what, _setns(fd, nstype))


def prctl(option, arg):
    _call("prctl(%d)" % option, _prctl(option, arg, 0, 0, 0))


def drop_all_capabilities():
    """Joining a user namespace grants every capability in it; a uid change there does not clear them (the
    joiner was not that namespace's root), so clear the bounding, ambient and process sets explicitly."""
    if SYS_CAPSET is None:
        raise SetupError("no capset syscall number for %s" % os.uname().machine)
    for cap in range(CAP_LAST + 1):
        prctl(PR_CAPBSET_DROP, cap)
    _call("prctl(PR_CAP_AMBIENT)", _prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0))
    # Two {effective, permitted, inheritable} triples, all zero.
    _call("capset", _syscall(SYS_CAPSET, CapHeader(LINUX_CAPABILITY_VERSION_3, 0), CapData()))
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("Cap") and int(line.split()[1], 16) != 0:
                raise SetupError("capabilities left after dropping them: %s" % line.strip())


def filter_fd(program):
    """An fd holding the syscall filter's bytes, for bubblewrap's --seccomp."""
    fd = os.memfd_create("ec2-sandbox-seccomp", os.MFD_CLOEXEC)
    os.write(fd, program)
    os.lseek(fd, 0, os.SEEK_SET)
    return fd


class SockFprog(ctypes.Structure):
    _fields_ = (("len", ctypes.c_ushort), ("filter", ctypes.c_char_p))


def install_filter(program):
    """prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER): the runner's filter, in the program's own process."""
    fprog = SockFprog(len(program) // 8, program)
    _call("prctl(PR_SET_SECCOMP)", _prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, ctypes.byref(fprog), 0, 0))


def report(fd, kind, *values):
    """One line to the runner: a kind (pid, sandbox, status, error) and its values, space-separated."""
    text = " ".join([kind] + [str(value).replace("\n", " ") for value in values])
    os.write(fd, (text + "\n").encode("utf-8", "replace"))


class Holder(object):
    """A run's bubblewrap, started with a placeholder pid 1 that echoes a byte once the sandbox is set up."""

    def __init__(self, req, err_fd):
        in_r, self.stdin = os.pipe()
        self.stdout, out_w = os.pipe()
        self.info, info_w = os.pipe()
        placed = [in_r, out_w, err_fd, info_w]
        if req.get("seccomp"):
            placed.append(filter_fd(req["seccomp"]))  # fd 4: bubblewrap's --seccomp for the placeholder
        # Sources above the targets, so that no dup2 overwrites one still to be placed.
        sources = [fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 10) for fd in placed]
        if len(placed) > 4:
            os.close(placed[4])
        actions = [(os.POSIX_SPAWN_DUP2, fd, target) for target, fd in enumerate(sources)]
        uid = req.get("uid")
        if uid is not None:
            # bubblewrap runs as the run's uid, as in a cold start. Spawned (vfork: no copy of this
            # interpreter) it takes this process's ids: lend it the uid, keeping root as the saved uid to
            # come back to.
            os.setgroups([])
            os.setresgid(uid, uid, uid)
            os.setresuid(uid, uid, 0)
        spawned = False
        try:
            # bubblewrap sets no_new_privs and, with --die-with-parent, its own parent-death signal.
            self.pid = os.posix_spawn(
                req["bwrap_argv"][0],
                req["bwrap_argv"],
                {"PATH": req["path"]},
                file_actions=actions,
                setsid=True,
                # As a cold start leaves them: a child of this process would inherit SIGCHLD ignored.
                setsigdef=(signal.SIGCHLD, signal.SIGPIPE),
            )
            spawned = True
        finally:
            if uid is not None:
                os.setresuid(0, 0, 0)
                os.setresgid(0, 0, 0)
            # The zygote lives long: a run that could not start leaves none of its pipes behind.
            for fd in sources + [in_r, out_w, info_w] + ([] if spawned else self.pipes()):
                os.close(fd)
        os.write(self.stdin, b"\n")

    def pipes(self):
        """This side's ends: the placeholder's stdin, its stdout (the echo) and bubblewrap's info."""
        return [self.stdin, self.stdout, self.info]

    def sandbox(self):
        """Once the echo is back: the pid (here) of the sandbox's pid 1 and its namespaces (user as an
        (outer, inner) pair). Closes the set-up pipes; the placeholder's stdin stays open."""
        echo = os.read(self.stdout, 1)
        os.close(self.stdout)
        with os.fdopen(self.info, "rb") as fh:  # written, then closed, once bubblewrap made the sandbox
            info = fh.read()
        if echo != b"\n":
            raise SetupError("bubblewrap did not start the sandbox")
        # {"child-pid": N, ...}: its first process, pid 1 with --as-pid-1.
        child = int(info.split(b'"child-pid":', 1)[1].split(b",", 1)[0].split(b"}", 1)[0])
        namespaces = {}
        try:
            for name in ("user", "pid") + tuple(name for name, _ in NAMESPACES):
                fd = os.open("/proc/%d/ns/%s" % (child, name), os.O_RDONLY | os.O_CLOEXEC)
                if name != "user" and same_namespace(fd, name):
                    os.close(fd)  # shared with the host (network on): nothing to join
                    continue
                namespaces[name] = fd
            # With user namespaces disabled inside, bubblewrap nests a second one: the sandbox's other
            # namespaces belong to the outer one, which must be joined first.
            inner = namespaces["user"]
            outer = fcntl.ioctl(inner, NS_GET_PARENT)
        except OSError:
            close_namespaces(namespaces)
            raise
        if same_namespace(outer, "user"):
            os.close(outer)
            outer, inner = inner, None
        namespaces["user"] = (outer, inner)
        return child, namespaces


def receive(sock):
    """The next request and its three fds; None when the runner has gone, () for a malformed message."""
    try:
        data, ancillary, _flags, _addr = sock.recvmsg(
            MAX_REQUEST_BYTES, socket.CMSG_SPACE(FDS_PER_REQUEST * 4), socket.MSG_CMSG_CLOEXEC
        )
    except InterruptedError:
        return ()
    if not data:
        return None
    fds = []
    for level, kind, payload in ancillary:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            fds += list(memoryview(payload).cast("i")[: len(payload) // 4])
    if len(fds) != FDS_PER_REQUEST:
        for fd in fds:
            os.close(fd)
        return ()
    # The socket's other end is the runner that started this process, and no one else's.
    return marshal.loads(data), fds  # noqa: S302


def serve(sock):
    """The zygote's loop. Returns only in a program process, with what to run; None when the runner has gone.

    As root it starts each run's bubblewrap itself and, when that is ready, forks the program's parent
    straight into the sandbox's pid namespace; runs overlap. Without root it cannot enter a pid namespace
    (only a process inside the sandbox's user namespace can): a supervisor per run does that.
    """
    # Children are reaped by the kernel; a supervisor resets this before it forks children it waits for.
    signal.signal(signal.SIGCHLD, signal.SIG_IGN)
    privileged = os.geteuid() == 0
    own_pid_ns = os.open("/proc/self/ns/pid", os.O_RDONLY | os.O_CLOEXEC)
    poller = select.poll()
    poller.register(sock.fileno(), select.POLLIN)
    waiting = {}  # placeholder's stdout -> (request, fds, holder)
    while True:
        try:
            events = poller.poll()
        except InterruptedError:
            continue
        for fd, _event in events:
            if fd != sock.fileno():
                poller.unregister(fd)
                req, fds, holder = waiting.pop(fd)
                job = launch(req, fds, holder, own_pid_ns, sock, waiting)
                if job is not None:
                    return job
                continue
            message = receive(sock)
            if message is None:
                return None
            if not message:
                continue
            req, fds = message
            if not privileged:
                if os.fork() == 0:
                    sock.close()
                    return supervise(req, *fds)
                for each in fds:
                    os.close(each)
                continue
            try:
                holder = Holder(req, fds[1])
            except OSError as exc:
                report(fds[2], "error", exc)
                for each in fds:
                    os.close(each)
                continue
            report(fds[2], "pid", holder.pid)  # what the runner kills until the sandbox exists
            waiting[holder.stdout] = (req, fds, holder)
            poller.register(holder.stdout, select.POLLIN)


def launch(req, fds, holder, own_pid_ns, sock, waiting):
    """A root zygote's second step for a run whose sandbox is ready: fork the program's parent into it."""
    out_fd, err_fd, report_fd = fds
    namespaces = {}
    pid = None
    try:
        sandbox_pid, namespaces = holder.sandbox()
        report(report_fd, "sandbox", sandbox_pid)
        setns(namespaces["pid"], CLONE_NEWPID, "pid")
        try:
            pid = os.fork()
        finally:
            if pid != 0:
                setns(own_pid_ns, CLONE_NEWPID, "own pid")
    except (SetupError, OSError, ValueError, IndexError) as exc:
        report(report_fd, "error", exc)
    if pid == 0:
        # The program's parent. Nothing of the zygote's (its socket, other runs' pipes) goes with it; it
        # alone keeps the placeholder's stdin open: when it exits, the sandbox ends.
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)  # it waits for the program
        sock.close()
        os.close(own_pid_ns)
        for _, other_fds, other in waiting.values():
            for each in other_fds + other.pipes():
                os.close(each)
        uid = req.get("uid")
        outer, inner = namespaces.pop("user")
        try:
            if uid is not None:
                os.setgroups([])
                os.setresgid(uid, uid, uid)
            setns(outer, CLONE_NEWUSER, "user")
        except (SetupError, OSError) as exc:
            report(report_fd, "error", exc)
            os._exit(0)
        return enter(req, namespaces, inner, out_fd, err_fd, report_fd)
    for each in fds + [holder.stdin]:
        os.close(each)
    close_namespaces(namespaces)
    return None


def close_namespaces(namespaces):
    for value in namespaces.values():
        for fd in value if isinstance(value, tuple) else (value,):
            if fd is not None:
                os.close(fd)


def supervise(req, out_fd, err_fd, report_fd):
    """One run's supervisor, for a zygote without root: returns only in the program process."""
    signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    try:
        prctl(PR_SET_PDEATHSIG, signal.SIGKILL)  # the zygote gone (its runner gone): so is this run
        report(report_fd, "pid", os.getpid())
        holder = Holder(req, err_fd)
        sandbox_pid, namespaces = holder.sandbox()
        report(report_fd, "sandbox", sandbox_pid)
        outer, inner = namespaces.pop("user")
        setns(outer, CLONE_NEWUSER, "user")
        setns(namespaces.pop("pid"), CLONE_NEWPID, "pid")  # for the program, forked next
    except (SetupError, OSError, ValueError, IndexError) as exc:
        report(report_fd, "error", exc)
        os._exit(0)
    pid = os.fork()
    if pid == 0:
        # This process alone keeps the placeholder's input open: when it dies, so does the sandbox.
        os.close(holder.stdin)
        return enter(req, namespaces, inner, out_fd, err_fd, report_fd)
    os.close(out_fd)
    os.close(err_fd)
    os.waitpid(pid, 0)
    # EOF for the placeholder ends the sandbox; the kernel kills whatever is left in its pid namespace. The
    # runner's read of the report pipe ends when this process exits: after the sandbox is gone.
    os.close(holder.stdin)
    os.waitpid(holder.pid, 0)
    os._exit(0)


# The zygote's own namespaces, which its children share until they join others: name -> (st_dev, st_ino).
_OWN_NAMESPACES: "dict[str, tuple[int, int]]" = {}


def same_namespace(fd, name):
    if name not in _OWN_NAMESPACES:
        mine = os.stat("/proc/self/ns/%s" % name)
        _OWN_NAMESPACES[name] = (mine.st_dev, mine.st_ino)
    theirs = os.fstat(fd)
    return _OWN_NAMESPACES[name] == (theirs.st_dev, theirs.st_ino)


def enter(req, namespaces, inner, out_fd, err_fd, report_fd):
    """The program's parent, inside the sandbox: joins its remaining namespaces, forks the program, waits
    for it and reports its status. Returns only in the program process.

    The program's parent is in its pid namespace, as under bubblewrap, so that os.getppid() names a
    process it can see; it keeps its own (root's) uid, so that the program cannot signal it.
    """
    try:
        prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
        for name, flag in NAMESPACES:
            if name in namespaces:
                fd = namespaces.pop(name)
                setns(fd, flag, name)
                os.close(fd)
        if inner is not None:
            setns(inner, CLONE_NEWUSER, "nested user")
            os.close(inner)
        # The placeholder is the namespace's pid 1 and reaps nothing: orphans of the program come here.
        prctl(PR_SET_CHILD_SUBREAPER, 1)
        # The program joins this session and process group, as under bubblewrap it joins those of its pid 1.
        os.setsid()
        pid = os.fork()
    except (SetupError, OSError, ValueError, KeyError) as exc:
        report(report_fd, "error", "in the sandbox: %s" % exc)
        os._exit(0)
    if pid == 0:
        return become_program(req, out_fd, err_fd, report_fd)
    os.close(out_fd)
    os.close(err_fd)
    # The program may be running by now: this cannot be a set-up error any more (the runner would start the
    # program again). Its parent only waits; without these it would still hold nothing the program can use.
    try:
        drop_all_capabilities()
        prctl(PR_SET_NO_NEW_PRIVS, 1)
    except (SetupError, OSError):
        pass
    while True:
        reaped, status, usage = os.wait4(-1, 0)
        if reaped == pid:
            break
    report(report_fd, "status", status, usage.ru_utime + usage.ru_stime, usage.ru_maxrss)
    os._exit(0)


def become_program(req, out_fd, err_fd, report_fd):
    """Become the run's uid without a capability left, apply the limits; return what to run."""
    try:
        uid = req.get("uid")
        if uid is not None:
            os.setresuid(uid, uid, uid)
        drop_all_capabilities()
        prctl(PR_SET_NO_NEW_PRIVS, 1)
        os.umask(0o077)
        os.chdir(req["workdir"])
        os.dup2(out_fd, 1)
        os.dup2(err_fd, 2)
        for limit, value in req["rlimits"]:
            resource.setrlimit(getattr(resource, limit), (value[0], value[1]))
        prctl(PR_SET_PDEATHSIG, signal.SIGKILL)  # after the uid change, which clears it
        if req.get("seccomp"):
            install_filter(req["seccomp"])  # last: no_new_privs is set, the set-up's calls are done
        if "exec" in req:
            launch_other_runtime(req, report_fd)
        with open(req["program"], "rb") as fh:
            source = fh.read()
    except (SetupError, OSError, ValueError, KeyError) as exc:
        report(report_fd, "error", "program process: %s" % exc)
        os._exit(0)
    os.closerange(3, 1 << 16)
    os.environ.clear()
    os.environ.update(req["env"])
    # The user site directory follows HOME, which site.py read when the zygote started.
    site = sys.modules.get("site")
    if site is not None:
        site.USER_BASE = site.USER_SITE = None
        site.getusersitepackages()
    return req["program"], source


def launch_other_runtime(req, report_fd):
    """Become the run's program by exec, as a cold start would start it (returns only by raising).

    The interpreter ignores SIGPIPE and SIGXFSZ, and an ignored signal stays ignored across exec: the
    program gets them as a cold start does.
    """
    for sig in (signal.SIGPIPE, signal.SIGXFSZ):
        signal.signal(sig, signal.SIG_DFL)
    argv = req["exec"]
    # The report pipe stays open for an exec that fails; it is close-on-exec, so the program never has it.
    os.closerange(3, report_fd)
    os.closerange(report_fd + 1, 1 << 16)
    # A failed exec is a set-up error: the runner starts the run cold and reports what that says.
    os.execve(argv[0], argv, req["env"])


def run_program(path, source):
    """Run ``source`` as ``python3 path`` would: a fresh __main__, the argv and path[0] of a script, and the
    interpreter's handling of SystemExit, uncaught exceptions and KeyboardInterrupt."""
    main = type(sys)("__main__")
    main.__file__ = path
    main.__cached__ = None
    main.__loader__ = _frozen_importlib_external.SourceFileLoader("__main__", path)
    main.__builtins__ = __builtins__
    main.__annotations__ = {}
    sys.modules["__main__"] = main
    sys.argv = [path]
    sys.orig_argv = [sys.executable, path]
    sys.path[0] = os.path.dirname(path)
    signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    try:
        exec(compile(source, path, "exec", dont_inherit=True), main.__dict__)
    except SystemExit as exc:
        finish(main, exit_status(exc))
    except BaseException as exc:
        # The traceback starts at this frame: leave it out, as the interpreter's own frames are.
        exc.__traceback__ = exc.__traceback__.tb_next
        sys.excepthook(type(exc), exc, exc.__traceback__)
        finish(main, 1, interrupted=isinstance(exc, KeyboardInterrupt))
    finish(main, 0)


def exit_status(exc):
    """The exit status the interpreter gives an uncaught SystemExit (printing a non-integer code)."""
    code = exc.code
    if code is None:
        return 0
    if isinstance(code, int):
        return code & 0xFF
    try:
        sys.stderr.write("%s\n" % (code,))
    except Exception:
        pass
    return 1


def finish(main, status, interrupted=False):
    """End the program as the interpreter ends one: non-daemon threads joined, atexit handlers run, the
    program's objects finalized (files it left open are flushed), standard streams flushed (status 120 when
    stdout cannot be), SIGINT for an uncaught KeyboardInterrupt.

    The interpreter's own teardown is skipped: in a forked copy it would write to, and so copy, every page
    of the zygote's heap, which costs more than the whole run.
    """
    threading = sys.modules.get("threading")
    if threading is not None:
        threading._shutdown()
    atexit._run_exitfuncs()
    gc.collect()
    # The order of the interpreter's own module clean-up: names with one leading underscore, then the rest.
    namespace = main.__dict__
    for single_underscore in (True, False):
        for name in list(namespace):
            if name != "__builtins__" and (name[:1] == "_" and name[1:2] != "_") == single_underscore:
                namespace[name] = None
    gc.collect()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except Exception as exc:
            status = 120
            try:
                os.write(
                    2, ("Exception ignored in: %r\n%s: %s\n" % (stream, type(exc).__name__, exc)).encode()
                )
            except OSError:
                pass
    if interrupted:
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        os.kill(os.getpid(), signal.SIGINT)
    os._exit(status)


class Zygote(object):
    """The runner's handle on one zygote: an idle interpreter started with a runtime's argv and flags."""

    def __init__(self, argv, env):
        import socket as sockets
        import subprocess

        parent, child = sockets.socketpair(sockets.AF_UNIX, sockets.SOCK_SEQPACKET)
        try:
            # `ps` shows a short loader and this file's path, not the source (-c keeps sys.path[0] the
            # program's concern: run_program sets it, and nothing beside this file is importable).
            self.proc = subprocess.Popen(
                list(argv) + ["-c", LOADER, os.path.abspath(__file__), str(child.fileno())],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                pass_fds=[child.fileno()],
                env=env,
                cwd="/",
                start_new_session=True,
            )
        finally:
            child.close()
        parent.settimeout(10)
        try:
            ready = parent.recv(16)
        except OSError as exc:
            ready = repr(exc).encode()
        if ready != b"ready":
            parent.close()
            self.proc.kill()
            self.proc.wait()
            raise SetupError("the zygote did not start: %r" % ready)
        parent.settimeout(None)
        self.sock = parent
        # Kept by the runner: consecutive set-up failures, runs in flight, and whether it takes new ones.
        self.failures = 0
        self.inflight = 0
        self.retired = False

    def alive(self):
        return self.proc.poll() is None

    def start(self, request, out_fd, err_fd):
        """Hand a run to the zygote; returns a :class:`WarmRun`. Raises SetupError if it cannot."""
        return WarmRun(self, request, out_fd, err_fd)

    def close(self):
        """Stop taking runs; the zygote exits at EOF (runs it already forked go on to their end)."""
        self.sock.close()
        self.proc.wait()


class WarmRun(object):
    """A run handed to the zygote, seen from the runner: killable, and waited for through its report pipe."""

    def __init__(self, zygote, request, out_fd, err_fd):
        import array
        import socket as sockets
        import threading

        data = marshal.dumps(request)
        if len(data) > MAX_REQUEST_BYTES:
            raise SetupError("request of %d bytes is too large for a warm start" % len(data))
        self.fd, report_w = os.pipe()
        try:
            fds = array.array("i", [out_fd, err_fd, report_w])
            zygote.sock.sendmsg([data], [(sockets.SOL_SOCKET, sockets.SCM_RIGHTS, fds)])
        except OSError as exc:
            os.close(self.fd)
            raise SetupError("the zygote cannot take runs: %s" % exc)
        finally:
            os.close(report_w)
        self.lock = threading.Lock()
        self.pid = self.pidfd = None
        self.sandbox_pid = self.sandbox_pidfd = None
        self.kill_requested = False
        self.error = None
        self.final = None

    def kill(self):
        with self.lock:
            self.kill_requested = True
            self._kill_locked()

    def _kill_locked(self):
        # The sandbox's pid 1 takes every process of the run with it, while the supervisor stays to reap them
        # (the namespace is not gone until they are reaped). Before the sandbox exists, the supervisor's death
        # ends the run: it closes the placeholder's input.
        if self.sandbox_pid is not None:
            pid, pidfd = self.sandbox_pid, self.sandbox_pidfd
        else:
            pid, pidfd = self.pid, self.pidfd
        try:
            if pidfd is not None:
                signal.pidfd_send_signal(pidfd, signal.SIGKILL)
            elif pid is not None:
                os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass

    def wait(self):
        """The run's end: (wait status, CPU seconds, peak RSS in KB); SIGKILL when it was killed before it
        could report. Raises SetupError when the run never started (the runner then starts it cold).

        Returns once the sandbox is gone, with every process the program left behind.
        """
        with os.fdopen(self.fd, "rb") as fh:
            for line in fh:
                self._message(line.decode("utf-8", "replace").split())
        with self.lock:
            for pidfd in (self.pidfd, self.sandbox_pidfd):
                if pidfd is not None:
                    # Readable once its pid 1 has exited, which is after the kernel killed the rest.
                    select.select([pidfd], [], [], 10)
                    os.close(pidfd)
            self.pidfd = self.sandbox_pidfd = None
        if self.final is not None:
            return self.final
        if self.error is not None and not self.kill_requested:
            raise SetupError(self.error)
        return (signal.SIGKILL, 0.0, 0)

    def _message(self, words):
        kind, values = words[0], words[1:]
        if kind == "error":
            self.error = " ".join(values)
        elif kind == "status":
            self.final = (int(values[0]), float(values[1]), int(values[2]))
        elif kind in ("pid", "sandbox"):
            pid = int(values[0])
            try:
                pidfd = os.pidfd_open(pid) if hasattr(os, "pidfd_open") else None
            except OSError:
                pidfd = None
            with self.lock:
                if kind == "pid":
                    self.pid, self.pidfd = pid, pidfd
                else:
                    self.sandbox_pid, self.sandbox_pidfd = pid, pidfd
                if self.kill_requested:
                    self._kill_locked()


def zygote_main(fd):
    sock = socket.socket(fileno=fd)
    # Every run is a fork of this process: objects that exist now are never collected in a run, so keep the
    # collector from touching (and copying) their pages.
    gc.freeze()
    sock.send(b"ready")
    job = serve(sock)
    if job is None:
        return
    run_program(*job)


if __name__ == "__main__" and sys.argv[2:3] and sys.argv[2].isdigit():
    zygote_main(int(sys.argv[2]))
