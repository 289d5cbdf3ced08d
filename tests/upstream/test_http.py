"""Replies read whole over real loopback HTTP, however they are cut into TCP segments: a reply
that arrives in pieces was once read only as far as its first piece."""

from __future__ import annotations

import asyncio
import json

import aiohttp
import pytest
from aiohttp import web
from pydantic import SecretStr

from goipd.upstream.errors import ErrorReason, UpstreamError
from goipd.upstream.goip import GoipClient
from goipd.upstream.http import read_limited
from tests.helpers.cloud import serve_routes

LINES = [
    {"goip_line": f"G{n}", "online": "1", "reg": "LOGIN", "remain_sms": "-1", "day_remain_sms": 5}
    for n in range(400)
]


async def dribble(request: web.Request) -> web.StreamResponse:
    """The body in 1 KiB pieces, each after a pause, as a slow network delivers it."""
    body = json.dumps(LINES).encode()
    resp = web.StreamResponse(headers={"Content-Type": "text/html"})
    await resp.prepare(request)
    for start in range(0, len(body), 1024):
        await resp.write(body[start : start + 1024])
        await asyncio.sleep(0.002)
    await resp.write_eof()
    return resp


async def test_a_goip_reply_in_many_pieces_is_read_whole() -> None:
    async with serve_routes(web.post("/hq/goip/querylines/", dribble)) as base:
        client = GoipClient("hq", f"{base}/hq", "root", SecretStr("pw"), 5.0)
        try:
            lines = await client.query_lines()
        finally:
            await client.close()
    assert [line.line_id for line in lines] == [f"G{n}" for n in range(400)]
    assert lines[-1].day_remain_sms == 5


@pytest.mark.parametrize(("limit", "whole"), [(64 * 1024, True), (4096, False)])
async def test_read_limited_reads_to_the_end_or_refuses_past_the_limit(
    limit: int, whole: bool
) -> None:
    async with (
        serve_routes(web.get("/", dribble)) as base,
        aiohttp.ClientSession() as http,
        http.get(base) as resp,
    ):
        if whole:
            assert json.loads(await read_limited(resp, limit, "lines")) == LINES
        else:
            with pytest.raises(UpstreamError) as raised:
                await read_limited(resp, limit, "lines")
            assert raised.value.reason is ErrorReason.PARSE
            assert raised.value.detail == "lines: reply larger than 4 KiB"
