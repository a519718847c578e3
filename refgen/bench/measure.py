"""Wall time and peak memory of a child process, measured from outside it.

``os.wait4`` returns the child's own resource usage, so its ``ru_maxrss`` is that child's peak
resident set (file-backed mmap pages included), not a maximum over every child we ever ran, and
nothing is sampled: a short peak between two polls cannot be missed. One caveat: the kernel
starts an exec'd child's high-water mark at its parent's RSS at fork time, so the measuring
process must stay small (the benchmark's parent never imports torch).

Beside it, a watchdog samples the child's anonymous memory: the part that a memory cap is about
(mapped file pages count in RSS, but the kernel can drop them).
"""

from __future__ import annotations

import os
import signal
import subprocess
import tempfile
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path


@dataclass(frozen=True)
class ChildRun:
    wall_s: float
    user_s: float
    sys_s: float
    max_rss_bytes: int
    returncode: int
    stdout: str
    stderr: str
    io: dict[str, int] = field(default_factory=dict)  # /proc/PID/io at exit: read_bytes, rchar...
    killed_at_rss_bytes: int | None = None  # anonymous RSS when the watchdog killed it
    max_anon_bytes: int = 0  # peak anonymous RSS, sampled every 20 ms


def _anon_bytes(pid: int) -> int:
    """The child's anonymous resident memory (RssAnon + RssShmem): what the kernel cannot drop.

    Peak RSS also counts the pages of files it maps, which the kernel reclaims under pressure:
    accelerate maps the whole checkpoint (20.2 GB peak RSS at the 8B shape with 0.4 GB anonymous
    after loading), so a cap on RSS would stop it for memory it never owned.
    """
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return 0
    fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
    return sum(int(fields[k].split()[0]) * 1024 for k in ("RssAnon", "RssShmem") if k in fields)


def _io(pid: int) -> dict[str, int]:
    try:
        lines = Path(f"/proc/{pid}/io").read_text().splitlines()
    except OSError:
        return {}
    return {k: int(v) for k, v in (line.split(": ") for line in lines if ": " in line)}


class ChildFailed(RuntimeError):
    """A measured child exited non-zero; the message carries the tail of its stderr."""


def run_child(
    argv: Sequence[str],
    env: Mapping[str, str],
    cwd: Path | None = None,
    check: bool = True,
    rss_limit: int | None = None,
) -> ChildRun:
    """Run *argv*, wait for it with wait4 and return its wall time, CPU times, peak RSS and I/O.

    A watchdog thread reads the child's anonymous memory every 20 ms (its peak is reported);
    with *rss_limit* it kills the child (SIGKILL) past that many anonymous bytes, so a program
    that cannot fit stops before it takes the machine down.
    """
    killed: list[int] = []
    peak = [0]
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        start = time.perf_counter()
        proc = subprocess.Popen(list(argv), env=dict(env), cwd=cwd, stdout=out, stderr=err)
        done = threading.Event()

        def watch() -> None:
            while not done.wait(0.02):
                anon = _anon_bytes(proc.pid)
                peak[0] = max(peak[0], anon)
                if rss_limit and anon > rss_limit:
                    killed.append(anon)
                    os.kill(proc.pid, signal.SIGKILL)
                    return

        watchdog = threading.Thread(target=watch, daemon=True)
        watchdog.start()
        # Wait without reaping, so that /proc/PID/io can still be read, then reap with wait4.
        os.waitid(os.P_PID, proc.pid, os.WEXITED | os.WNOWAIT)
        done.set()
        io = _io(proc.pid)
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - start
        watchdog.join()
        proc.returncode = os.waitstatus_to_exitcode(status)  # Popen must not wait again
        out.seek(0)
        err.seek(0)
        run = ChildRun(
            wall_s=wall,
            user_s=usage.ru_utime,
            sys_s=usage.ru_stime,
            max_rss_bytes=usage.ru_maxrss * 1024,  # Linux reports kilobytes
            returncode=proc.returncode,
            stdout=out.read().decode(errors="replace"),
            stderr=err.read().decode(errors="replace"),
            io=io,
            killed_at_rss_bytes=killed[0] if killed else None,
            max_anon_bytes=peak[0],
        )
    if check and run.returncode != 0:
        tail = "\n".join(run.stderr.strip().splitlines()[-15:])
        raise ChildFailed(f"`{' '.join(argv)}` exited with {run.returncode}:\n{tail}")
    return run
