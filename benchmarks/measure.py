"""Run one benchmark in a subprocess; report its wall time, CPU time and peak memory.

Why a subprocess: every tool starts from a fresh interpreter (no warm imports, caches or
thread pools left by an earlier tool), a crash or leak stays contained, and the whole
*process tree* can be watched, which matters because Dask's ``LocalCluster`` runs its
workers as separate processes, and a shell loop of ``gdalwarp`` runs one process per file.

What is measured
----------------
wall_s
    From just before the child is spawned to the moment it is reaped: interpreter start-up
    and imports count, as they would for a user running the tool.
peak_rss_mib
    The largest *sum* of resident set sizes over the child and all its descendants, sampled
    every ``interval`` seconds (50 ms by default) with psutil. Summing RSS counts pages
    shared between processes (shared libraries, fork copy-on-write) once per process, so
    for multi-process tools it is an upper bound on physical memory; it is the same
    quantity for every tool, which is what a side-by-side comparison needs. Peaks shorter
    than the sampling interval can be missed.
max_single_rss_mib
    The kernel's exact high-water mark of the largest single process (``ru_maxrss`` from
    ``wait4``): exact but not summed, so it complements the sampled tree total.
cpu_s
    User + system CPU seconds of the child and every descendant that was waited for
    (``wait4`` rusage). ``cpu_s / wall_s`` is the average number of busy cores.

Callables run as ``python -m benchmarks.measure --call module:function`` with keyword
arguments passed through a JSON file and the return value sent back through another
(so they must be importable by name and take/return JSON-serialisable values).
"""

from __future__ import annotations

import contextlib
import importlib
import json
import math
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import psutil

__all__ = [
    "Measurement",
    "callable_spec",
    "format_table",
    "ratio",
    "run_callable",
    "run_command",
]

_REPO_ROOT = Path(__file__).resolve().parent.parent
_MIB = 1024.0 * 1024.0


@dataclass
class Measurement:
    """The outcome of one measured run.

    Attributes
    ----------
    name : str
        Label of the run (the tool name in tables).
    status : str
        ``"ok"``, ``"failed"`` (non-zero exit or exception), ``"timeout"``, or
        ``"not available"`` (the callable reported the tool cannot run here).
    wall_s, cpu_s, peak_rss_mib, max_single_rss_mib : float or None
        See the module docstring.
    peak_procs : int
        Largest number of live processes seen in the tree at one sample.
    samples : int
        Number of memory samples taken.
    returncode : int or None
        Exit code of the child (negative: killed by that signal).
    note : str
        Human-readable detail: the error message, or what was not available.
    result : Any
        JSON value returned by a callable (``None`` for commands).
    log_path : str or None
        File holding the child's stdout and stderr.
    """

    name: str
    status: str = "ok"
    wall_s: float | None = None
    cpu_s: float | None = None
    peak_rss_mib: float | None = None
    max_single_rss_mib: float | None = None
    peak_procs: int = 0
    samples: int = 0
    returncode: int | None = None
    note: str = ""
    result: Any = None
    log_path: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        """True when the run completed successfully."""
        return self.status == "ok"

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serialisable dict of every field."""
        return asdict(self)


# --------------------------------------------------------------------------------------
# Process-tree sampling
# --------------------------------------------------------------------------------------
def _tree_rss(root: psutil.Process) -> tuple[int, int]:
    """Sum of RSS (bytes) and count of the live processes in ``root``'s tree."""
    try:
        procs = [root, *root.children(recursive=True)]
    except (psutil.NoSuchProcess, psutil.ZombieProcess):
        return 0, 0
    total = 0
    alive = 0
    for p in procs:
        # A process may exit between listing and reading; skip it rather than fail.
        with contextlib.suppress(psutil.NoSuchProcess, psutil.ZombieProcess, psutil.AccessDenied):
            total += p.memory_info().rss
            alive += 1
    return total, alive


def _kill_tree(pid: int) -> None:
    """SIGTERM, then SIGKILL, the child's whole process group (it leads its own session)."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(pid, sig)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + 3.0
        while time.monotonic() < deadline:
            with contextlib.suppress(ChildProcessError):
                if os.waitpid(pid, os.WNOHANG)[0] != 0:
                    return
            time.sleep(0.05)


def run_command(
    cmd: Sequence[str],
    *,
    name: str | None = None,
    env: Mapping[str, str] | None = None,
    cwd: str | os.PathLike[str] | None = None,
    timeout: float | None = None,
    interval: float = 0.05,
    log_path: str | os.PathLike[str] | None = None,
) -> Measurement:
    """Run ``cmd`` as a subprocess and measure it (wall, CPU, peak process-tree RSS).

    Parameters
    ----------
    cmd : sequence of str
        Program and arguments (no shell; pass ``["bash", "-c", script]`` for a loop).
    name : str, optional
        Label for the result; defaults to the program name.
    env : mapping, optional
        Complete environment of the child; defaults to this process's.
    cwd : path-like, optional
        Working directory of the child.
    timeout : float, optional
        Seconds after which the whole process tree is killed (status ``"timeout"``).
    interval : float, optional
        Memory sampling period in seconds.
    log_path : path-like, optional
        Where the child's stdout and stderr go; a temporary file when omitted.

    Returns
    -------
    Measurement
        Status ``"ok"`` when the child exited with code 0, else ``"failed"`` with the
        last lines of its output in ``note``.
    """
    name = name or Path(cmd[0]).name
    if log_path is None:
        fd, tmp = tempfile.mkstemp(prefix=f"measure-{name}-", suffix=".log")
        os.close(fd)
        log_path = tmp
    log = Path(log_path)
    log.parent.mkdir(parents=True, exist_ok=True)
    m = Measurement(name=name, log_path=str(log))
    with open(log, "wb") as out:
        t0 = time.perf_counter()
        # Own session: the whole tree can be killed on timeout without touching us.
        proc = subprocess.Popen(
            list(cmd),
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=dict(env) if env is not None else None,
            cwd=cwd,
            start_new_session=True,
        )
        # The sampler runs on its own thread while this thread blocks in wait4(), so the
        # end time is exact rather than rounded up to the next sampling tick.
        sampler = _TreeSampler(proc.pid, interval)
        sampler.start()
        timed_out = threading.Event()
        reaped = threading.Event()

        def on_timeout() -> None:
            # signal only: this thread must not reap the child, wait4 below does
            timed_out.set()
            for sig in (signal.SIGTERM, signal.SIGKILL):
                try:
                    os.killpg(proc.pid, sig)
                except ProcessLookupError:
                    return
                if reaped.wait(3.0):
                    return

        timer = threading.Timer(timeout, on_timeout) if timeout is not None else None
        if timer is not None:
            timer.daemon = True
            timer.start()
        try:
            _, status, rusage = os.wait4(proc.pid, 0)
            reaped.set()
        except BaseException:
            _kill_tree(proc.pid)
            raise
        finally:
            wall = time.perf_counter() - t0
            if timer is not None:
                timer.cancel()
            sampler.stop()
    code = os.waitstatus_to_exitcode(status)
    proc.returncode = code  # already reaped: keep Popen from waiting again
    m.returncode = code
    m.wall_s = wall
    m.cpu_s = rusage.ru_utime + rusage.ru_stime
    m.max_single_rss_mib = rusage.ru_maxrss / 1024.0  # Linux reports KiB
    m.peak_rss_mib = sampler.peak / _MIB
    m.peak_procs = sampler.peak_procs
    m.samples = sampler.samples
    if timed_out.is_set():
        m.status = "timeout"
        m.note = f"killed after {timeout:.0f} s"
    elif code != 0:
        m.status = "failed"
        m.note = f"exit code {code}: {_tail(log)}"
    return m


class _TreeSampler(threading.Thread):
    """Background thread sampling a process tree's summed RSS at a steady cadence."""

    def __init__(self, pid: int, interval: float) -> None:
        super().__init__(name=f"rss-sampler-{pid}", daemon=True)
        self._root = psutil.Process(pid)
        self._interval = interval
        self._stop_event = threading.Event()
        self.peak = 0
        self.peak_procs = 0
        self.samples = 0

    def run(self) -> None:
        next_tick = time.perf_counter()
        while not self._stop_event.is_set():
            rss, alive = _tree_rss(self._root)
            if alive:
                self.peak = max(self.peak, rss)
                self.peak_procs = max(self.peak_procs, alive)
                self.samples += 1
            # Keep a steady cadence regardless of how long one sample took.
            next_tick += self._interval
            self._stop_event.wait(max(0.0, next_tick - time.perf_counter()))

    def stop(self) -> None:
        """Stop sampling and wait for the thread to finish."""
        self._stop_event.set()
        self.join()


def _tail(path: Path, lines: int = 5, limit: int = 600) -> str:
    """The last few non-empty lines of a log file, for error notes."""
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return ""
    kept = [ln for ln in text.splitlines() if ln.strip()][-lines:]
    return " | ".join(kept)[-limit:]


# --------------------------------------------------------------------------------------
# Callables in a subprocess
# --------------------------------------------------------------------------------------
def callable_spec(func: Callable[..., Any] | str) -> str:
    """The ``module:qualname`` import path of a function (strings pass through).

    Parameters
    ----------
    func : callable or str
        A module-level function, or an existing ``"module:qualname"`` string.

    Returns
    -------
    str
        The spec the child process imports.
    """
    if isinstance(func, str):
        return func
    module = func.__module__
    if module == "__main__":
        # Running `python -m benchmarks.x`: name the module the way the child imports it.
        spec = getattr(sys.modules["__main__"], "__spec__", None)
        module = spec.name if spec is not None else module
    if "<locals>" in func.__qualname__:
        raise ValueError(f"{func.__qualname__} is not importable by name")
    return f"{module}:{func.__qualname__}"


def run_callable(
    func: Callable[..., Any] | str,
    kwargs: Mapping[str, Any] | None = None,
    *,
    name: str | None = None,
    env: Mapping[str, str] | None = None,
    timeout: float | None = None,
    interval: float = 0.05,
    log_path: str | os.PathLike[str] | None = None,
) -> Measurement:
    """Call ``func(**kwargs)`` in a fresh Python subprocess and measure it.

    Parameters
    ----------
    func : callable or str
        Module-level function or ``"module:qualname"``; imported by the child.
    kwargs : mapping, optional
        JSON-serialisable keyword arguments.
    name, env, timeout, interval, log_path
        As for :func:`run_command`. ``PYTHONPATH`` gets the repository root prepended
        so ``benchmarks`` and ``engine`` import in the child.

    Returns
    -------
    Measurement
        ``result`` holds the function's JSON return value. A function may report that
        its tool cannot run here by returning ``{"available": False, "reason": ...}``;
        the status is then ``"not available"``.
    """
    spec = callable_spec(func)
    name = name or spec.rsplit(":", 1)[-1]
    child_env = dict(env if env is not None else os.environ)
    child_env["PYTHONPATH"] = os.pathsep.join(
        p for p in (str(_REPO_ROOT), child_env.get("PYTHONPATH", "")) if p
    )
    with tempfile.TemporaryDirectory(prefix="measure-") as tmp:
        kw_file = Path(tmp) / "kwargs.json"
        res_file = Path(tmp) / "result.json"
        kw_file.write_text(json.dumps(dict(kwargs or {})))
        cmd = [
            sys.executable,
            "-m",
            "benchmarks.measure",
            "--call",
            spec,
            "--kwargs-file",
            str(kw_file),
            "--result-file",
            str(res_file),
        ]
        m = run_command(
            cmd,
            name=name,
            env=child_env,
            cwd=_REPO_ROOT,
            timeout=timeout,
            interval=interval,
            log_path=log_path,
        )
        payload: dict[str, Any] = {}
        if res_file.is_file():
            with contextlib.suppress(ValueError):
                payload = json.loads(res_file.read_text())
    if "error" in payload:
        m.status = "failed"
        m.note = payload["error"]
    elif "value" in payload:
        m.result = payload["value"]
        value = m.result
        if isinstance(value, dict) and value.get("available") is False:
            m.status = "not available"
            m.note = str(value.get("reason", ""))
    return m


def _child_main(argv: Sequence[str]) -> int:
    """Entry point of the measured child: import, call, write the JSON result."""
    import argparse

    p = argparse.ArgumentParser(prog="python -m benchmarks.measure")
    p.add_argument("--call", required=True, help="module:function to call")
    p.add_argument("--kwargs-file", required=True)
    p.add_argument("--result-file", required=True)
    a = p.parse_args(argv)
    module_name, _, qualname = a.call.partition(":")
    kwargs = json.loads(Path(a.kwargs_file).read_text())
    try:
        obj: Any = importlib.import_module(module_name)
        for part in qualname.split("."):
            obj = getattr(obj, part)
        value = obj(**kwargs)
        payload: dict[str, Any] = {"value": value}
        code = 0
    except BaseException as exc:
        traceback.print_exc()
        payload = {"error": f"{type(exc).__name__}: {exc}"}
        code = 1
    Path(a.result_file).write_text(json.dumps(payload, default=str))
    return code


# --------------------------------------------------------------------------------------
# Tables
# --------------------------------------------------------------------------------------
def ratio(value: float | None, baseline: float | None) -> float | None:
    """``value / baseline``, or None when either is missing or the baseline is zero."""
    if value is None or baseline is None or baseline == 0 or math.isnan(baseline):
        return None
    return value / baseline


def format_table(
    rows: Sequence[Mapping[str, Any]],
    columns: Sequence[tuple[str, str, str]],
    *,
    missing: str = "—",
) -> str:
    """Render rows as a fixed-width text table.

    Parameters
    ----------
    rows : sequence of mapping
        One mapping per line of the table.
    columns : sequence of (key, header, format)
        ``format`` is a ``str.format`` spec such as ``".1f"``; ``""`` prints ``str()``.
        Values that are None print as ``missing``.
    missing : str, optional
        Placeholder for None values.

    Returns
    -------
    str
        Header, a rule, and one line per row; text columns (empty format) are
        left-aligned, numeric ones right-aligned.

    Examples
    --------
    >>> print(format_table([{"a": "x", "b": 1.234}], [("a", "tool", ""), ("b", "s", ".1f")]))
    tool    s
    ----  ---
    x     1.2
    """
    cells = [[h for _, h, _ in columns]]
    for row in rows:
        line = []
        for key, _, fmt in columns:
            v = row.get(key)
            line.append(missing if v is None else format(v, fmt) if fmt else str(v))
        cells.append(line)
    widths = [max(len(r[i]) for r in cells) for i in range(len(columns))]
    # Text columns (no format spec) read best left-aligned, numbers right-aligned.
    left = [fmt == "" for _, _, fmt in columns]

    def render(r: list[str]) -> str:
        parts = [
            c.ljust(w) if is_left else c.rjust(w)
            for c, w, is_left in zip(r, widths, left, strict=True)
        ]
        return "  ".join(parts).rstrip()

    out = [render(cells[0]), "  ".join("-" * w for w in widths)]
    out += [render(r) for r in cells[1:]]
    return "\n".join(out)


if __name__ == "__main__":
    raise SystemExit(_child_main(sys.argv[1:]))
