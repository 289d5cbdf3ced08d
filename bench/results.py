"""Figures of one scenario: the console table and its section of bench/RESULTS.md."""

from __future__ import annotations

import datetime as dt
import re
from dataclasses import dataclass, field
from pathlib import Path

from bench.common import goipd_version, loadavg, machine

DEFAULT_RESULTS = Path(__file__).resolve().parent / "RESULTS.md"
HEADER = """# goipd benchmarks

Produced by `python -m bench` (all scenarios, under 10 minutes) or `python -m bench --scenario N`
(`--quick`: tiny sizes, written here only if `--results` names this file; `--profile DIR`: py-spy
profiles of goipd's measured phases). Each run replaces the sections of the scenarios it ran
and leaves the rest of this file alone: notes outside the `<!-- bench:N start/end -->` markers
survive.

How the figures are taken:

- goipd (`python -m goipd run`), the baselines, the simulated SMS Servers
  (`bench/simulator.py`: goipd's own simulator plus a record of poll times) and the load
  generator (`bench/loadgen.py`) each run as their own process on 127.0.0.1. goipd, and the
  baseline it is compared with, is pinned to one core; the load generator, the simulator and
  the harness to the other (`os.sched_setaffinity`).
- Every baseline is measured **side by side, in the same run** as goipd: this machine is
  shared (other test suites often run on it at the same time), so absolute figures move from
  run to run while ratios much less. Scenarios 1 and 2: a bare aiohttp handler
  (`bench/baseline.py`) right before and right after goipd, on goipd's core, with the same kind
  of requests; goipd is compared with the mean of the two. Beside them the durable floor
  (`bench/baseline.py --store`): the same handler writing each request to SQLite through a
  group-committing thread before it answers, i.e. what storing alone costs. Scenario 3: a
  bare client on goipd's core making the same sendsms calls straight to the simulator.
  Scenario 4: the same goipd with no SMS Server. Scenario 5: the same load without scraping.
  Scenario 6: the same decision over one server of 32 lines.
- "load" is /proc/loadavg when the scenario started; a high value means a noisy neighbour.
- The smoke test (`tests/system/test_bench_smoke.py`) runs every scenario `--quick` into a temporary
  file and asserts no performance at all.
"""


@dataclass
class Row:
    metric: str
    value: str
    baseline: str = "-"
    ratio: str = "-"
    target: str = "-"
    met: bool | None = None
    """None: informational, no target."""

    @property
    def verdict(self) -> str:
        return "" if self.met is None else ("met" if self.met else "MISSED")


@dataclass
class ScenarioResult:
    number: int
    title: str
    rows: list[Row] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    params: dict[str, str] = field(default_factory=dict)
    started: dt.datetime = field(default_factory=lambda: dt.datetime.now().astimezone())
    load: str = field(default_factory=loadavg)
    version: str = field(default_factory=goipd_version)
    seconds: float = 0.0
    quick: bool = False

    def add(self, row: Row) -> Row:
        self.rows.append(row)
        return row

    @property
    def missed(self) -> list[Row]:
        return [row for row in self.rows if row.met is False]

    def figures(self) -> dict[str, str]:
        return {row.metric: row.value for row in self.rows}

    def table(self) -> list[list[str]]:
        head = ["metric", "goipd", "baseline", "ratio", "target", ""]
        body = [[r.metric, r.value, r.baseline, r.ratio, r.target, r.verdict] for r in self.rows]
        return [head, *body]

    def console(self) -> str:
        rows = self.table()
        widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
        lines = [f"== {self.number}. {self.title} ({self.seconds:.0f}s, load {self.load})"]
        for index, row in enumerate(rows):
            lines.append(
                "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True))
            )
            if index == 0:
                lines.append("  ".join("-" * width for width in widths))
        lines.extend(f"  * {note}" for note in self.notes)
        return "\n".join(lines)

    def markdown(self) -> str:
        info = machine()
        when = self.started.strftime("%Y-%m-%d %H:%M %Z")
        lines = [
            f"## {self.number}. {self.title}" + (" (--quick sizes)" if self.quick else ""),
            "",
            f"{when}; {info['cores']} cores, {info['cpu']}, Python {info['python']}, "
            f"Linux {info['kernel']}; load {self.load}; took {self.seconds:.0f}s; "
            f"goipd {self.version}.",
            "",
        ]
        if self.params:
            lines.append(
                "Parameters: " + ", ".join(f"{key} {value}" for key, value in self.params.items())
            )
            lines.append("")
        rows = self.table()
        lines.append("| " + " | ".join(rows[0]) + " |")
        lines.append("|" + "---|" * len(rows[0]))
        lines.extend("| " + " | ".join(_cell(c) for c in row) + " |" for row in rows[1:])
        if self.notes:
            lines.append("")
            lines.extend(f"- {note}" for note in self.notes)
        return "\n".join(lines)


def _cell(text: str) -> str:
    return text.replace("|", "\\|")


def _markers(number: int) -> tuple[str, str]:
    return f"<!-- bench:{number} start -->", f"<!-- bench:{number} end -->"


def update_results(path: Path, result: ScenarioResult) -> None:
    """Replace this scenario's section of the results file, or add it in scenario order."""
    text = path.read_text() if path.exists() else HEADER
    start, end = _markers(result.number)
    section = f"{start}\n{result.markdown()}\n{end}"
    pattern = re.compile(re.escape(start) + r".*?" + re.escape(end), re.DOTALL)
    if pattern.search(text):
        text = pattern.sub(lambda _: section, text)
    else:
        later = [
            match
            for n in range(result.number + 1, 10)
            if (match := re.search(re.escape(_markers(n)[0]), text))
        ]
        if later:
            at = later[0].start()
            text = text[:at] + section + "\n\n" + text[at:]
        else:
            text = text.rstrip("\n") + "\n\n" + section + "\n"
    path.write_text(text)
