"""Request bodies: JSON read strictly, with errors a client can act on."""

from __future__ import annotations

import json
import re
from typing import Any

import orjson
from aiohttp import web

from goipd.problem import Problem


async def json_body(request: web.Request) -> Any:
    raw = await request.read()
    if not raw:
        raise Problem(400, "request body is empty; expected a JSON object")
    if _HUGE_INTEGER.search(raw) is None:
        try:
            # orjson parses a typical body in a fraction of json's time; anything it refuses
            # (or would read differently) goes the standard way below, whose errors name the
            # place and whose values are what clients have always got.
            # It refuses every lone UTF-16 surrogate, so what it reads needs no walk for them.
            return orjson.loads(raw)
        except orjson.JSONDecodeError:
            pass
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise Problem(400, f"request body is not valid UTF-8 (byte {exc.start})") from None
    try:
        body = json.loads(text)
    except json.JSONDecodeError as exc:
        raise Problem(
            400,
            f"request body is not valid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}",
        ) from None
    except RecursionError:
        raise Problem(400, "request body is nested too deeply") from None
    if _SURROGATE_ESCAPE.search(text) is not None:
        _refuse_lone_surrogates(body, "request body")
    return body


_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89abcdefABCDEF]")
"""JSON's only way to a lone UTF-16 surrogate: a \\uD800-\\uDFFF escape (a valid pair of them
decodes to one character)."""
_HUGE_INTEGER = re.compile(rb"[0-9]{19}")
"""Nineteen digits in a row may be an integer past 64 bits (-2**63 - 1 has nineteen), which
orjson reads as a float and json as an int: a priority of 10**30 must be refused as the
integer it is."""


def _refuse_lone_surrogates(value: Any, where: str) -> None:
    """A string no UTF-8 store or SMS can carry is the client's error (422), not a 500 when the
    ledger tries to write it."""
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError as exc:
            raise Problem(
                422, f"{where}: holds a lone UTF-16 surrogate at character {exc.start}"
            ) from None
    elif isinstance(value, dict):
        for key, item in value.items():
            _refuse_lone_surrogates(key, where)
            name = str(key)[:40]
            _refuse_lone_surrogates(item, f"{where}.{name}" if where != "request body" else name)
    elif isinstance(value, list):
        for index, item in enumerate(value):
            _refuse_lone_surrogates(item, f"{where}[{index}]")


def query_limit(request: web.Request, default: int = 100, maximum: int = 1000) -> int:
    raw = request.query.get("limit", str(default))
    # isdigit() would accept "²"; only ASCII digits, and few of them, reach int().
    if not re.fullmatch(r"[0-9]{1,4}", raw) or not 1 <= int(raw) <= maximum:
        raise Problem(400, f"limit: expected an integer from 1 to {maximum}")
    return int(raw)
