"""The one door into the ledger for every endpoint that takes messages."""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

from goipd.ledger.base import Accepting
from goipd.metrics.catalog import Metrics
from goipd.model import AcceptResult, LedgerError, Message, NewMessage
from goipd.problem import Problem


class Door(Protocol):
    """Where an accepted message goes: the ledger, the accept counter, dispatch's wake-up."""

    @property
    def ledger(self) -> Accepting: ...

    @property
    def metrics(self) -> Metrics: ...

    @property
    def wake_dispatch(self) -> Callable[[], None]: ...


def check_replay(stored: Message, new: NewMessage, now: float) -> None:
    """A repeated idempotency key must come with the same request: anything else is a client
    bug that would silently drop the new message, so it is refused (as the IETF
    Idempotency-Key draft does). Another API token's message is never shown."""
    if stored.client != new.client:
        raise Problem(
            422,
            "idempotency_key: already used by another API token; use a new key",
            title="Idempotency key reused",
        )
    same = (
        stored.text == new.text
        and sorted(r.number for r in stored.recipients) == sorted(new.recipients)
        and stored.route == new.route
        and stored.priority == new.priority
        and stored.status_url == new.status_url
        # A retry after the scheduled time has passed reads send_at as "now" (None).
        and (
            stored.send_at == new.send_at
            or (new.send_at is None and stored.send_at is not None and stored.send_at <= now)
        )
    )
    if not same:
        raise Problem(
            422,
            f"idempotency_key: already used for message {stored.id} with a different to, text, "
            "route, send_at, priority or status_url; use a new key for a new message",
            title="Idempotency key reused",
            original=stored.id,
        )


async def accept_message(ctx: Door, new: NewMessage, now: float) -> AcceptResult:
    """The one way into the ledger for every endpoint that takes messages: stored durably,
    counted, dispatch woken."""
    try:
        result = await ctx.ledger.accept(new, now)
    except LedgerError as exc:
        raise Problem(
            503, f"the ledger cannot store messages right now: {exc}", headers={"Retry-After": "5"}
        ) from None
    if result.created:
        ctx.metrics.messages_accepted.inc(len(new.recipients))
        ctx.wake_dispatch()
    return result
