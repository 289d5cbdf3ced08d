"""An inbound SMS stored with its forwarding outbox rows: from a cloud provider, or from a
GoIP SMS Server (pushed, or read from its web inbox, each SMS stored once either way)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

import structlog

from goipd.fleet.registry import LineRegistry
from goipd.ledger.base import InboundStore
from goipd.metrics.catalog import Metrics
from goipd.model import GoipInbound
from goipd.upstream.cloud import CloudInbound

log = structlog.get_logger("goipd.inbound")


class Sink(Protocol):
    """Where an inbound SMS goes: the ledger's inbox and outbox, and the inbound counter."""

    @property
    def ledger(self) -> InboundStore: ...

    @property
    def metrics(self) -> Metrics: ...

    @property
    def forward_urls(self) -> Callable[[], tuple[str, ...]]: ...

    @property
    def clock(self) -> Callable[[], float]: ...


async def store_inbound(ctx: Sink, provider: str, sms: CloudInbound) -> int:
    inbound_id = await ctx.ledger.add_inbound(
        provider,
        None,
        sms.from_number,
        sms.to_number,
        sms.text,
        sms.upstream_time,
        ctx.clock(),
        forward_to=ctx.forward_urls(),
    )
    ctx.metrics.inbound_sms.labels(provider, "").inc()
    log.info("inbound_received", provider=provider, inbound_id=inbound_id)
    return inbound_id


class GoipSink(Sink, Protocol):
    @property
    def registry(self) -> LineRegistry: ...


async def store_goip_inbound(ctx: GoipSink, sms: GoipInbound) -> tuple[int, bool]:
    """Store `sms` unless the ledger holds it already (the same SMS pushed and read from the
    inbox); returns its inbound id and whether it is new, then counted and to be forwarded."""
    inbound_id, new = await ctx.ledger.add_goip_inbound(
        sms, ctx.clock(), forward_to=ctx.forward_urls()
    )
    via = "push" if sms.inbox_id is None else "inbox"
    if not new:
        log.debug("inbound_matched", server=sms.server, inbound_id=inbound_id, via=via)
        return inbound_id, False
    known = sms.line is not None and ctx.registry.line(sms.server, sms.line) is not None
    # Only known lines become label values: a hostile body must not grow the series count.
    ctx.metrics.inbound_sms.labels(sms.server, sms.line if known and sms.line else "unknown").inc()
    if sms.inbox_id is not None:
        ctx.metrics.inbound_recovered.labels(sms.server).inc()
    log.info("inbound_received", server=sms.server, line=sms.line, inbound_id=inbound_id, via=via)
    return inbound_id, True
