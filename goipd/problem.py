"""Why a request is refused: an RFC 9457 status and a detail, raised wherever the refusal is
decided (accepting, hooks, limits) and rendered at the web edge (goipd/web/problems.py)."""

from __future__ import annotations

from http import HTTPStatus
from typing import Any


class Problem(Exception):
    """Raise from a handler to answer with a problem document."""

    def __init__(
        self,
        status: int,
        detail: str,
        *,
        title: str | None = None,
        headers: dict[str, str] | None = None,
        **extra: Any,
    ) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail
        self.title = title or HTTPStatus(status).phrase
        self.headers = headers or {}
        self.extra = extra


def json_kind(value: object) -> str:
    """How an error message names the JSON type a client sent where another was expected."""
    return {
        dict: "an object",
        list: "an array",
        str: "a string",
        bool: "a boolean",
        type(None): "null",
    }.get(type(value), "a number")
