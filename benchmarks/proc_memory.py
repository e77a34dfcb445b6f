"""Run a command in a fresh process and measure it: wall and CPU seconds, the kernel's peak RSS
(``ru_maxrss``: file pages of read-only mappings count too) and the high-water mark of its
anonymous memory (``RssAnon`` from /proc/PID/status, sampled every 20 ms): the process's own
memory, which is what a memory bar bounds. Shared by the benchmarks that state memory."""

from __future__ import annotations

import os
import subprocess
import threading
import time

GIB = 2**30


def status_kib(pid: int | str, field: str = "RssAnon") -> int | None:
    """One ``/proc/PID/status`` field in KiB (``pid`` may be ``"self"``); None if gone."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def run_measured(cmd: list[str], env: dict | None = None, every: float = 0.02) -> dict:
    """``{"s", "cpu_s", "peak_rss_gib", "peak_anon_gib", "returncode"}`` of ``cmd``."""
    t = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL)
    peak = [0]
    done = threading.Event()

    def sample() -> None:
        while not done.is_set():
            kib = status_kib(proc.pid)
            if kib is not None:
                peak[0] = max(peak[0], kib)
            done.wait(every)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    _, status, usage = os.wait4(proc.pid, 0)
    elapsed = time.perf_counter() - t
    done.set()
    sampler.join()
    return {
        "s": elapsed,
        "cpu_s": usage.ru_utime + usage.ru_stime,
        "peak_rss_gib": usage.ru_maxrss * 1024 / GIB,  # ru_maxrss is in KiB on Linux
        "peak_anon_gib": peak[0] * 1024 / GIB,
        "returncode": os.waitstatus_to_exitcode(status),
    }
