"""Prometheus metrics in the text exposition format (version 0.0.4), written by hand: counters, gauges read
when scraped, and histograms with cumulative buckets."""

from __future__ import annotations

import threading
from typing import Callable, Iterable

from ..image_cache import ImageCache

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


def label_text(labels: dict[str, str]) -> str:
    if not labels:
        return ""
    escaped = (f'{k}="{str(v).replace(chr(92), chr(92) * 2).replace(chr(34), chr(92) + chr(34))}"'
               for k, v in sorted(labels.items()))
    return "{" + ",".join(escaped) + "}"


def number(value: float) -> str:
    return repr(float(value)) if value != int(value) else str(int(value))


class Counter:
    def __init__(self, name: str, help: str):
        self.name, self.help, self.kind = name, help, "counter"
        self.values: dict[tuple, float] = {}
        self.lock = threading.Lock()

    def inc(self, amount: float = 1.0, **labels: str) -> None:
        key = tuple(sorted(labels.items()))
        with self.lock:
            self.values[key] = self.values.get(key, 0.0) + amount

    def samples(self) -> Iterable[tuple[str, dict, float]]:
        with self.lock:
            items = list(self.values.items())
        if not items:
            yield self.name, {}, 0.0
        for key, value in items:
            yield self.name, dict(key), value


class Gauge:
    """A value read from `read()` at scrape time."""

    def __init__(self, name: str, help: str, read: Callable[[], float], kind: str = "gauge"):
        self.name, self.help, self.read, self.kind = name, help, read, kind

    def samples(self) -> Iterable[tuple[str, dict, float]]:
        yield self.name, {}, float(self.read())


class Histogram:
    def __init__(self, name: str, help: str, buckets: tuple[float, ...] = LATENCY_BUCKETS):
        self.name, self.help, self.kind = name, help, "histogram"
        self.buckets = buckets
        self.counts = [0] * len(buckets)
        self.sum, self.count = 0.0, 0
        self.lock = threading.Lock()

    def observe(self, value: float) -> None:
        with self.lock:
            for i, bound in enumerate(self.buckets):
                if value <= bound:
                    self.counts[i] += 1
            self.sum += value
            self.count += 1

    def samples(self) -> Iterable[tuple[str, dict, float]]:
        with self.lock:
            counts, total, count = list(self.counts), self.sum, self.count
        for bound, n in zip(self.buckets, counts):
            yield f"{self.name}_bucket", {"le": number(bound)}, n
        yield f"{self.name}_bucket", {"le": "+Inf"}, count
        yield f"{self.name}_sum", {}, total
        yield f"{self.name}_count", {}, count


class Registry:
    def __init__(self) -> None:
        self.metrics: list = []

    def add(self, metric):
        self.metrics.append(metric)
        return metric

    def render(self) -> str:
        lines = []
        for metric in self.metrics:
            lines.append(f"# HELP {metric.name} {metric.help}")
            lines.append(f"# TYPE {metric.name} {metric.kind}")
            lines.extend(f"{name}{label_text(labels)} {number(value)}" for name, labels, value in metric.samples())
        return "\n".join(lines) + "\n"


class ServerMetrics:
    """What the OpenAI server reports at /metrics."""

    def __init__(self, queue_depth: Callable[[], float], running: Callable[[], float], cache: ImageCache):
        r = self.registry = Registry()
        self.requests = r.add(Counter("aerie_requests_total", "HTTP requests by endpoint and status code."))
        self.prompt_tokens = r.add(Counter("aerie_prompt_tokens_total", "Prompt tokens (text and image) prefilled."))
        self.generation_tokens = r.add(Counter("aerie_generation_tokens_total", "Tokens generated."))
        self.latency = r.add(Histogram("aerie_request_duration_seconds",
                                       "Completion time (chat or text), from receiving the request to its last token."))
        self.first_token = r.add(Histogram("aerie_time_to_first_token_seconds",
                                           "From receiving a completion request (chat or text) to its first text."))
        self.queue_time = r.add(Histogram("aerie_queue_time_seconds",
                                          "From receiving a completion request (chat or text) to its prompt being admitted."))
        r.add(Gauge("aerie_queue_depth", "Requests waiting for a decoder slot.", queue_depth))
        r.add(Gauge("aerie_requests_running", "Requests holding a decoder slot.", running))
        r.add(Gauge("aerie_image_cache_hits_total", "Images whose embeddings came from the cache.",
                    lambda: cache.hits, "counter"))
        r.add(Gauge("aerie_image_cache_misses_total", "Images run through the vision engine.",
                    lambda: cache.misses, "counter"))
        r.add(Gauge("aerie_image_cache_bytes", "Bytes of image embeddings held by the cache.", lambda: cache.bytes))

    def render(self) -> str:
        return self.registry.render()
