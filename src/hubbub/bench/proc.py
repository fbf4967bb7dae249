"""Process facts from /proc: CPU time, resident memory, CPU affinity, fd limits; and
children that die with the process that started them."""

from __future__ import annotations

import ctypes
import os
import platform
import resource
import signal
import subprocess
from collections.abc import Callable
from pathlib import Path

CLK_TCK = os.sysconf("SC_CLK_TCK")
PR_SET_PDEATHSIG = 1
_prctl: Callable[..., int] | None = None


def _load_prctl() -> Callable[..., int] | None:
    """libc's ``prctl`` (None where there is none: not Linux)."""
    global _prctl
    if _prctl is None:
        try:
            _prctl = ctypes.CDLL(None, use_errno=True).prctl
        except (OSError, AttributeError):
            return None
    return _prctl


def die_with_parent(sig: int = signal.SIGKILL, parent: int | None = None) -> None:
    """Ask the kernel to send ``sig`` to this process when its parent ends
    (``PR_SET_PDEATHSIG``: kept across ``exec``; Linux only, a no-op elsewhere).

    ``parent``: the pid the caller expects as its parent; if it is already gone (the
    parent died before this call), ``sig`` comes now. The kernel's "parent" is the
    *thread* that started the child: start children from a thread that lives as long
    as they should (the main thread, an event loop's).
    """
    prctl = _load_prctl()
    if prctl is not None:
        prctl(PR_SET_PDEATHSIG, int(sig), 0, 0, 0)
    if parent is not None and os.getppid() != parent:
        os.kill(os.getpid(), sig)


def dies_with_us(
    sig: int = signal.SIGKILL, then: Callable[[], None] | None = None
) -> Callable[[], None]:
    """A ``preexec_fn`` for :class:`subprocess.Popen`: the child gets ``sig`` when this
    process (the calling thread) ends, even by ``kill -9``; ``then`` runs after (pinning,
    limits). libc is looked up here, in the parent, not between fork and exec."""
    _load_prctl()
    parent = os.getpid()

    def preexec() -> None:
        die_with_parent(sig, parent)
        if then is not None:
            then()

    return preexec


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process (all its threads), in seconds.

    Fields 14 and 15 of /proc/<pid>/stat, in clock ticks; the command name
    (field 2) may contain spaces, so parsing starts after its closing ')'.
    """
    raw = Path(f"/proc/{pid}/stat").read_text()
    fields = raw[raw.rindex(")") + 2 :].split()
    # fields[0] is field 3 (state): utime is field 14, stime field 15.
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def cpu_seconds_many(pids: list[int]) -> float:
    total = 0.0
    for pid in pids:
        try:
            total += cpu_seconds(pid)
        except (FileNotFoundError, ProcessLookupError, ValueError):
            pass
    return total


def machine_busy_seconds() -> float:
    """CPU seconds all CPUs spent not idle since boot (first line of /proc/stat).

    user + nice + system + irq + softirq + steal; guest time is already in user.
    """
    with open("/proc/stat") as f:
        fields = f.readline().split()[1:9]
    user, nice, system, _idle, _iowait, irq, softirq, steal = (int(x) for x in fields)
    return (user + nice + system + irq + softirq + steal) / CLK_TCK


def rss_kib(pid: int) -> int:
    """VmRSS of a process in KiB (from /proc/<pid>/status)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise ValueError(f"no VmRSS for pid {pid}")


def pin(pid: int, cpus: set[int], *, threads: bool = True) -> None:
    """Restrict a process (by default each of its threads) to ``cpus``."""
    if threads:
        try:
            tids = [int(t) for t in os.listdir(f"/proc/{pid}/task")]
        except FileNotFoundError:
            tids = [pid]
        for tid in tids:
            try:
                os.sched_setaffinity(tid, cpus)
            except ProcessLookupError:
                pass
    else:
        os.sched_setaffinity(pid, cpus)


def raise_nofile(want: int | None = None) -> int:
    """Raise this process's soft open-file limit (to ``want`` or the hard limit)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = hard if want is None else want
    if hard != resource.RLIM_INFINITY:
        target = min(target, hard)
    if target > soft:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        return target
    return soft


def parse_cpus(text: str | None) -> set[int] | None:
    """'0', '0,1', '2-3' -> set of CPU numbers; '' or None -> None (no pinning)."""
    if not text:
        return None
    cpus: set[int] = set()
    for part in text.split(","):
        part = part.strip()
        if "-" in part:
            lo, hi = part.split("-", 1)
            cpus.update(range(int(lo), int(hi) + 1))
        elif part:
            cpus.add(int(part))
    return cpus


def machine_facts() -> dict[str, str]:
    """CPU model, core count, memory and kernel, for the report."""
    facts: dict[str, str] = {}
    try:
        cpuinfo = Path("/proc/cpuinfo").read_text()
        for line in cpuinfo.splitlines():
            if line.startswith("model name"):
                facts["cpu"] = line.split(":", 1)[1].strip()
                break
        mhz = [ln for ln in cpuinfo.splitlines() if ln.startswith("cpu MHz")]
        if mhz:
            facts["cpu_mhz"] = mhz[0].split(":", 1)[1].strip()
    except OSError:
        pass
    try:
        facts["nproc"] = subprocess.run(
            ["nproc"], capture_output=True, text=True, check=True
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        facts["nproc"] = str(os.cpu_count())
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                facts["memory"] = f"{int(line.split()[1]) / 1024 / 1024:.1f} GiB"
                break
    except OSError:
        pass
    facts["kernel"] = platform.release()
    facts["python"] = platform.python_version()
    return facts
