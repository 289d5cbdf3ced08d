"""/api/v1/inbound: the SMS the fleet and the providers received."""

from __future__ import annotations

import re

from aiohttp import web

from goipd.problem import Problem
from goipd.web.body import query_limit
from goipd.web.context import API_KEY
from goipd.web.messages import iso_time
from goipd.web.replies import json_reply


async def list_inbound(request: web.Request) -> web.Response:
    ctx = request.app[API_KEY]
    limit = query_limit(request)
    before_raw = request.query.get("before")
    if before_raw is not None and not re.fullmatch(r"[0-9]{1,18}", before_raw):
        raise Problem(400, "before: expected an inbound id")
    records = await ctx.ledger.list_inbound(limit, int(before_raw) if before_raw else None)
    return json_reply(
        {
            "inbound": [
                {
                    "id": r.id,
                    "source": r.source,
                    "line": r.line,
                    "from": r.from_number,
                    "to": r.to_number,
                    "text": r.content,
                    "received_at": iso_time(r.received_at),
                    "upstream_time": r.upstream_time,
                }
                for r in records
            ],
            "next": str(records[-1].id) if len(records) == limit else None,
        }
    )
