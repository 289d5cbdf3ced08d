"""Prometheus text exposition without prometheus_client's per-sample overhead.

`generate_latest` builds a Sample tuple and a label dict, sorts the labels and formats the value
of every sample on every scrape: about 13 us a sample, seconds for a fleet of 32,000 lines, all
of it on the event loop. Here every labelled child of a Counter, Gauge or Histogram keeps its
rendered text and is formatted again only when its value changed. The output is byte for byte
what `generate_latest` writes (tests/test_perf_fixes.py compares the two); anything this module
does not know how to read directly (custom collectors, Summary, Info, Enum, function gauges)
goes through `generate_latest` itself.

Reading children relies on prometheus_client internals (`_metrics`, `_value`, `_buckets`) that
have been stable for years; the comparison test fails first if an upgrade changes them.
"""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import os
import threading
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import prometheus_client.metrics
from prometheus_client import Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import Metric
from prometheus_client.registry import Collector, CollectorRegistry
from prometheus_client.utils import floatToGoString

__all__ = [
    "OrderedRegistry",
    "RegistryText",
    "compress",
    "count_text",
    "escape_label",
    "go_float",
    "header",
    "slow_text",
]

go_float: Callable[[float], str] = floatToGoString
"""A sample value as generate_latest writes it (`1.0`, `1.7e+09`, `+Inf`)."""


def count_text(value: int) -> str:
    """go_float(value) for an integer, without its float round trip where that is plain."""
    # Go (and so generate_latest) switches to an exponent from seven digits on.
    return f"{value}.0" if 0 <= value < 1_000_000 else go_float(value)


def escape_label(value: str) -> str:
    return value.replace("\\", r"\\").replace("\n", r"\n").replace('"', r"\"")


def header(name: str, kind: str, documentation: str) -> str:
    """`# HELP` and `# TYPE` of a family; `name` as exposed (counters end in `_total`)."""
    doc = documentation.replace("\\", r"\\").replace("\n", r"\n")
    return f"# HELP {name} {doc}\n# TYPE {name} {kind}\n"


def label_text(pairs: Iterable[tuple[str, str]]) -> str:
    """`{a="1",b="2"}` with names sorted as generate_latest sorts them; "" for no labels."""
    inner = ",".join(f'{name}="{escape_label(value)}"' for name, value in sorted(pairs))
    return f"{{{inner}}}" if inner else ""


class TextCollector(Collector, ABC):
    """A collector that also writes its exposition text itself, in parts (None between parts:
    where a scrape rendered in slices may yield to the event loop)."""

    @abstractmethod
    def text_parts(self) -> Iterator[bytes | None]: ...


class OrderedRegistry(CollectorRegistry):
    """A CollectorRegistry that can list its collectors in registration order (the order
    generate_latest writes them in)."""

    def __init__(self) -> None:
        super().__init__()
        self._ordered: list[Collector] = []
        self._ordered_lock = threading.Lock()

    def register(self, collector: Collector) -> None:
        super().register(collector)
        with self._ordered_lock:
            self._ordered.append(collector)

    def unregister(self, collector: Collector) -> None:
        super().unregister(collector)
        with self._ordered_lock:
            self._ordered.remove(collector)

    def collectors(self) -> list[Collector]:
        with self._ordered_lock:
            return list(self._ordered)


class _One:
    """One collector, shaped like a registry for generate_latest."""

    def __init__(self, collector: Collector) -> None:
        self._collector = collector

    def collect(self) -> Iterable[Metric]:
        return self._collector.collect()


def slow_text(collector: Collector) -> str:
    return generate_latest(_One(collector)).decode("utf-8")


class _MetricText:
    """The rendered children of one Counter, Gauge or Histogram, reused while unchanged."""

    def __init__(self, metric: Counter | Gauge | Histogram) -> None:
        self.metric = metric
        self.kind: str = metric._type
        name: str = metric._name
        self.sample = f"{name}_total" if self.kind == "counter" else name
        self.header = header(self.sample, self.kind, metric._documentation)
        self.labelnames: tuple[str, ...] = tuple(metric._labelnames)
        self.bounds: tuple[str, ...] = ()
        if isinstance(metric, Histogram):
            self.bounds = tuple(go_float(b) for b in metric._upper_bounds)
        self.children: dict[tuple[str, ...], tuple[Any, str]] = {}

    def render(self) -> str:
        metric: Any = self.metric
        parts = [self.header]
        if self.labelnames and not metric._labelvalues:
            # Iterated in place, under the metric's lock, rather than copied: a copy is a tuple
            # per child alive for the whole step, enough for the garbage collector to promote
            # thousands of them to the oldest generation per scrape (and then run a full
            # collection of the heap every few dozen scrapes).
            with metric._lock:
                self.children = self._render_children(metric._metrics.items(), parts)
        else:
            self.children = self._render_children((((), metric),), parts)
        return "".join(parts)

    def _render_children(
        self, children: Iterable[tuple[tuple[str, ...], Any]], parts: list[str]
    ) -> dict[tuple[str, ...], tuple[Any, str]]:
        previous, current = self.children, {}
        histogram = self.kind == "histogram"
        for labelvalues, child in children:
            if histogram:
                value: Any = (tuple([b.get() for b in child._buckets]), child._sum.get())
            else:
                value = child._value.get()
            cached = previous.get(labelvalues)
            if cached is None or cached[0] != value:
                text = (
                    self._histogram(labelvalues, *value)
                    if histogram
                    else f"{self.sample}{self._labels(labelvalues)} {go_float(value)}\n"
                )
                cached = (value, text)
            current[labelvalues] = cached
            parts.append(cached[1])
        return current

    def _labels(self, values: Sequence[str], extra: tuple[str, str] | None = None) -> str:
        pairs = list(zip(self.labelnames, values, strict=True))
        if extra is not None:
            pairs.append(extra)
        return label_text(pairs)

    def _histogram(self, values: Sequence[str], buckets: Sequence[float], total: float) -> str:
        lines = []
        acc = 0.0
        for bound, count in zip(self.bounds, buckets, strict=True):
            acc += count
            labels = self._labels(values, ("le", bound))
            lines.append(f"{self.sample}_bucket{labels} {go_float(acc)}\n")
        plain = self._labels(values)
        lines.append(f"{self.sample}_count{plain} {go_float(acc)}\n")
        lines.append(f"{self.sample}_sum{plain} {go_float(total)}\n")
        return "".join(lines)


def _fast(collector: Collector) -> bool:
    if type(collector) not in (Counter, Gauge, Histogram):
        return False  # subclasses may render differently: leave them to generate_latest
    if prometheus_client.metrics._use_created and not isinstance(collector, Gauge):
        return False  # `_created` samples are not rendered here
    metric: Any = collector
    if isinstance(collector, Histogram) and metric._upper_bounds[0] < 0:
        return False  # no `_sum` sample then
    if isinstance(collector, Gauge):
        # set_function() replaces the child's sampling: its value is not in `_value`.
        if metric._labelnames:
            with metric._lock:
                children = list(metric._metrics.values())
        else:
            children = [metric]
        if any("_child_samples" in vars(child) for child in children):
            return False
    return True


class RegistryText:
    """Renders an OrderedRegistry like generate_latest, remembering each child's text."""

    def __init__(self, registry: OrderedRegistry) -> None:
        self.registry = registry
        self._texts: dict[int, _MetricText] = {}

    def render_parts(self) -> Iterable[tuple[Collector, str | None]]:
        """(collector, its text) in registry order; None where the collector must render
        itself. One step per collector so an async caller can yield between them."""
        seen: dict[int, _MetricText] = {}
        for collector in self.registry.collectors():
            if not isinstance(collector, Counter | Gauge | Histogram):
                yield collector, None
                continue
            if not _fast(collector):
                yield collector, slow_text(collector)
                continue
            text = self._texts.get(id(collector))
            if text is None or text.metric is not collector:
                text = _MetricText(collector)
            seen[id(collector)] = text
            yield collector, text.render()
        self._texts = seen


GZIP_LEVEL = 1
"""Level 1 is 4x faster than 6 on exposition text and only 20% larger."""
BACKGROUND_NICE = 5
_compressor: ThreadPoolExecutor | None = None


def _lower_priority() -> None:
    # Linux schedules threads one by one: where this one and the event loop's thread want the
    # same core, the loop gets three times its share, so the scrape waits, not the API.
    with contextlib.suppress(OSError, AttributeError):
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), BACKGROUND_NICE)


async def compress(body: bytes) -> bytes:
    """gzip `body` in a low-priority thread (zlib releases the GIL while it works): 18 MB of
    exposition text take ~50 ms of CPU."""
    global _compressor
    if _compressor is None:
        _compressor = ThreadPoolExecutor(
            1, thread_name_prefix="metrics-gzip", initializer=_lower_priority
        )
    loop = asyncio.get_running_loop()
    return await loop.run_in_executor(_compressor, _gzip, body)


def _gzip(body: bytes) -> bytes:
    return gzip.compress(body, GZIP_LEVEL, mtime=0)
