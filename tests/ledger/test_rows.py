"""Message ids: 26 Crockford base32 digits that sort by time."""

from __future__ import annotations

import re

from hypothesis import given
from hypothesis import strategies as st

from goipd.ledger.rows import CROCKFORD, crockford26
from goipd.ledger.sqlite import new_message_id
from tests.helpers.ledgers import NOW

MESSAGE_ID = re.compile(r"^[0-9A-HJKMNP-TV-Z]{26}$")


def test_message_ids_sort_by_time() -> None:
    ids = [new_message_id(NOW + i / 1000) for i in range(50)]
    assert ids == sorted(ids)
    assert len(set(ids)) == 50
    assert all(MESSAGE_ID.match(i) for i in ids)


@given(st.integers(min_value=0, max_value=(1 << 130) - 1))
def test_crockford26_is_the_value_in_base32_digits(value: int) -> None:
    # The reference: one digit per 5 bits, least significant first, then reversed.
    digits = [CROCKFORD[(value >> (5 * place)) & 31] for place in range(26)]
    assert crockford26(value) == "".join(reversed(digits))
