"""Route choice: destination → ordered route list → the line (or cloud provider) to use now.

No I/O: decisions are a function of the line registry, the rules and the router's own memory of
recent sends (per-line LRU order, send-rate windows). Fast enough to run per recipient: lines are
kept in least-recently-used order, so a choice looks at the first few lines, not all of them.
"""

from __future__ import annotations

import functools
from collections import OrderedDict, deque
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass

import phonenumbers

from goipd.config import RouteRule, RouteTarget, RoutingSettings, Server
from goipd.fleet.registry import Line, LineRegistry, LineState
from goipd.ledger.shared import ProviderDisable
from goipd.model import whole_server
from goipd.upstream.goip import TextParts

RATE_WINDOW = 60.0
ANY_SERVER = "*"


DEFAULT_TARGETS = (RouteTarget(server=ANY_SERVER),)
_Lru = OrderedDict[tuple[str, str], None]


@dataclass(frozen=True, slots=True)
class LineChoice:
    server: str
    line: str | None
    """None: the SMS Server picks (carrier group without a configured line map)."""
    provider: str | None
    capacity: int
    """Recipients this choice may take now (send-rate and quota bound)."""
    parts: int = 1
    """Quota each recipient takes: the text's parts as this SMS Server counts them."""

    @property
    def key(self) -> str:
        return f"{self.server}/{self.line}" if self.line else f"{self.server}[{self.provider}]"


@dataclass(frozen=True, slots=True)
class CloudChoice:
    provider: str
    capacity: int

    @property
    def key(self) -> str:
        return f"cloud:{self.provider}"


Choice = LineChoice | CloudChoice


@functools.lru_cache(maxsize=65536)
def region_of(number: str) -> str | None:
    try:
        return phonenumbers.region_code_for_number(phonenumbers.parse(number, None))
    except phonenumbers.NumberParseException:
        return None


def match_rule(rules: Sequence[RouteRule], number: str) -> tuple[RouteTarget, ...]:
    """The `via` list of the first rule that matches; DEFAULT_TARGETS if none does."""
    for rule in rules:
        match = rule.match
        if not match.prefix and not match.country:
            return rule.via
        if any(number.startswith(prefix) for prefix in match.prefix):
            return rule.via
        if match.country and region_of(number) in match.country:
            return rule.via
    return DEFAULT_TARGETS if not rules else ()


class Router:
    def __init__(
        self,
        registry: LineRegistry,
        settings: RoutingSettings,
        rules: Sequence[RouteRule],
        servers: Mapping[str, Server],
        clouds: Collection[str] = (),
        probes: Callable[[str], bool] = lambda _name: True,
    ) -> None:
        self.registry = registry
        self.settings = settings
        self.rules = tuple(rules)
        self.servers = dict(servers)
        self.clouds = frozenset(clouds)
        self.probes = probes
        """Whether this instance makes the probe sends of a disabled provider: the one holding
        its `cloud:<provider>` lease does, so instances sharing the disable (through the
        ledger, goipd/dispatch/disables.py) do not all probe at once."""
        self.on_cloud_change: Callable[[str], None] = lambda _name: None
        """Called when this router disables a provider (again, after a refused probe) or
        enables it, so that the change is stored for every instance; not when it adopts a
        stored change, nor when a probe send moves the probe time on (kept here only)."""
        self.cloud_enabled: dict[str, bool] = dict.fromkeys(self.clouds, True)
        self._cloud_probe_at: dict[str, float] = {}
        """When a disabled provider is next given one send to find out whether it is fixed."""
        self._cloud_disabled_by: dict[str, str] = {}
        """The provider's refusal code that disabled it."""
        self._cloud_disabled_since: dict[str, float] = {}
        """When the provider was disabled (a refused probe does not move it)."""
        self._cloud_paused_until: dict[str, float] = {}
        """Providers that asked for a pause in sending (rate limits), until when."""
        # LRU order: least recently used first. One order across the fleet for "any server"
        # routes and one per server; both updated on every use (O(1) each).
        self._fleet_lru: _Lru = OrderedDict()
        self._server_lru: dict[str, _Lru] = {}
        self._recent: dict[tuple[str, str], deque[float]] = {}
        self._synced_generation = -1
        self._line_ids: dict[str, set[str]] = {}
        """Line ids of each server as of the last _sync."""

    def reconfigure(
        self,
        settings: RoutingSettings,
        rules: Sequence[RouteRule],
        servers: Mapping[str, Server],
        clouds: Collection[str] = (),
    ) -> None:
        """Adopt a reloaded config; LRU order and rate windows of surviving lines are kept.
        Every configured cloud provider is enabled again: a reload is the operator's "fixed"."""
        self.settings = settings
        self.rules = tuple(rules)
        self.servers = dict(servers)
        self.clouds = frozenset(clouds)
        self.cloud_enabled = dict.fromkeys(self.clouds, True)
        self._cloud_probe_at = {}
        self._cloud_disabled_by = {}
        self._cloud_disabled_since = {}
        self._cloud_paused_until = {}
        self._synced_generation = -1

    def pause_cloud(self, name: str, until: float) -> None:
        """Leave an enabled provider out of routing until `until`, as it asked: sends there
        would only be refused, and each refusal would cost the recipient an attempt."""
        self._cloud_paused_until[name] = max(until, self._cloud_paused_until.get(name, until))

    def disable_cloud(self, name: str, now: float, code: str = "") -> bool:
        """Take a provider out of routing because it refused with `code`; False if it already
        was (a probe that failed: the next probe is one interval later)."""
        was_enabled = self.cloud_enabled.get(name, False)
        self.cloud_enabled[name] = False
        self._cloud_probe_at[name] = now + self.settings.provider_probe_interval
        self._cloud_disabled_by[name] = code
        self._cloud_disabled_since.setdefault(name, now)
        self.on_cloud_change(name)
        return was_enabled

    def cloud_disable(self, name: str) -> ProviderDisable | None:
        """The provider's disable as this router has it, None while it is in routing."""
        if self.cloud_enabled.get(name, True):
            return None
        return ProviderDisable(
            name,
            self._cloud_disabled_by.get(name, ""),
            self._cloud_disabled_since.get(name, 0.0),
            self._cloud_probe_at.get(name, 0.0),
        )

    def adopt_cloud_disable(self, disable: ProviderDisable) -> bool:
        """Take a provider out of routing as another instance (or a previous process) did;
        True if it was in. A probe time moved on here (a probe made) is kept."""
        name = disable.provider
        if name not in self.clouds:
            return False
        was_enabled = self.cloud_enabled.get(name, False)
        probe_at = disable.probe_at
        if not was_enabled:
            probe_at = max(probe_at, self._cloud_probe_at.get(name, probe_at))
        self.cloud_enabled[name] = False
        self._cloud_probe_at[name] = probe_at
        self._cloud_disabled_by[name] = disable.code
        self._cloud_disabled_since[name] = disable.since
        return was_enabled

    def adopt_cloud_enable(self, name: str) -> bool:
        """Back into routing as another instance decided; False if it already was."""
        if name not in self.clouds or self.cloud_enabled.get(name, False):
            return False
        self.cloud_enabled[name] = True
        self._cloud_probe_at.pop(name, None)
        self._cloud_disabled_by.pop(name, None)
        self._cloud_disabled_since.pop(name, None)
        return True

    def disabled_by(self, name: str) -> str | None:
        """The refusal code that took the provider out of routing; None while it is in."""
        if self.cloud_enabled.get(name, False):
            return None
        return self._cloud_disabled_by.get(name, "")

    def enable_cloud(self, name: str) -> bool:
        """Back into routing; False if it already was."""
        if not self.adopt_cloud_enable(name):
            return False
        self.on_cloud_change(name)
        return True

    def _cloud_usable(self, name: str, now: float) -> bool:
        if self.cloud_enabled.get(name, False):
            paused_until = self._cloud_paused_until.get(name)
            if paused_until is None:
                return True
            if now < paused_until:
                return False
            del self._cloud_paused_until[name]
            return True
        probe_at = self._cloud_probe_at.get(name)
        if probe_at is None or self.settings.provider_probe_interval <= 0 or now < probe_at:
            return False
        if not self.probes(name):
            return False
        # One probe per interval: a refused probe costs one failover, not a stream of them.
        self._cloud_probe_at[name] = now + self.settings.provider_probe_interval
        return True

    def targets_for(self, number: str) -> tuple[RouteTarget, ...]:
        targets = match_rule(self.rules, number)
        if not self.rules:
            # No rules: any line of any server, then every cloud provider as overflow.
            targets = (
                *targets,
                *(RouteTarget.model_validate({"cloud": c}) for c in sorted(self.clouds)),
            )
        return targets

    def choose(
        self,
        targets: Iterable[RouteTarget],
        now: float,
        exclude: Collection[str] = (),
        want: int = 1,
        *,
        text: TextParts | None = None,
        lines: bool = True,
        busy: Collection[str] = (),
    ) -> Choice | None:
        """First target, in order, with a usable line (or an enabled cloud provider).

        `text`: what each recipient takes of a line's quota (one part if None); `lines`: False
        when the text cannot go through a GoIP hop at all; `busy`: servers with as many sends
        open as they may have."""
        self._sync()
        for target in targets:
            choice = self._choose_target(target, now, exclude, want, text, lines, busy)
            if choice is not None:
                return choice
        return None

    def _choose_target(
        self,
        target: RouteTarget,
        now: float,
        exclude: Collection[str],
        want: int,
        text: TextParts | None,
        lines: bool,
        busy: Collection[str],
    ) -> Choice | None:
        if target.cloud is not None:
            if f"cloud:{target.cloud}" not in exclude and self._cloud_usable(target.cloud, now):
                return CloudChoice(target.cloud, capacity=want)
            return None
        if not lines:
            return None
        assert target.server is not None
        if target.server == ANY_SERVER:
            return self._pick(self._fleet_lru, now, exclude, want, None, text, busy)
        server = self.servers.get(target.server)
        lru = self._server_lru.get(target.server)
        state = self.registry.servers.get(target.server)
        if server is None or lru is None or state is None or not state.up:
            return None
        if target.server in busy or whole_server(target.server) in exclude:
            return None
        parts = self._parts(target.server, text)
        if target.line is not None:
            line = self.registry.line(target.server, target.line)
            if line is None or f"{target.server}/{target.line}" in exclude:
                return None
            capacity = self._capacity(line, now, want, parts)
            if not capacity:
                return None
            return LineChoice(target.server, target.line, None, capacity, parts)
        if target.provider is not None and target.provider not in server.groups:
            # The line → group map is unknown: let the SMS Server pick within the group, if
            # this server has any usable line at all.
            key = f"{target.server}[{target.provider}]"
            if key in exclude or not any(
                self._capacity(line, now, 1, parts)
                for line in self.registry.servers[target.server].lines.values()
            ):
                return None
            return LineChoice(target.server, None, target.provider, want, parts)
        members = frozenset(server.groups[target.provider]) if target.provider else None
        return self._pick(lru, now, exclude, want, members, text, busy)

    def _pick(
        self,
        lru: _Lru,
        now: float,
        exclude: Collection[str],
        want: int,
        members: frozenset[str] | None,
        text: TextParts | None,
        busy: Collection[str],
    ) -> LineChoice | None:
        parked = []
        found: LineChoice | None = None
        for entry in lru:
            server, line_id = entry
            if members is not None and line_id not in members:
                continue
            line = self.registry.line(server, line_id)
            if line is None or line.state is not LineState.REGISTERED:
                # Park lines that cannot send at the back, so the next scan does not walk past
                # every dead SIM again. They lose their LRU place, which matters only once they
                # recover, and then only for one rotation.
                parked.append(entry)
                continue
            if exclude and (f"{server}/{line_id}" in exclude or whole_server(server) in exclude):
                continue
            if server in busy:
                continue
            parts = self._parts(server, text)
            capacity = self._capacity(line, now, want, parts)
            if capacity:
                found = LineChoice(server, line_id, None, capacity, parts)
                break
        for entry in parked:
            lru.move_to_end(entry)
        return found

    def _parts(self, server: str, text: TextParts | None) -> int:
        if text is None:
            return 1
        config = self.servers.get(server)
        state = self.registry.servers.get(server)
        return text.for_server(
            escape=config.escape_text if config is not None else True,
            mbstring=state is None or not state.mbstring_missing,
        )

    def _capacity(self, line: Line, now: float, want: int, parts: int = 1) -> int:
        if line.state is not LineState.REGISTERED or line.quarantined(now):
            return 0
        recent = self._recent.get((line.server, line.line_id))
        used = 0
        if recent:
            while recent and recent[0] <= now - RATE_WINDOW:
                recent.popleft()
            used = len(recent)
        capacity = min(want, self.settings.line_rate_per_minute - used)
        for quota in (line.remain_sms, line.day_remain_sms):
            if quota is not None:
                # The server takes each send's parts off the quota, not one per recipient.
                capacity = min(capacity, quota // parts)
        return max(capacity, 0)

    def record_use(self, choice: Choice, count: int, now: float) -> None:
        """Account a send: LRU position, rate window, and the quota the next poll will show."""
        if not isinstance(choice, LineChoice) or choice.line is None:
            return
        key = (choice.server, choice.line)
        if key in self._fleet_lru:
            self._fleet_lru.move_to_end(key)
        server_lru = self._server_lru.get(choice.server)
        if server_lru is not None and key in server_lru:
            server_lru.move_to_end(key)
        self._recent.setdefault(key, deque()).extend([now] * count)
        line = self.registry.line(choice.server, choice.line)
        if line is not None:
            # Decrement locally so the router does not overshoot day_remain_sms between polls;
            # the next poll replaces these with the server's own figures.
            used = count * choice.parts
            if line.remain_sms is not None:
                line.remain_sms = max(line.remain_sms - used, 0)
            if line.day_remain_sms is not None:
                line.day_remain_sms = max(line.day_remain_sms - used, 0)

    def release_use(self, choice: Choice, count: int) -> None:
        """Undo record_use for `count` sends that will not happen (another instance claimed
        the recipients first, or the line's rate shared with other instances was used up)."""
        if count <= 0 or not isinstance(choice, LineChoice) or choice.line is None:
            return
        recent = self._recent.get((choice.server, choice.line))
        for _ in range(min(count, len(recent or ()))):
            assert recent is not None
            recent.pop()
        line = self.registry.line(choice.server, choice.line)
        if line is not None:
            if line.remain_sms is not None:
                line.remain_sms += count * choice.parts
            if line.day_remain_sms is not None:
                line.day_remain_sms += count * choice.parts

    def _sync(self) -> None:
        """Bring the LRU orders in line with the registry (lines appear and go with polls)."""
        if self._synced_generation == self.registry.generation:
            return
        self._synced_generation = self.registry.generation
        # Only servers whose set of line ids changed are looked at (a C-level comparison per
        # server): rebuilding the orders of the whole fleet took 20 ms of event loop for one
        # line appearing among 32,000. A line that goes keeps its entry (the registry keeps
        # it, marked gone, and _pick parks it).
        servers = self.registry.servers
        for name in [name for name in self._line_ids if name not in servers]:
            self._forget(name, self._line_ids.pop(name))
            self._server_lru.pop(name, None)
        fresh: list[Line] = []
        for name, server in servers.items():
            known = self._line_ids.get(name)
            if known is not None and server.lines.keys() == known:
                continue
            ids = set(server.lines)
            if known is not None:
                self._forget(name, known - ids)
            fresh.extend(server.lines[line_id] for line_id in ids - (known or set()))
            self._line_ids[name] = ids
        fresh.sort(key=_most_quota_first)
        for line in fresh:
            key = (line.server, line.line_id)
            self._fleet_lru[key] = None
            self._fleet_lru.move_to_end(key, last=False)
            lru = self._server_lru.setdefault(line.server, OrderedDict())
            lru[key] = None
            lru.move_to_end(key, last=False)

    def _forget(self, server: str, line_ids: Iterable[str]) -> None:
        lru = self._server_lru.get(server)
        for line_id in line_ids:
            key = (server, line_id)
            self._fleet_lru.pop(key, None)
            self._recent.pop(key, None)
            if lru is not None:
                lru.pop(key, None)


def _most_quota_first(line: Line) -> tuple[float, float]:
    # Inserted at the front one by one, so sort ascending: the largest quota ends up first.
    big = float("inf")
    return (
        big if line.day_remain_sms is None else line.day_remain_sms,
        big if line.remain_sms is None else line.remain_sms,
    )
