"""The interface every cloud SMS provider implements (smsgo, PaaSoo, c123), so dispatch can
treat them as routes like a GoIP server, Sachet-style: one class per provider, one protocol."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Protocol

from goipd.ledger.base import State


class Verdict(StrEnum):
    ACCEPTED = "accepted"
    """The provider took the message; `upstream_id` identifies it for status and DLRs."""
    FAILED = "failed"
    """This recipient cannot be sent (bad number, content refused): final."""
    RETRY = "retry"
    """Try again later or elsewhere (rate limited, provider busy, timeout)."""
    DISABLE = "disable"
    """The route is unusable until an operator acts (auth failed, account frozen, no credit):
    dispatch stops using it and raises the alerting metric."""


@dataclass(frozen=True, slots=True)
class CloudSendResult:
    number: str
    verdict: Verdict
    upstream_id: str | None = None
    code: str | None = None
    """The provider's own status code, stored with the recipient."""
    meaning: str | None = None


@dataclass(frozen=True, slots=True)
class CloudStatus:
    """A delivery status, from a status query or a DLR push."""

    upstream_id: str
    number: str | None
    state: State
    """SENT (accepted by the network, pending), DELIVERED or FAILED; QUEUED = still scheduled."""
    code: str
    meaning: str


@dataclass(frozen=True, slots=True)
class CloudInbound:
    from_number: str
    to_number: str | None
    text: str
    upstream_time: str


class CloudProvider(Protocol):
    name: str
    max_batch: int
    """Most numbers one send call takes (smsgo 50, PaaSoo 50, c123 2000 by POST)."""

    async def send(
        self, numbers: Sequence[str], text: str, *, send_at: float | None = None
    ) -> list[CloudSendResult]:
        """One result per number; transport failures come back as RETRY results, never raise."""

    async def status(self, items: Sequence[tuple[str, str]]) -> list[CloudStatus]:
        """Status of (upstream_id, number) pairs; providers without a status API return []."""

    async def balance(self) -> float | None:
        """Credit left (points, messages or money as the provider counts), None if unknown."""

    async def cancel(self, upstream_id: str) -> bool:
        """Cancel a scheduled send; False when the provider cannot (or refuses)."""

    async def close(self) -> None: ...
