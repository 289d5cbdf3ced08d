"""The interface every cloud SMS provider implements (smsgo, PaaSoo, c123), so dispatch can
treat them as routes like a GoIP server, Sachet-style: one class per provider, one protocol."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Protocol, runtime_checkable

from goipd.model import State


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
    retry_after: float | None = None
    """The provider asked goipd to send nothing for this many seconds (c123 107/110/114): the
    number was not sent, and the provider is left out of routing until then."""
    lost_answers: int = 0
    """Calls for this number whose answer was lost after the provider may have acted on them
    (smsgo's backup URL is asked after a primary that timed out): each may have sent it."""


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
    balance_clears: frozenset[str]
    """Refusal codes that a balance answer with credit proves fixed: wrong credentials and no
    credit. Others (account closed or frozen, sender or API use forbidden) leave a provider
    disabled until a probe send is accepted, however much credit it has."""

    async def send(
        self, numbers: Sequence[str], text: str, *, send_at: float | None = None
    ) -> list[CloudSendResult]:
        """One result per number; transport failures come back as RETRY results, never raise."""

    async def status(self, items: Sequence[tuple[str, str]]) -> list[CloudStatus]:
        """Status of (upstream_id, number) pairs; providers without a status API return [].
        Raises UpstreamError when the query fails as a whole."""

    async def balance(self) -> float | None:
        """Credit left (points, messages or money as the provider counts), None if unknown.
        Raises UpstreamError when the provider cannot be asked or answers with an error."""

    async def cancel(self, upstream_id: str) -> bool:
        """Cancel a scheduled send; False when the provider cannot (or refuses).
        Raises UpstreamError when the provider cannot be asked."""

    async def close(self) -> None: ...


@runtime_checkable
class PullsInbound(Protocol):
    """A provider whose inbound SMS (replies) must be fetched, not pushed (c123 `/rx/`)."""

    reply_poll_interval: float
    """Seconds between fetches; the provider's own limit, never polled more often."""

    async def fetch_inbound(self, hour: datetime | None = None) -> list[CloudInbound]:
        """Replies the provider hands out (each only once), or with `hour` (the start of a UTC
        hour) every reply it got in that hour again; raises UpstreamError on failure."""


@runtime_checkable
class CountsSent(Protocol):
    """A provider that reports how many messages the account has sent (c123 `cmd=send`)."""

    async def sent_total(self) -> int:
        """Raises UpstreamError on failure."""
