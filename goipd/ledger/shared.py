"""Routing decisions every instance on the ledger shares (the `SharedRouting` role of base.py):
what both backends store and return.

Bounds: `line_auto_quarantines` has one row per line (server, line), written only for lines a
poll of a configured server reported, so it never holds more rows than the fleet has lines; a
row lives until its `until` (`routing.quarantine_for` after the quarantine) and every write
deletes the rows whose `until` has passed. `provider_disables` has one row per provider, and
goipd knows PROVIDERS_MAX of them (smsgo, PaaSoo, c123); a row lives until the provider is
enabled again (a probe, a balance poll or a reload).
"""

from __future__ import annotations

from dataclasses import dataclass

PROVIDERS_MAX = 3
"""Cloud providers goipd has a client for (goipd/config.py `_resolve_providers`): the most
rows `provider_disables` can hold."""


@dataclass(frozen=True, slots=True)
class AutoQuarantine:
    """A line out of routing after `routing.quarantine_after` line errors in a row, until
    `until`, or until an operator releases it."""

    server: str
    line: str
    reason: str
    code: str | None
    """The CMS code of the error that quarantined it."""
    since: float
    until: float


@dataclass(frozen=True, slots=True)
class ProviderDisable:
    """A cloud provider out of routing after it refused goipd's account (credentials, credit,
    a frozen account)."""

    provider: str
    code: str
    """The provider's refusal code (what a balance poll with credit may clear)."""
    since: float
    probe_at: float
    """When one send may go there as a probe, made by the instance that holds the provider's
    `cloud:<provider>` lease (goipd/dispatch/routing.py `Router.probes`)."""
