"""Metrics: one prometheus_client registry per runner, plus the runtime's own counters.

User metrics are real prometheus_client objects registered in the runner's registry.
The runtime's counters (tasks, network, storage) are plain integers exposed through a
collector: incrementing a Python int on the hot path costs a fraction of a labelled
prometheus_client child lookup, and the text output is identical.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.metrics import MetricWrapperBase
from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily, Metric

from .arguments import join_label

_METRIC_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")
_CREATED_TYPES = {"counter", "histogram", "summary", "gaugehistogram"}


class RuntimeCounters:
    """Counters every runtime keeps; exposed as ``runtime_*`` metrics."""

    def __init__(self) -> None:
        self.tasks_spawned: dict[str, int] = {}
        self.tasks_running: dict[str, int] = {}
        self.network = {
            "inbound_connections": 0,
            "outbound_connections": 0,
            "bytes_sent": 0,
            "bytes_received": 0,
        }
        self.storage = {
            "open_blobs": 0,
            "reads": 0,
            "bytes_read": 0,
            "writes": 0,
            "bytes_written": 0,
            "syncs": 0,
        }

    def describe(self) -> list[Metric]:
        """The families ``collect`` yields, without samples: what the registry asks for to
        check names when the counters are registered (else it would collect, once per run)."""
        global _DESCRIPTION
        if _DESCRIPTION is None:
            _DESCRIPTION = [Metric(m.name, m.documentation, m.type) for m in RuntimeCounters().collect()]
        return _DESCRIPTION

    def collect(self) -> Iterator[Metric]:
        spawned = CounterMetricFamily("runtime_tasks_spawned", "Total tasks spawned, by task name", labels=["name"])
        for name in sorted(self.tasks_spawned):
            spawned.add_metric([name], self.tasks_spawned[name])
        yield spawned
        running = GaugeMetricFamily("runtime_tasks_running", "Tasks currently running, by task name", labels=["name"])
        for name in sorted(self.tasks_running):
            running.add_metric([name], self.tasks_running[name])
        yield running
        yield CounterMetricFamily("runtime_inbound_connections", "Connections accepted", value=self.network["inbound_connections"])
        yield CounterMetricFamily("runtime_outbound_connections", "Connections dialed", value=self.network["outbound_connections"])
        yield CounterMetricFamily("runtime_bandwidth_sent_bytes", "Bytes sent over the network", value=self.network["bytes_sent"])
        yield CounterMetricFamily("runtime_bandwidth_received_bytes", "Bytes received over the network", value=self.network["bytes_received"])
        yield GaugeMetricFamily("runtime_open_blobs", "Blobs currently open", value=self.storage["open_blobs"])
        yield CounterMetricFamily("runtime_storage_reads", "Blob reads", value=self.storage["reads"])
        yield CounterMetricFamily("runtime_storage_read_bytes", "Bytes read from blobs", value=self.storage["bytes_read"])
        yield CounterMetricFamily("runtime_storage_writes", "Blob writes", value=self.storage["writes"])
        yield CounterMetricFamily("runtime_storage_written_bytes", "Bytes written to blobs", value=self.storage["bytes_written"])
        yield CounterMetricFamily("runtime_storage_syncs", "Blob syncs", value=self.storage["syncs"])


_DESCRIPTION: list[Metric] | None = None


class _WithoutCreated:
    """A view of a registry that drops wall-clock ``*_created`` samples."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self._registry = registry

    def collect(self) -> Iterable[Metric]:
        for metric in self._registry.collect():
            if metric.type in _CREATED_TYPES:
                created = metric.name + "_created"
                metric.samples = [s for s in metric.samples if s.name != created]
            yield metric


class Metrics:
    """The registry of one runner."""

    def __init__(self, *, deterministic: bool, on_register: Callable[[str, str], None] | None = None) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.counters = RuntimeCounters()
        self.registry.register(self.counters)
        self._deterministic = deterministic
        self._on_register = on_register
        self._metrics: dict[str, Any] = {}

    def register(self, prefix: str, name: str, help: str, kind: type, **kwargs: Any) -> Any:
        if not isinstance(name, str):
            raise TypeError(f"metric name must be a str, got {type(name).__name__} {name!r}")
        if not _METRIC_NAME.match(name):
            raise ValueError(f"metric name {name!r} is invalid: names match [A-Za-z_][A-Za-z0-9_]*")
        if not isinstance(help, str):
            raise TypeError(f"metric help must be a str, got {type(help).__name__} {help!r}")
        if not isinstance(kind, type) or not issubclass(kind, MetricWrapperBase) or kind is MetricWrapperBase:
            what = kind.__name__ if isinstance(kind, type) else f"{type(kind).__name__} {kind!r}"
            raise TypeError(
                f"metric kind must be a prometheus_client metric class (Counter, Gauge, Histogram, Summary, "
                f"Info, Enum or a subclass), got {what}"
            )
        full = join_label(prefix, name)
        if full == "runtime" or full.startswith("runtime_"):
            raise ValueError(f"metric name {full!r} is reserved: the runtime_ prefix belongs to the runtime")
        existing = self._metrics.get(full)
        if existing is not None:
            if type(existing) is not kind:
                raise ValueError(
                    f"metric {full!r} is already registered as {type(existing).__name__}, not {kind.__name__}"
                )
            return existing
        metric = kind(full, help, registry=self.registry, **kwargs)
        self._metrics[full] = metric
        if self._on_register is not None:
            self._on_register(full, kind.__name__)
        return metric

    def encode(self) -> str:
        source: Any = _WithoutCreated(self.registry) if self._deterministic else self.registry
        return generate_latest(source).decode()
