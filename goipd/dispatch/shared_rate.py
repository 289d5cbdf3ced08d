"""The per-line send rate and quota when several instances share one ledger
(docs/high-availability.md): each dispatch pass asks the ledger for the sends it planned per
line, in one atomic reservation, and sends only what was granted. The router's own rate window
and quota decrement still apply per instance; this keeps the sum of all instances under
routing.line_rate_per_minute and under the quota the last poll reported. Recipients left out
stay queued for a later pass.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from typing import TypeVar

import structlog

from goipd.dispatch.routing import Choice, LineChoice, Router
from goipd.ledger.base import Dispatching
from goipd.model import LedgerError, Recipient

log = structlog.get_logger("goipd.dispatch.dispatcher")
B = TypeVar("B")
Plans = list[tuple[Choice, B, list[Recipient]]]


def _line(choice: Choice) -> tuple[str, str] | None:
    if isinstance(choice, LineChoice) and choice.line is not None:
        return choice.server, choice.line
    return None  # a carrier group (the SMS Server picks the line) or a cloud provider


async def admit(
    ledger: Dispatching, router: Router, plans: Plans[B], per_minute: int
) -> tuple[Plans[B], int | None]:
    """`plans` cut to what the shared rate allows, and the minute the sends were reserved in
    (None: nothing reserved), for forget_unclaimed. Raises LedgerError like any ledger call."""
    wanted: dict[tuple[str, str], int] = {}
    for choice, _, recipients in plans:
        key = _line(choice)
        if key is not None:
            wanted[key] = wanted.get(key, 0) + len(recipients)
    if not wanted:
        return plans, None
    quotas = {}
    for key in wanted:
        line = router.registry.line(*key)
        if line is not None and line.quota_at_poll is not None:
            quotas[key] = (line.quota_at_poll, line.last_seen)
    reservation = await ledger.reserve_line_sends(wanted, per_minute, quotas)
    left = dict(reservation.granted)
    admitted: Plans[B] = []
    held_back = 0
    for choice, body, recipients in plans:
        key = _line(choice)
        if key is not None:
            take = min(left.get(key, 0), len(recipients))
            left[key] = left.get(key, 0) - take
            if take < len(recipients):
                held_back += len(recipients) - take
                router.release_use(choice, len(recipients) - take)
                recipients = recipients[:take]
            if not recipients:
                continue
        admitted.append((choice, body, recipients))
    if held_back:
        # Other instances sent on these lines this minute; the recipients wait, still queued.
        log.debug("line_rate_shared_limit", recipients=held_back)
    return admitted, reservation.minute


async def forget_unclaimed(
    ledger: Dispatching,
    router: Router,
    plans: Sequence[tuple[Choice, object, list[Recipient]]],
    claimed: Collection[int],
    reserved_in: int | None,
) -> None:
    """Recipients another instance claimed first are not sent here: their use of the line
    (rate window, quota and, with a shared rate, the reservation made in minute `reserved_in`)
    is given back. Never raises: the claimed recipients are sent next."""
    unused: dict[tuple[str, str], int] = {}
    for choice, _, recipients in plans:
        lost = sum(1 for r in recipients if r.id not in claimed)
        key = _line(choice)
        if lost and key is not None:
            router.release_use(choice, lost)
            unused[key] = unused.get(key, 0) + lost
    if unused and reserved_in is not None:
        try:
            await ledger.release_line_sends(unused, reserved_in)
        except LedgerError as exc:
            # The claimed recipients must go out all the same; the lines lose a few sends of
            # this minute at worst.
            log.warning("line_rate_release_failed", reason=str(exc))
