"""Request bodies are read by orjson when it can and by json when it cannot: either way the
client sees the same values and the same errors."""

from __future__ import annotations

import aiohttp
import pytest

BIG = "123456789012345678901234567890"


@pytest.mark.parametrize(
    ("raw", "detail"),
    [
        # orjson reads an integer past 64 bits as a float: the error must show the integer.
        (
            f'{{"to": "+886912345678", "text": "x", "priority": {BIG}}}',
            "priority: expected an integer from 0 (bulk) to 3 (urgent), 1 being normal; "
            f"got {BIG[:40]}",
        ),
        # Below -2**63 an integer may have only nineteen digits.
        (
            '{"to": "+886912345678", "text": "x", "priority": -9223372036854775809}',
            "priority: expected an integer from 0 (bulk) to 3 (urgent), 1 being normal; "
            "got -9223372036854775809",
        ),
        # json takes NaN and Infinity, orjson refuses them: the caller still hears about
        # the field, not a parse error.
        (
            '{"to": "+886912345678", "text": "x", "priority": NaN}',
            "priority: expected an integer from 0 (bulk) to 3 (urgent), 1 being normal; got nan",
        ),
        (
            '{"to": "+886912345678", "text": "x", "priority": 1.0}',
            "priority: expected an integer from 0 (bulk) to 3 (urgent), 1 being normal; got 1.0",
        ),
    ],
)
async def test_values_orjson_reads_differently_are_read_as_json_reads_them(
    base: str, http: aiohttp.ClientSession, raw: str, detail: str
) -> None:
    async with http.post(f"{base}/api/v1/messages", data=raw.encode()) as resp:
        problem = await resp.json(content_type=None)
    assert resp.status == 422, problem
    assert problem["detail"] == detail


async def test_a_valid_surrogate_pair_and_non_ascii_text_survive_the_fast_path(
    base: str, http: aiohttp.ClientSession
) -> None:
    raw = '{"to": "+886912345678", "text": "\\ud83d\\ude00 你好 — ok"}'.encode()
    async with http.post(f"{base}/api/v1/messages", data=raw) as resp:
        message = await resp.json()
    assert resp.status == 202, message
    assert message["text"] == "😀 你好 — ok"
    assert resp.headers["Content-Type"] == "application/json; charset=utf-8"
