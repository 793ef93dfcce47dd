# The library's Python kernel (issue 33): run as `python3 -u -I -c <this file>` inside a
# sandbox, as the sandbox's user, by `CodeContext`. Standard library only.
#
# Protocol: one JSON object per line, each reply after a record separator (\x1e). Requests on the kernel's own copy of fd 0, replies on its
# own copy of fd 1 (see src/sandbox/code/protocol.rs); the code's fds 0, 1 and 2 are
# /dev/null and two pipes the kernel reads, so nothing the code writes (print, os.write, a
# subprocess) can forge a reply.
#
#   host -> kernel  {"t": "run", "id": "...", "code": "...", "limit": <bytes per stream>}
#   kernel -> host  {"t": "ready", "version": "3.11.2"}
#                   {"t": "stream", "n": "stdout" | "stderr", "s": "..."}
#                   {"t": "display", "data": {mime: value}, "main": bool}
#                   {"t": "error", "ename": "...", "evalue": "...", "traceback": ["..."]}
#                   {"t": "done", "id": "...", "count": n, "ok": bool, "cpu_ms": f, "dropped": [out, err]}

import ast
import base64
import builtins
import io
import json
import linecache
import os
import resource
import signal
import sys
import threading
import traceback
import types

PROTO_IN = os.dup(0)
PROTO_OUT = os.dup(1)
_null = os.open(os.devnull, os.O_RDONLY)
os.dup2(_null, 0)
os.close(_null)

_send_lock = threading.Lock()
# A SIGINT while a reply is half written waits for its end (a cut line would lose it).
_sending = 0
_interrupt_pending = False


def send(msg):
    global _sending, _interrupt_pending
    text = json.dumps(msg, ensure_ascii=True, default=str)
    if "\\ud" in text:
        # Maybe a lone surrogate (an undecodable file name), which the host's strict JSON
        # refuses: written as UTF-8 with U+FFFD instead (the slower path, rarely taken).
        data = ("\x1e" + json.dumps(msg, ensure_ascii=False, default=str) + "\n").encode(
            "utf-8", "replace"
        )
    else:
        data = ("\x1e" + text + "\n").encode("ascii")
    with _send_lock:
        _sending += 1
        try:
            view = memoryview(data)
            while view:
                n = os.write(PROTO_OUT, view)
                view = view[n:]
        finally:
            _sending -= 1
    if _interrupt_pending and running and threading.current_thread() is threading.main_thread():
        _interrupt_pending = False
        raise KeyboardInterrupt


class Cell:
    """What the running cell may still send: the per-stream byte limit and what was cut."""

    limit = 1 << 62
    sent = [0, 0]
    dropped = [0, 0]

    @classmethod
    def reset(cls, limit):
        cls.limit = limit
        cls.sent = [0, 0]
        cls.dropped = [0, 0]


def emit_stream(index, text):
    if not text:
        return
    with _stream_lock:
        room = Cell.limit - Cell.sent[index]
        data = text.encode("utf-8", "replace")
        if len(data) > room:
            Cell.dropped[index] += len(data) - max(room, 0)
            data = data[: max(room, 0)]
            text = data.decode("utf-8", "ignore")
        Cell.sent[index] += len(data)
    if text:
        send({"t": "stream", "n": ("stdout", "stderr")[index], "s": text})


_stream_lock = threading.Lock()


class Stream(io.TextIOBase):
    """sys.stdout and sys.stderr: line-buffered straight into stream replies."""

    def __init__(self, index):
        self.index = index
        self.buf = []
        self.size = 0

    def writable(self):
        return True

    def write(self, s):
        if not isinstance(s, str):
            raise TypeError("write() argument must be str, not %s" % type(s).__name__)
        self.buf.append(s)
        self.size += len(s)
        if "\n" in s or self.size > 65536:
            self.flush()
        return len(s)

    def flush(self):
        if self.buf:
            text = "".join(self.buf)
            self.buf, self.size = [], 0
            emit_stream(self.index, text)

    def isatty(self):
        return False

    @property
    def encoding(self):
        return "utf-8"


def pump(fd, index, idle):
    """Forwards what the code writes to fd 1 or 2 directly (os.write, subprocesses). `idle`
    is clear from the moment bytes are readable until they are sent, so a drain that sees it
    set with nothing readable has all of them."""
    import select

    decoder = __import__("codecs").getincrementaldecoder("utf-8")("replace")
    poller = select.poll()
    poller.register(fd, select.POLLIN)
    while True:
        idle.set()
        try:
            poller.poll()
        except InterruptedError:
            continue
        idle.clear()
        try:
            chunk = os.read(fd, 65536)
        except InterruptedError:
            continue
        if not chunk:
            return
        emit_stream(index, decoder.decode(chunk))


_pipes = []
for _index in (0, 1):
    _r, _w = os.pipe()
    os.dup2(_w, _index + 1)
    os.close(_w)
    _idle = threading.Event()
    threading.Thread(target=pump, args=(_r, _index, _idle), daemon=True).start()
    _pipes.append((_r, _idle))
sys.stdout = Stream(0)
sys.stderr = Stream(1)
sys.stdin = open(os.devnull)


def drain_pipes():
    """Waits until the pumps have forwarded what the code wrote to fds 1 and 2."""
    import fcntl
    import termios
    import time

    deadline = time.monotonic() + 1.0
    for fd, idle in _pipes:
        while time.monotonic() < deadline:
            pending = bytearray(4)
            fcntl.ioctl(fd, termios.FIONREAD, pending)
            # Idle first: a pump that has just polled clears it before its read.
            if idle.is_set() and int.from_bytes(pending, sys.byteorder) == 0 and idle.is_set():
                break
            time.sleep(0.0005)


# ---- rich results ----

REPRS = (
    ("_repr_html_", "text/html"),
    ("_repr_markdown_", "text/markdown"),
    ("_repr_svg_", "image/svg+xml"),
    ("_repr_png_", "image/png"),
    ("_repr_jpeg_", "image/jpeg"),
    ("_repr_latex_", "text/latex"),
    ("_repr_json_", "application/json"),
    ("_repr_javascript_", "application/javascript"),
)


def figure_png(fig):
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return base64.b64encode(buf.getvalue()).decode("ascii")


def bundle(obj):
    try:
        text = repr(obj)
    except BaseException as e:
        text = "<repr failed: %s>" % e
    data = {"text/plain": text}
    if isinstance(obj, type):
        return data
    if type(obj).__module__.startswith("matplotlib") and hasattr(obj, "savefig"):
        data["image/png"] = figure_png(obj)
        return data
    for method, mime in REPRS:
        f = getattr(obj, method, None)
        if not callable(f):
            continue
        try:
            value = f()
        except Exception:
            continue
        if isinstance(value, tuple):
            value = value[0]
        if value is None:
            continue
        if isinstance(value, bytes):
            value = base64.b64encode(value).decode("ascii")
        data[mime] = value
    return data


def display(*objs, **_):
    """Shows each object as a rich result, in order."""
    for obj in objs:
        send({"t": "display", "data": bundle(obj), "main": False})


def show_figures(*_, **__):
    """Sends every open matplotlib figure as a PNG and closes it (plt.show, a cell's end)."""
    pyplot = sys.modules.get("matplotlib.pyplot")
    if pyplot is None:
        return
    for num in list(pyplot.get_fignums()):
        fig = pyplot.figure(num)
        send({"t": "display", "data": {"text/plain": repr(fig), "image/png": figure_png(fig)}, "main": False})
        pyplot.close(fig)


# matplotlib renders with Agg, and plt.show() sends the figures: a backend of the kernel's,
# made when matplotlib first asks for it.
import importlib.abc
import importlib.util


class _Backend(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    NAME = "osb_mpl_backend"

    def find_spec(self, name, path, target=None):
        if name == self.NAME:
            return importlib.util.spec_from_loader(name, self)
        if name == "matplotlib":
            # The real matplotlib, told to use this backend once imported (an environment
            # variable would reach the code's child processes, which have no such backend).
            for finder in sys.meta_path:
                if finder is self or not hasattr(finder, "find_spec"):
                    continue
                spec = finder.find_spec(name, path, target)
                if spec is not None and spec.loader is not None:
                    real = spec.loader.exec_module

                    def exec_module(module, real=real):
                        real(module)
                        module.rcParams["backend"] = "module://" + _Backend.NAME

                    spec.loader.exec_module = exec_module
                    return spec
        return None

    def create_module(self, spec):
        return None

    def exec_module(self, module):
        from matplotlib.backend_bases import FigureManagerBase
        from matplotlib.backends.backend_agg import FigureCanvasAgg

        module.FigureCanvas = FigureCanvasAgg
        module.FigureManager = FigureManagerBase
        module.show = show_figures


sys.meta_path.insert(0, _Backend())
builtins.display = display

# ---- running cells ----

namespace = {"__name__": "__main__", "__builtins__": builtins, "display": display}
running = False


def on_sigint(signum, frame):
    global _interrupt_pending
    if not running:
        return  # between cells an interrupt has nothing to stop
    if _sending:
        _interrupt_pending = True  # raised once the reply is whole
        return
    raise KeyboardInterrupt


signal.signal(signal.SIGINT, on_sigint)


def cell_traceback(exc):
    """The traceback from the cell's first frame on (the kernel's own frames left out)."""
    tb = exc.__traceback__
    while tb is not None and not tb.tb_frame.f_code.co_filename.startswith("<cell "):
        tb = tb.tb_next
    if isinstance(exc, SyntaxError) or tb is None:
        return traceback.format_exception_only(type(exc), exc)
    return traceback.format_exception(type(exc), exc, tb)


def run(code, count):
    global running
    name = "<cell %d>" % count
    linecache.cache[name] = (len(code), None, code.splitlines(True), name)
    ok = True
    try:
        running = True
        try:
            tree = ast.parse(code, filename=name, mode="exec")
            last = None
            if tree.body and isinstance(tree.body[-1], ast.Expr):
                last = ast.Expression(tree.body.pop().value)
            exec(compile(tree, name, "exec"), namespace)
            value = None
            if last is not None:
                value = eval(compile(last, name, "eval"), namespace)
        finally:
            running = False
        sys.stdout.flush()
        sys.stderr.flush()
        if value is not None:
            namespace["_"] = value
            send({"t": "display", "data": bundle(value), "main": True})
            pyplot = sys.modules.get("matplotlib.pyplot")
            if pyplot is not None and isinstance(value, sys.modules["matplotlib.figure"].Figure):
                pyplot.close(value)  # shown once, as the cell's result
        show_figures()
    except BaseException as exc:  # KeyboardInterrupt and SystemExit are the cell's errors too
        global _interrupt_pending
        running = False
        _interrupt_pending = False
        ok = False
        try:
            sys.stdout.flush()
            sys.stderr.flush()
        except BaseException:
            pass
        try:
            value = str(exc)
        except BaseException:
            value = "<the exception's str() failed>"
        try:
            tb = cell_traceback(exc)
        except BaseException:
            tb = []
        send({"t": "error", "ename": type(exc).__name__, "evalue": value, "traceback": tb})
        # Figures the cell drew before it failed are its results, not the next cell's.
        try:
            show_figures()
        except BaseException:
            pass
    return ok


def main():
    version = "%d.%d.%d" % sys.version_info[:3]
    send({"t": "ready", "version": version, "pid": os.getpid()})
    requests = os.fdopen(PROTO_IN, "rb", buffering=0)
    reader = io.BufferedReader(requests, 1 << 20)
    count = 0
    while True:
        try:
            line = reader.readline()
        except KeyboardInterrupt:
            continue
        if not line:
            return
        try:
            req = json.loads(line)
        except ValueError:
            continue
        if req.get("t") != "run":
            continue
        count += 1
        run_id = str(req.get("id", ""))
        Cell.reset(int(req.get("limit") or (1 << 62)))
        before = resource.getrusage(resource.RUSAGE_SELF)
        ok = run(req.get("code", ""), count)
        drain_pipes()
        after = resource.getrusage(resource.RUSAGE_SELF)
        cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
        send(
            {
                "t": "done",
                "id": run_id,
                "count": count,
                "ok": ok,
                "cpu_ms": cpu * 1000.0,
                "rss_kib": after.ru_maxrss,
                "dropped": Cell.dropped,
            }
        )


main()
