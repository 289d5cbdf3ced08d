"""JSON responses, encoded with orjson: the API's answers are its hottest output (a bulk accept
answers with every recipient), and json.dumps took several times longer to write them."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import orjson
from aiohttp import web


def json_reply(
    data: Any,
    *,
    status: int = 200,
    headers: Mapping[str, str] | None = None,
    content_type: str = "application/json",
) -> web.Response:
    return web.Response(
        body=orjson.dumps(data),
        status=status,
        headers=headers,
        content_type=content_type,
        charset="utf-8",
    )
