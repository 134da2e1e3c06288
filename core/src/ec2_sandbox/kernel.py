"""The session interpreter: a Python process that keeps its variables between the cells a session runs.

It runs inside the session's sandbox, as the session's uid, under the session's limits: the runner starts it
as the program of a run (``python3 kernel.py``) that lasts as long as the session's interpreter, and talks to
it over one unix socket (the fd in ``EC2_SANDBOX_KERNEL_FD``) held by the session's host process, which is
root's and outside the sandbox. Frames both ways are a 4-byte length and a JSON object. An ``execute`` frame
carries two fds (the cell's stdout and stderr files, made by the host) that become this process's fd 1 and 2
for the cell, so that C extensions and child processes write to the cell's output as ``print`` does.

Everything this process says is the program's word, as a run's stdout is: what a result *means* (timed
out, killed, memory, state lost) is decided by the host from what it saw itself. The kernel's own machinery
keeps private references to what it uses, so that a cell that replaces ``print``, ``repr``, ``json`` or
``sys.stdout`` changes its own output, not the way results travel.

A small stdlib kernel rather than ipykernel: it must start with nothing but ``python3`` on the target, in
well under the 30 MB an idle interpreter may hold, and speak a protocol that SSM's one-command-per-call
shape can reach; the Jupyter messaging layer (zmq, five sockets, HMAC) would bring none of that. Rich
display follows IPython's conventions (``_repr_*_`` methods, ``_repr_mimebundle_``, a final expression's
value, ``display()``), so objects made for Jupyter display here as they do there.

This file is stdlib-only and Python 3.8-compatible.
"""

import ast
import base64
import builtins
import json
import linecache
import os
import signal
import socket
import struct
import sys
import threading
import traceback
import types

FRAME = struct.Struct("!I")
#: A frame larger than this from the host is a broken channel, not a request.
MAX_FRAME = 64 << 20
#: Bytes of one MIME value a result may carry (a larger one is replaced by a note saying so).
MAX_MIME_BYTES = 8 << 20
#: Bytes of a cell's whole reply (the host takes no larger frame): beyond it, results keep only their text.
MAX_REPLY_BYTES = 24 << 20
#: Characters of ``text/plain`` kept of a value's repr.
MAX_REPR_CHARS = 100000
#: Display methods, in IPython's order of preference; each returns data of its MIME type (or None).
REPR_METHODS = (
    ("_repr_png_", "image/png"),
    ("_repr_jpeg_", "image/jpeg"),
    ("_repr_svg_", "image/svg+xml"),
    ("_repr_html_", "text/html"),
    ("_repr_markdown_", "text/markdown"),
    ("_repr_latex_", "text/latex"),
    ("_repr_json_", "application/json"),
)
BINARY_MIMES = ("image/png", "image/jpeg")
INLINE_BACKEND = "ec2_sandbox_inline"

# Private references: a cell may rebind the builtins and modules' attributes it sees; the kernel's own path
# goes through these.
_dumps, _loads = json.dumps, json.loads
_b64encode = base64.b64encode
_repr, _isinstance, _getattr, _callable, _len = repr, isinstance, getattr, callable, len
_dup2, _close, _fsync = os.dup2, os.close, os.fsync
_pthread_kill = signal.pthread_kill


class Channel(object):
    """Frames over the socket to the host, with the fds that come with them."""

    def __init__(self, sock):
        self.sock = sock
        self.send_lock = threading.Lock()
        self.buffer = b""
        self.fds = []

    def send(self, message):
        data = _dumps(message, separators=(",", ":")).encode("utf-8")
        if _len(data) > MAX_REPLY_BYTES and message.get("results"):
            for item in message["results"]:
                kept = {"text/plain": item["data"].get("text/plain", "")}
                kept["_omitted"] = sorted(m for m in item["data"] if m not in kept)
                item["data"] = kept
            data = _dumps(message, separators=(",", ":")).encode("utf-8")
        with self.send_lock:
            self.sock.sendall(FRAME.pack(_len(data)) + data)

    def receive(self):
        """The next frame and the fds that arrived with it (or before it); None at end of channel."""
        while True:
            if _len(self.buffer) >= FRAME.size:
                (size,) = FRAME.unpack(self.buffer[: FRAME.size])
                if size > MAX_FRAME:
                    raise ValueError("a frame of %d bytes from the host" % size)
                if _len(self.buffer) >= FRAME.size + size:
                    body = self.buffer[FRAME.size : FRAME.size + size]
                    self.buffer = self.buffer[FRAME.size + size :]
                    fds, self.fds = self.fds, []
                    return _loads(body.decode("utf-8")), fds
            data, ancdata, _, _ = self.sock.recvmsg(1 << 16, socket.CMSG_SPACE(8 * 4))
            for level, kind, payload in ancdata:
                if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                    usable = _len(payload) - _len(payload) % 4
                    self.fds.extend(struct.unpack("%di" % (usable // 4), payload[:usable]))
            if not data:
                return None
            self.buffer += data


class Kernel(object):
    def __init__(self, channel):
        self.channel = channel
        self.main_thread = threading.main_thread().ident
        self.namespace = {"__name__": "__main__", "__builtins__": builtins, "display": self.display}
        self.results = []
        self.requests = []
        self.ready = threading.Condition()
        self.running = None  # the id of the cell in progress
        self.loop = None

    # -------------------------------------------------------------- the channel's reader
    def read_requests(self):
        """Reads every frame as it comes: an interrupt must reach a cell that is busy."""
        try:
            while True:
                got = self.channel.receive()
                if got is None:
                    break
                message, fds = got
                if message.get("op") == "interrupt":
                    if self.running is not None and self.running == message.get("id"):
                        _pthread_kill(self.main_thread, signal.SIGINT)
                    continue
                with self.ready:
                    self.requests.append((message, fds))
                    self.ready.notify()
        except (OSError, ValueError):
            pass
        with self.ready:
            self.requests.append((None, []))
            self.ready.notify()

    def next_request(self):
        with self.ready:
            while not self.requests:
                self.ready.wait()
            return self.requests.pop(0)

    # -------------------------------------------------------------- cells
    def serve(self):
        self.channel.send({"op": "hello", "python": "%d.%d.%d" % sys.version_info[:3]})
        while True:
            message, fds = self.next_request()
            if message is None:
                return
            if message.get("op") != "execute" or _len(fds) != 2:
                for fd in fds:
                    _close(fd)
                continue
            reply = self.execute(message, fds)
            self.channel.send(reply)

    def execute(self, message, fds):
        cell_id = message.get("id")
        _dup2(fds[0], 1)
        _dup2(fds[1], 2)
        for fd in fds:
            _close(fd)
        self.results = []
        error = None
        self.running = cell_id
        try:
            try:
                self.run_cell(message.get("code") or "", message.get("count") or 0)
            except KeyboardInterrupt:
                error = self.error_of(sys.exc_info(), "interrupted")
            except BaseException:
                error = self.error_of(sys.exc_info(), None)
            finally:
                self.running = None
            self.flush_figures()
        except BaseException:  # an interrupt that arrived just after the cell ended
            self.running = None
        self.flush_streams()
        reply = {"op": "done", "id": cell_id, "results": self.results, "error": error}
        self.results = []
        return reply

    def run_cell(self, code, count):
        filename = "<cell-%d>" % count
        linecache.cache[filename] = (_len(code), None, code.splitlines(True), filename)
        flags = getattr(ast, "PyCF_ALLOW_TOP_LEVEL_AWAIT", 0)
        tree = compile(code, filename, "exec", ast.PyCF_ONLY_AST | flags)
        last = None
        if tree.body and _isinstance(tree.body[-1], ast.Expr):
            last = ast.Expression(tree.body.pop().value)
        self.run_code(compile(tree, filename, "exec", flags))
        if last is not None:
            value = self.run_code(compile(last, filename, "eval", flags))
            if value is not None:
                self.namespace["_"] = value
                self.results.append(self.bundle(value, True))

    def run_code(self, code):
        value = eval(code, self.namespace)  # noqa: S307 - running the session's code is this process's job
        if code.co_flags & 0x80:  # CO_COROUTINE: the cell awaits at top level
            if self.loop is None:
                import asyncio

                self.loop = asyncio.new_event_loop()
            value = self.loop.run_until_complete(value)
        return value

    def error_of(self, exc_info, name):
        kind, value, tb = exc_info
        try:
            # The kernel's own frames (the exec, the interrupt handler) are not the cell's: leave them out.
            frames = [f for f in traceback.extract_tb(tb) if f.filename != __file__]
            lines = ["Traceback (most recent call last):\n"] if frames else []
            lines += traceback.format_list(frames) + traceback.format_exception_only(kind, value)
        except BaseException:
            lines = ["%s (its traceback could not be formatted)\n" % kind.__name__]
        try:
            text = str(value)
        except BaseException:
            text = "<unprintable %s>" % kind.__name__
        return {"name": name or kind.__name__, "value": text[:MAX_REPR_CHARS], "traceback": lines[-200:]}

    def flush_streams(self):
        for stream in (sys.stdout, sys.stderr, sys.__stdout__, sys.__stderr__):
            try:
                stream.flush()
            except BaseException:
                pass

    # -------------------------------------------------------------- rich display
    def display(self, *objects, **_options):
        """Show each object as a rich result of the cell (as IPython's ``display``)."""
        for obj in objects:
            self.results.append(self.bundle(obj, False))

    def bundle(self, obj, main):
        data = {}
        try:
            data["text/plain"] = _repr(obj)[:MAX_REPR_CHARS]
        except BaseException as exc:
            data["text/plain"] = "<repr failed: %s>" % type(exc).__name__
        if _isinstance(obj, type):
            return {"data": data, "main": main}  # a class's _repr_*_ are unbound methods
        figure = self.figure_png(obj)
        if figure is not None:
            data["image/png"] = figure
        mimebundle = self.call_repr(obj, "_repr_mimebundle_")
        if _isinstance(mimebundle, tuple):
            mimebundle = mimebundle[0]
        if _isinstance(mimebundle, dict):
            for mime, value in mimebundle.items():
                self.add(data, str(mime), value)
        for method, mime in REPR_METHODS:
            if mime not in data:
                self.add(data, mime, self.call_repr(obj, method))
        return {"data": data, "main": main}

    @staticmethod
    def call_repr(obj, method):
        try:
            fn = _getattr(obj, method, None)
            if not _callable(fn):
                return None
            value = fn()
        except BaseException:
            return None
        return value[0] if _isinstance(value, tuple) and _len(value) == 2 else value

    @staticmethod
    def add(data, mime, value):
        if value is None:
            return
        if mime in BINARY_MIMES or (mime.startswith("image/") and _isinstance(value, (bytes, bytearray))):
            if _isinstance(value, (bytes, bytearray)):
                encoded = _b64encode(bytes(value)).decode("ascii")
            elif _isinstance(value, str):
                encoded = value  # Jupyter's convention: already base64
            else:
                return
        elif mime == "application/json" or mime.endswith("+json"):
            try:
                encoded = _dumps(value)
            except (TypeError, ValueError):
                return
        elif _isinstance(value, str):
            encoded = value
        else:
            return
        if _len(encoded) > MAX_MIME_BYTES:
            encoded = None
            data.setdefault("_omitted", []).append(mime)
            return
        data[mime] = encoded

    @staticmethod
    def figure_png(obj):
        """A matplotlib figure as PNG (the one kind of object that shows in Jupyter by a formatter)."""
        if type(obj).__module__ != "matplotlib.figure" or type(obj).__name__ != "Figure":
            return None
        try:
            import io

            buffer = io.BytesIO()
            obj.savefig(buffer, format="png", bbox_inches="tight")
            plt = sys.modules.get("matplotlib.pyplot")
            if plt is not None:
                plt.close(obj)
            return _b64encode(buffer.getvalue()).decode("ascii")
        except BaseException:
            return None

    def flush_figures(self):
        """Figures a cell left open show as its results, then close (as matplotlib's inline backend)."""
        plt = sys.modules.get("matplotlib.pyplot")
        if plt is None:
            return
        try:
            numbers = plt.get_fignums()
        except BaseException:
            return
        for number in numbers:
            try:
                figure = plt.figure(number)
            except BaseException:
                continue
            png = self.figure_png(figure)
            if png is not None:
                self.results.append({"data": {"text/plain": _repr(figure), "image/png": png}, "main": False})


class InlineBackend(object):
    """``MPLBACKEND=module://ec2_sandbox_inline``: Agg drawing, and ``plt.show()`` shows figures as results
    instead of warning that Agg cannot show them. Made only when matplotlib asks for it."""

    def __init__(self, kernel):
        self.kernel = kernel

    def find_spec(self, name, path=None, target=None):
        if name != INLINE_BACKEND:
            return None
        import importlib.machinery

        return importlib.machinery.ModuleSpec(name, self)

    def create_module(self, spec):
        return None

    def exec_module(self, module):
        from matplotlib.backend_bases import FigureManagerBase
        from matplotlib.backends.backend_agg import FigureCanvasAgg

        kernel = self.kernel
        module.FigureCanvas = FigureCanvasAgg
        module.FigureManager = FigureManagerBase

        def show(*_args, **_kwargs):
            kernel.flush_figures()
            plt = sys.modules.get("matplotlib.pyplot")
            if plt is not None:
                plt.close("all")

        module.show = show


def main(fd):
    sock = socket.socket(fileno=fd)
    sock.set_inheritable(False)
    kernel = Kernel(Channel(sock))
    sys.meta_path.append(InlineBackend(kernel))
    sys.modules["__main__"] = types.ModuleType("__main__")
    sys.modules["__main__"].__dict__.update(kernel.namespace)
    kernel.namespace = sys.modules["__main__"].__dict__  # pickle and dataclasses look things up there
    kernel.namespace["display"] = kernel.display

    def on_interrupt(signum, frame):
        # An interrupt meant for a cell that has just ended must not end the kernel's own loop.
        if kernel.running is not None:
            raise KeyboardInterrupt

    signal.signal(signal.SIGINT, on_interrupt)
    reader = threading.Thread(target=kernel.read_requests, name="ec2-sandbox-kernel", daemon=True)
    reader.start()
    kernel.serve()


if __name__ == "__main__":
    main(int(os.environ.pop("EC2_SANDBOX_KERNEL_FD")))
