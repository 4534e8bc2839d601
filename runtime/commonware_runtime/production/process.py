"""Process metrics of the production runtime, under the reserved ``runtime_process_`` prefix.

Read at scrape time (a collector, not a background sampler): ``/proc/self`` on Linux;
elsewhere ``resource``/``os``/``threading`` fallbacks.  Fallback caveats, by metric:

* resident memory: without ``/proc`` it is ``ru_maxrss``, the *peak* resident size;
* open fds: ``/proc/self/fd`` or ``/dev/fd``; omitted where neither exists;
* threads: without ``/proc`` only the threads Python knows (``threading.active_count``).
"""

from __future__ import annotations

import os
import sys
import threading
from collections.abc import Iterator

from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily, Metric

try:
    import resource
except ImportError:  # Windows
    resource = None  # type: ignore[assignment]

__all__ = ["ProcessCollector", "ProcessSample", "sample"]

_PROC = "/proc/self"


class ProcessSample:
    """One reading of the process's resource usage (None: not available here)."""

    __slots__ = ("resident_memory_bytes", "virtual_memory_bytes", "cpu_seconds", "open_fds", "max_fds", "threads")

    def __init__(self) -> None:
        self.resident_memory_bytes: int | None = None
        self.virtual_memory_bytes: int | None = None
        self.cpu_seconds: float | None = None
        self.open_fds: int | None = None
        self.max_fds: int | None = None
        self.threads: int | None = None


def _read_proc_stat(out: ProcessSample) -> bool:
    try:
        with open(f"{_PROC}/stat", "rb") as f:
            text = f.read()
    except OSError:
        return False
    # The command name (field 2) may hold spaces and parentheses: split after the last ')'.
    fields = text[text.rindex(b")") + 2 :].split()
    # fields[0] is field 3 of proc(5); field n is fields[n - 3].
    out.threads = int(fields[17])
    out.virtual_memory_bytes = int(fields[20])
    out.resident_memory_bytes = int(fields[21]) * os.sysconf("SC_PAGE_SIZE")
    return True


def _count_fds() -> int | None:
    for path in (f"{_PROC}/fd", "/dev/fd"):
        try:
            # listdir opens a descriptor of its own, which the listing includes.
            return len(os.listdir(path)) - 1
        except OSError:
            continue
    return None


def sample() -> ProcessSample:
    """Read the process's resource usage now."""
    out = ProcessSample()
    times = os.times()
    out.cpu_seconds = times.user + times.system
    if not _read_proc_stat(out):
        out.threads = threading.active_count()
        if resource is not None:
            peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
            # Linux and the BSDs report KiB, macOS bytes.
            out.resident_memory_bytes = peak if sys.platform == "darwin" else peak * 1024
    out.open_fds = _count_fds()
    if resource is not None:
        soft, _hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        if soft != resource.RLIM_INFINITY:
            out.max_fds = soft
    return out


class ProcessCollector:
    """A prometheus_client collector exposing ``runtime_process_*`` metrics."""

    def collect(self) -> Iterator[Metric]:
        s = sample()
        if s.resident_memory_bytes is not None:
            yield GaugeMetricFamily(
                "runtime_process_resident_memory_bytes", "Resident memory size in bytes", value=s.resident_memory_bytes
            )
        if s.virtual_memory_bytes is not None:
            yield GaugeMetricFamily(
                "runtime_process_virtual_memory_bytes", "Virtual memory size in bytes", value=s.virtual_memory_bytes
            )
        if s.cpu_seconds is not None:
            # CounterMetricFamily appends _total: exposed as runtime_process_cpu_seconds_total.
            yield CounterMetricFamily(
                "runtime_process_cpu_seconds", "Total user and system CPU time in seconds", value=s.cpu_seconds
            )
        if s.open_fds is not None:
            yield GaugeMetricFamily("runtime_process_open_fds", "Open file descriptors", value=s.open_fds)
        if s.max_fds is not None:
            yield GaugeMetricFamily("runtime_process_max_fds", "Limit on open file descriptors", value=s.max_fds)
        if s.threads is not None:
            yield GaugeMetricFamily("runtime_process_threads", "OS threads of the process", value=s.threads)
