"""`python -m bench.routebench --servers N --lines M --iterations K`: Router.choose, in-process.

Builds a LineRegistry the way the poller does (apply_poll with parsed line statuses) and times
routing decisions with no I/O in the way. Each figure is the median of five timed loops.
Prints one JSON object (microseconds per operation).
"""

from __future__ import annotations

import argparse
import io
import json
import statistics
import time
from collections.abc import Callable

from goipd.config import RoutingSettings
from goipd.dispatch.routing import Router
from goipd.fleet.registry import LineRegistry
from goipd.runtime.logs import configure_logging
from goipd.upstream.goip import LineStatus

REPEATS = 5
NUMBER = "+886912345678"


def fleet(servers: int, lines: int, logged_out_every: int = 0) -> LineRegistry:
    registry = LineRegistry([f"s{index + 1:04d}" for index in range(servers)])
    now = time.time()
    for name in registry.servers:
        statuses = [
            LineStatus(
                line_id=f"G{100 + index}",
                online=True,
                registered=not (logged_out_every and index % logged_out_every == 0),
                reg_raw="LOGIN",
                remain_sms=None,
                day_remain_sms=None,
            )
            for index in range(lines)
        ]
        registry.apply_poll(name, statuses, now)
    return registry


def router(registry: LineRegistry) -> Router:
    return Router(registry, RoutingSettings(line_rate_per_minute=600), (), {})


def timed(iterations: int, loop: Callable[[int], None]) -> float:
    """Median microseconds per iteration over REPEATS runs of `loop(iterations)`."""
    samples = []
    for _ in range(REPEATS):
        started = time.perf_counter_ns()
        loop(iterations)
        samples.append((time.perf_counter_ns() - started) / iterations / 1000)
    return statistics.median(samples)


def choose_only(r: Router) -> Callable[[int], None]:
    targets = r.targets_for(NUMBER)
    now = time.time()

    def loop(n: int) -> None:
        choose = r.choose
        for _ in range(n):
            choose(targets, now)

    return loop


def _step(r: Router) -> float:
    """Clock advance per send that keeps every usable line under its send rate."""
    usable = sum(1 for line in r.registry.lines() if line.registered) or 1
    return 1.2 * 60 / (usable * r.settings.line_rate_per_minute)


def choose_and_record(r: Router) -> Callable[[int], None]:
    targets = r.targets_for(NUMBER)
    clock = [time.time()]
    step = _step(r)

    def loop(n: int) -> None:
        choose, record = r.choose, r.record_use
        now = clock[0]
        for _ in range(n):
            choice = choose(targets, now)
            assert choice is not None
            record(choice, 1, now)
            now += step
        clock[0] = now

    return loop


def per_recipient(r: Router) -> Callable[[int], None]:
    """What dispatch does per recipient: rules for the number, choose, record the use."""
    clock = [time.time()]
    step = _step(r)

    def loop(n: int) -> None:
        choose, record, targets_for = r.choose, r.record_use, r.targets_for
        now = clock[0]
        for index in range(n):
            choice = choose(targets_for(f"+8869{index % 100_000_000:08d}"), now)
            assert choice is not None
            record(choice, 1, now)
            now += step
        clock[0] = now

    return loop


def dict_lookup(registry: LineRegistry) -> Callable[[int], None]:
    keys = [(line.server, line.line_id) for line in registry.lines()]
    table = {key: None for key in keys}
    count = len(keys)

    def loop(n: int) -> None:
        for index in range(n):
            _ = table[keys[index % count]]

    return loop


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.routebench")
    parser.add_argument("--servers", type=int, default=1000)
    parser.add_argument("--lines", type=int, default=32)
    parser.add_argument("--iterations", type=int, default=200_000)
    args = parser.parse_args()
    # Line transitions are logged; a benchmark of decisions needs none of them.
    configure_logging("error", "json", stream=io.StringIO())
    n = args.iterations
    big = fleet(args.servers, args.lines)
    small = fleet(1, args.lines)
    half = fleet(args.servers, args.lines, logged_out_every=2)
    started = time.perf_counter()
    figures = {
        "lines": sum(1 for _ in big.lines()),
        "choose_us": timed(n, choose_only(router(big))),
        "choose_record_us": timed(n, choose_and_record(router(big))),
        "per_recipient_us": timed(n, per_recipient(router(big))),
        "half_logged_out_us": timed(n, choose_and_record(router(half))),
        "small_choose_us": timed(n, choose_only(router(small))),
        "small_choose_record_us": timed(n, choose_and_record(router(small))),
        "dict_lookup_us": timed(n, dict_lookup(big)),
    }
    registry = fleet(args.servers, args.lines)
    first = router(registry)
    sync_started = time.perf_counter_ns()
    first.choose(first.targets_for(NUMBER), time.time())
    figures["first_choose_after_poll_us"] = (time.perf_counter_ns() - sync_started) / 1000
    # One line more on one server, as a poll reports it: the router catches up with that.
    name = next(iter(registry.servers))
    statuses = [
        LineStatus(line.line_id, True, True, "LOGIN", None, None)
        for line in registry.servers[name].lines.values()
    ]
    statuses.append(LineStatus("G-new", True, True, "LOGIN", None, None))
    registry.apply_poll(name, statuses, time.time())
    sync_started = time.perf_counter_ns()
    first.choose(first.targets_for(NUMBER), time.time())
    figures["choose_after_line_appeared_us"] = (time.perf_counter_ns() - sync_started) / 1000
    figures["seconds"] = time.perf_counter() - started
    print(json.dumps(figures), flush=True)


if __name__ == "__main__":
    main()
