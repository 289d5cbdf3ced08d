"""Dispatch: the outcomes of sends that finish together are one ledger write, and the ledger's
error reaches every caller."""

from __future__ import annotations

import asyncio
from pathlib import Path

from goipd.dispatch.dispatcher import _OutcomeWriter
from goipd.ledger.sqlite import SqliteLedger
from goipd.model import Claim, LedgerError, NewMessage, Outcome, State


async def test_outcomes_recorded_together_are_one_write(tmp_path: Path) -> None:
    ledger = SqliteLedger(tmp_path / "goipd.db")
    await ledger.open()
    try:
        message = NewMessage(
            text="hi", recipients=("+886900000001", "+886900000002"), segments=1, encoding="GSM-7"
        )
        ids = [r.id for r in (await ledger.accept(message, 1.0)).message.recipients]
        await ledger.claim([Claim(rid, "goip", "hq", "G1") for rid in ids], 1.0)
        writer = _OutcomeWriter(ledger, lambda: 2.0)
        commits = ledger.commits
        await asyncio.gather(
            *(writer.record([Outcome(rid, State.SUBMITTED, task_id="9")]) for rid in ids)
        )
        assert ledger.commits == commits + 1
        assert (await ledger.counts())[State.SUBMITTED] == 2
    finally:
        await ledger.close()
    # The ledger's error reaches every caller of the write.
    results = await asyncio.gather(
        *(writer.record([Outcome(rid, State.SENT)]) for rid in ids), return_exceptions=True
    )
    assert all(isinstance(r, LedgerError) for r in results), results
