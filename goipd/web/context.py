"""What the API handlers share: the ledger, settings, metrics and how to wake dispatch."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Collection, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from aiohttp import web

from goipd.accept import alerts as alerting
from goipd.accept.validate import CallerDefaults
from goipd.config import ApiSettings
from goipd.fleet.registry import LineRegistry
from goipd.ledger.base import Accepting, InboundStore, Reading
from goipd.metrics.catalog import Metrics
from goipd.model import Recipient

REGISTRY_KEY = web.AppKey("line_registry", LineRegistry)


class ApiLedger(Accepting, Reading, InboundStore, Protocol):
    """What the API handlers read and write."""


@dataclass
class ApiContext:
    ledger: ApiLedger
    settings: Callable[[], ApiSettings]
    server_names: Callable[[], Collection[str]]
    cloud_names: Callable[[], Collection[str]]
    metrics: Metrics
    wake_dispatch: Callable[[], None]
    clock: Callable[[], float]
    cancel_handed_over: Callable[[Sequence[Recipient]], Awaitable[list[int]]] = field(
        default=lambda _recipients: _nothing_cancelled()
    )
    """Asks the providers holding scheduled sends to cancel them; returns the recipient ids
    they confirmed cancelled."""
    caller_defaults: Callable[[str], CallerDefaults | None] = lambda _client: None
    """What the configuration of the API token with this fingerprint says of its messages."""
    private_callbacks: Callable[[], bool] = lambda: False
    """Whether status_url may name a loopback or private address (callbacks.allow_private)."""


async def _nothing_cancelled() -> list[int]:
    return []


API_KEY = web.AppKey("api", ApiContext)


ALERTING_KEY = web.AppKey("alerting", alerting.AlertRelay)
