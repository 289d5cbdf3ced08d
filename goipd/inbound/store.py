"""An inbound SMS a cloud provider delivered, stored with its forwarding outbox rows."""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

import structlog

from goipd.ledger.base import InboundStore
from goipd.metrics.catalog import Metrics
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
