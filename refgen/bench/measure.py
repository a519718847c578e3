"""Wall time and peak memory of a child process, measured from outside it.

``os.wait4`` returns the child's own resource usage, so its ``ru_maxrss`` is that child's peak
resident set (file-backed mmap pages included), not a maximum over every child we ever ran, and
nothing is sampled: a short peak between two polls cannot be missed. One caveat: the kernel
starts an exec'd child's high-water mark at its parent's RSS at fork time, so the measuring
process must stay small (the benchmark's parent never imports torch).
"""

from __future__ import annotations

import os
import subprocess
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
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


class ChildFailed(RuntimeError):
    """A measured child exited non-zero; the message carries the tail of its stderr."""


def run_child(
    argv: Sequence[str], env: Mapping[str, str], cwd: Path | None = None, check: bool = True
) -> ChildRun:
    """Run *argv*, wait for it with wait4 and return its wall time, CPU times and peak RSS."""
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        start = time.perf_counter()
        proc = subprocess.Popen(list(argv), env=dict(env), cwd=cwd, stdout=out, stderr=err)
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - start
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
        )
    if check and run.returncode != 0:
        tail = "\n".join(run.stderr.strip().splitlines()[-15:])
        raise ChildFailed(f"`{' '.join(argv)}` exited with {run.returncode}:\n{tail}")
    return run
