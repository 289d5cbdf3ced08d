"""The load generator: `python -m bench.loadgen SPEC.json`, run in its own process.

A lean HTTP/1.1 keep-alive client on asyncio streams (requests are built as bytes, responses
are parsed just enough to find their end), so one core of it outruns one core of an aiohttp
server: a Python client on aiohttp's own client stack would be the bottleneck, not the server
under test. Two modes:

- closed loop (`rate: 0`): every connection sends its next request as soon as the previous
  answer is in: saturation throughput and its latency.
- fixed rate: request i is due at t0 + i/rate whichever connection is free; latency counts from
  that due time, so a stalled server shows up fully (no coordinated omission).

Prints one JSON object with the figures on stdout.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import math
import resource
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

HOST = "127.0.0.1"
REQUEST_TIMEOUT = 120.0


@dataclass
class Spec:
    port: int
    connections: int = 32
    rate: float = 0.0
    """0: closed loop; else requests per second."""
    duration: float = 0.0
    """Seconds measured after the warm-up; 0 = until the source or max_requests runs out."""
    warmup: float = 0.0
    max_requests: int = 0
    prebuild: int = 150_000
    """Requests encoded before the clock starts (the rest, if any, while running), so the
    generator spends its core on sending, not on building JSON."""
    grace: float = 10.0
    """Fixed rate only: requests not yet sent this long after the window are given up (and
    counted as `unsent`, with the latency they had reached by then)."""
    source: dict[str, Any] = field(default_factory=dict)


def _request(port: int, path: str, body: bytes, token: str | None) -> bytes:
    auth = f"Authorization: Bearer {token}\r\n" if token else ""
    head = (
        f"POST {path} HTTP/1.1\r\nHost: {HOST}:{port}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n{auth}\r\n"
    )
    return head.encode() + body


def messages(port: int, source: dict[str, Any]) -> Iterator[bytes]:
    """POST /api/v1/messages with distinct numbers and texts (the flood guard stays quiet)."""
    base = int(source.get("base", 0))
    per = int(source.get("recipients", 1))
    tag = str(source.get("tag", "bench"))
    send_at = source.get("send_at")
    token = source.get("token")
    index = 0
    while True:
        first = base + index * per
        body: dict[str, Any] = {
            "to": [f"+8869{(first + k) % 100_000_000:08d}" for k in range(per)],
            "text": f"goipd bench {tag} #{index}: your code is {index % 1_000_000:06d}",
        }
        if send_at:
            body["send_at"] = send_at
        yield _request(port, "/api/v1/messages", json.dumps(body).encode(), token)
        index += 1


def from_file(port: int, source: dict[str, Any]) -> Iterator[bytes]:
    """Each item of a JSON list ({"path", "body"}) once, in order (push reports)."""
    items = json.loads(Path(source["path"]).read_text())
    for item in items:
        body = json.dumps(item["body"], ensure_ascii=False).encode()
        yield _request(port, item["path"], body, source.get("token"))


SOURCES = {"messages": messages, "file": from_file}


class Run:
    def __init__(self, spec: Spec) -> None:
        self.spec = spec
        source = SOURCES[spec.source["kind"]](spec.port, spec.source)
        wanted = min(spec.max_requests or spec.prebuild, spec.prebuild)
        self.requests = itertools.chain(list(itertools.islice(source, wanted)), source)
        self.issued = 0
        self.records: list[tuple[float, float, int]] = []
        self.errors = 0
        self.error_samples: list[str] = []
        self.t0 = 0.0
        self.end = math.inf
        self.give_up = math.inf

    def next_request(self) -> tuple[int, bytes] | None:
        if self.spec.max_requests and self.issued >= self.spec.max_requests:
            return None
        if self.spec.rate == 0 and time.perf_counter() >= self.end:
            return None
        if self.spec.rate and self.t0 + self.issued / self.spec.rate >= self.end:
            return None
        if time.perf_counter() > self.give_up:
            return None
        request = next(self.requests, None)
        if request is None:
            return None
        self.issued += 1
        return self.issued - 1, request

    async def worker(self) -> None:
        reader, writer = await asyncio.open_connection(HOST, self.spec.port)
        try:
            while (item := self.next_request()) is not None:
                index, request = item
                if self.spec.rate:
                    start = self.t0 + index / self.spec.rate
                    delay = start - time.perf_counter()
                    if delay > 0:
                        await asyncio.sleep(delay)
                else:
                    start = time.perf_counter()
                try:
                    writer.write(request)
                    status, body, close = await asyncio.wait_for(
                        read_response(reader), REQUEST_TIMEOUT
                    )
                except (OSError, asyncio.IncompleteReadError, ValueError, TimeoutError) as exc:
                    self.errors += 1
                    self._sample(f"{exc.__class__.__name__}: {exc}")
                    writer.close()
                    reader, writer = await asyncio.open_connection(HOST, self.spec.port)
                    continue
                self.records.append((start, time.perf_counter(), status))
                if status >= 300:
                    self._sample(f"HTTP {status}: {body[:300].decode(errors='replace')}")
                if close:
                    writer.close()
                    reader, writer = await asyncio.open_connection(HOST, self.spec.port)
        finally:
            writer.close()

    def _sample(self, text: str) -> None:
        if len(self.error_samples) < 3:
            self.error_samples.append(text)

    async def run(self) -> dict[str, Any]:
        self.t0 = time.perf_counter()
        if self.spec.duration:
            self.end = self.t0 + self.spec.warmup + self.spec.duration
            if self.spec.rate:
                self.give_up = self.end + self.spec.grace
        cpu0 = _cpu()
        await asyncio.gather(*(self.worker() for _ in range(self.spec.connections)))
        finished = time.perf_counter()
        cpu = _cpu() - cpu0
        return self.summary(finished, cpu)

    def summary(self, finished: float, cpu: float) -> dict[str, Any]:
        unsent: list[float] = []
        if self.spec.duration:
            lo = self.t0 + self.spec.warmup
            hi = self.t0 + self.spec.warmup + self.spec.duration
            elapsed = self.spec.duration
            if self.spec.rate:
                # Fixed rate: every request due in the window counts, however late it ended;
                # one never sent counts with the latency it had when the run gave up.
                kept = [r for r in self.records if lo <= r[0] < hi]
                elapsed = max([hi, *(r[1] for r in kept)]) - lo
                planned = math.ceil((self.end - self.t0) * self.spec.rate)
                for index in range(self.issued, planned):
                    due = self.t0 + index / self.spec.rate
                    if lo <= due < hi:
                        unsent.append((finished - due) * 1000)
            else:
                kept = [r for r in self.records if r[0] >= lo and r[1] <= hi]
        else:
            kept = self.records
            first = min((r[0] for r in kept), default=self.t0)
            last = max((r[1] for r in kept), default=finished)
            elapsed = max(last - first, 1e-9)
        latencies = sorted([(end - start) * 1000 for start, end, _ in kept] + unsent)
        statuses: dict[str, int] = {}
        for _, _, status in kept:
            statuses[str(status)] = statuses.get(str(status), 0) + 1
        ok = sum(count for status, count in statuses.items() if status.startswith("2"))
        return {
            "total": len(self.records),
            "total_ok": sum(1 for _, _, status in self.records if 200 <= status < 300),
            "requests": len(kept),
            "unsent": len(unsent),
            "ok": ok,
            "statuses": statuses,
            "errors": self.errors,
            "error_samples": self.error_samples,
            "elapsed": elapsed,
            "rps": len(kept) / elapsed if elapsed else 0.0,
            "mean_ms": sum(latencies) / len(latencies) if latencies else 0.0,
            "p50_ms": _pct(latencies, 50),
            "p90_ms": _pct(latencies, 90),
            "p99_ms": _pct(latencies, 99),
            "max_ms": latencies[-1] if latencies else 0.0,
            "cpu": cpu / max(finished - self.t0, 1e-9),
        }


async def read_response(reader: asyncio.StreamReader) -> tuple[int, bytes, bool]:
    head = await reader.readuntil(b"\r\n\r\n")
    status = int(head[9:12])
    length = 0
    chunked = close = False
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        name = name.strip().lower()
        if name == b"content-length":
            length = int(value)
        elif name == b"transfer-encoding":
            chunked = b"chunked" in value.lower()
        elif name == b"connection":
            close = b"close" in value.lower()
    if not chunked:
        return status, await reader.readexactly(length) if length else b"", close
    parts = []
    while True:
        size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
        parts.append((await reader.readexactly(size + 2))[:size])
        if size == 0:
            return status, b"".join(parts), close


def _pct(ordered: list[float], pct: float) -> float:
    if not ordered:
        return 0.0
    return ordered[min(max(math.ceil(pct / 100 * len(ordered)), 1), len(ordered)) - 1]


def _cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def main(argv: list[str]) -> int:
    spec = Spec(**json.loads(Path(argv[0]).read_text()))
    print(json.dumps(asyncio.run(Run(spec).run())), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
