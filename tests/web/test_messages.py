"""Every validation error path of the public API: status code and problem detail; the flood
guard, idempotency keys, paging and segment counts of /api/v1/messages."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import aiohttp
import pytest

from tests.helpers.daemons import OTHER_TOKEN

CASES: list[tuple[Any, int, str]] = [
    (b"", 400, "request body is empty; expected a JSON object"),
    (
        b'{"to": "+886912345678", "text": "a\\ud800b"}',
        422,
        "text: holds a lone UTF-16 surrogate at character 1",
    ),
    (
        b'{"to": ["+886912345678"], "text": "x", "idempotency_key": "\\udfff"}',
        422,
        "idempotency_key: holds a lone UTF-16 surrogate at character 0",
    ),
    (
        b'{"to": ["+886912345678", "\\ud83d"], "text": "x"}',
        422,
        "to[1]: holds a lone UTF-16 surrogate at character 0",
    ),
    (
        b"{oops",
        400,
        "request body is not valid JSON: Expecting property name enclosed in double "
        "quotes at line 1 column 2",
    ),
    (b"\xff\xfe", 400, "request body is not valid UTF-8 (byte 0)"),
    (b"[" * 3000 + b"]" * 3000, 413, "request body is too large"),
    (b"[" * 2000 + b"]" * 2000, 400, "request body is nested too deeply"),
    ([1, 2], 400, "expected a JSON object, got an array"),
    (
        {"to": "+886912345678", "text": "x", "colour": "red"},
        422,
        "unknown field 'colour'; allowed: expires_at, idempotency_key, priority, route, "
        "send_at, status_events, status_url, text, to, valid_for",
    ),
    ({"text": "x"}, 422, "to: expected a phone number or a non-empty array of them"),
    ({"to": [], "text": "x"}, 422, "to: expected a phone number or a non-empty array of them"),
    (
        {"to": ["+886912345671", "+886912345672", "+886912345673", "+886912345674"], "text": "x"},
        422,
        "to: at most 3 recipients per message, got 4",
    ),
    ({"to": [12345], "text": "x"}, 422, "to[0]: expected a phone number as a string, got a number"),
    ({"to": ["+886912345678", "hello"], "text": "x"}, 422, "to[1]: 'hello' is not a phone number"),
    ({"to": ["123"], "text": "x"}, 422, "to[0]: '123' is not a valid number (default region TW)"),
    ({"to": ["1" * 40], "text": "x"}, 422, "to[0]: a phone number has at most 32 characters"),
    ({"to": "+886912345678"}, 422, "text: expected a string, got null"),
    ({"to": "+886912345678", "text": "   "}, 422, "text: must not be empty"),
    ({"to": "+886912345678", "text": "x" * 201}, 422, "text: at most 200 characters, got 201"),
    (
        {"to": "+886912345678", "text": "bell\x07"},
        422,
        "text: control characters are not allowed (newline and tab are)",
    ),
    (
        {"to": "+886912345678", "text": "x", "idempotency_key": ""},
        422,
        "idempotency_key: expected a string of 1 to 128 characters",
    ),
    (
        {"to": "+886912345678", "text": "x", "route": "hq"},
        422,
        "route: expected an object, got a string",
    ),
    (
        {"to": "+886912345678", "text": "x", "route": {"server": "nope"}},
        422,
        "route.server: no server named 'nope'",
    ),
    (
        {"to": "+886912345678", "text": "x", "route": {"cloud": "smsgo"}},
        422,
        "route.cloud: provider 'smsgo' is not configured",
    ),
    (
        {"to": "+886912345678", "text": "x", "route": {"server": "a", "cloud": "smsgo"}},
        422,
        "route: give either server (with optional provider or line) or cloud",
    ),
    (
        {"to": "+886912345678", "text": "x", "route": {"servr": "a"}},
        422,
        "route.servr: Extra inputs are not permitted",
    ),
    (
        {"to": "+886912345678", "text": "x", "send_at": "tomorrow"},
        422,
        "send_at: expected an RFC 3339 time like 2026-01-31T09:00:00+08:00",
    ),
    (
        {"to": "+886912345678", "text": "x", "send_at": "2030-01-01T00:00:00"},
        422,
        "send_at: the time needs a UTC offset (e.g. +08:00 or Z)",
    ),
    (
        {"to": "+886912345678", "text": "x", "send_at": 12},
        422,
        "send_at: expected an RFC 3339 time string, got a number",
    ),
    (
        {"to": "+886912345678", "text": "x", "priority": "high"},
        422,
        "priority: expected an integer from 0 (bulk) to 3 (urgent), 1 being normal; got 'high'",
    ),
    (
        {"to": "+886912345678", "text": "x", "priority": 4},
        422,
        "priority: expected an integer from 0 (bulk) to 3 (urgent), 1 being normal; got 4",
    ),
    (
        {"to": "+886912345678", "text": "x", "priority": True},
        422,
        "priority: expected an integer from 0 (bulk) to 3 (urgent), 1 being normal; got True",
    ),
    (
        {"to": "+886912345678", "text": "x", "priority": 2.0},
        422,
        "priority: expected an integer from 0 (bulk) to 3 (urgent), 1 being normal; got 2.0",
    ),
    (
        {"to": "+886912345678", "text": "x", "valid_for": "5m", "expires_at": "2030-01-01T00:00Z"},
        422,
        "expires_at, valid_for: give one of them, not both",
    ),
    (
        {"to": "+886912345678", "text": "x", "expires_at": "2020-01-01T00:00:00Z"},
        422,
        "expires_at: already past",
    ),
    (
        {"to": "+886912345678", "text": "x", "expires_at": "2030-01-01T00:00:00"},
        422,
        "expires_at: the time needs a UTC offset (e.g. +08:00 or Z)",
    ),
    (
        {"to": "+886912345678", "text": "x", "valid_for": 300},
        422,
        'valid_for: expected a duration like "5m" or "90s", got a number',
    ),
    (
        {"to": "+886912345678", "text": "x", "valid_for": "soon"},
        422,
        'valid_for: expected a duration like "5m" or "90s"',
    ),
    ({"to": "+886912345678", "text": "x", "valid_for": "9s"}, 422, "valid_for: from 10s to 30d"),
    ({"to": "+886912345678", "text": "x", "valid_for": "31d"}, 422, "valid_for: from 10s to 30d"),
    (
        {"to": "+886912345678", "text": "x", "status_url": 42},
        422,
        "status_url: expected a URL string, got a number",
    ),
    (
        {"to": "+886912345678", "text": "x", "status_events": ["sent"]},
        422,
        "status_events: needs a status_url to send them to",
    ),
    (
        {
            "to": "+886912345678",
            "text": "x",
            "status_url": "https://app.example/h",
            "status_events": [],
        },
        422,
        "status_events: expected a non-empty array of states",
    ),
    (
        {
            "to": "+886912345678",
            "text": "x",
            "status_url": "https://app.example/h",
            "status_events": ["sent", "queued"],
        },
        422,
        "status_events[1]: expected one of submitted, sent, delivered, failed, cancelled, "
        "expired, got 'queued'",
    ),
]


@pytest.mark.parametrize(("body", "status", "detail"), CASES)
async def test_post_message_validation(
    base: str, http: aiohttp.ClientSession, body: Any, status: int, detail: str
) -> None:
    kwargs: dict[str, Any] = {"data": body} if isinstance(body, bytes) else {"json": body}
    async with http.post(f"{base}/api/v1/messages", **kwargs) as resp:
        problem = await resp.json(content_type=None)
        assert resp.status == status, problem
        assert resp.content_type == "application/problem+json"
        assert problem["detail"] == detail
        assert problem["status"] == status
        assert problem["title"]


async def test_flood_guard_refuses_the_same_text_to_the_same_number(
    base: str, http: aiohttp.ClientSession
) -> None:
    body = {"to": ["+886912345678"], "text": "your code is 1234"}
    async with http.post(f"{base}/api/v1/messages", json=body) as resp:
        assert resp.status == 202
        first = (await resp.json())["id"]
    async with http.post(f"{base}/api/v1/messages", json=body) as resp:
        assert resp.status == 409
        problem = await resp.json()
    assert problem["detail"] == (
        f"the same text went to +886912345678 less than 10m ago (message {first}); "
        "the flood guard refuses repeats (api.duplicate_window)"
    )
    assert problem["duplicate_of"] == first
    # Another text or another number is fine.
    async with http.post(
        f"{base}/api/v1/messages", json={"to": ["+886912345678"], "text": "your code is 9999"}
    ) as resp:
        assert resp.status == 202


async def test_an_escaped_surrogate_pair_is_one_character(
    base: str, http: aiohttp.ClientSession
) -> None:
    body = b'{"to": "+886912345678", "text": "ok \\ud83d\\ude00"}'
    async with http.post(f"{base}/api/v1/messages", data=body) as resp:
        assert resp.status == 202, await resp.text()
        message = await resp.json()
    assert message["text"] == "ok \U0001f600"


async def test_idempotency_key_reused_for_another_request_is_refused(
    base: str, http: aiohttp.ClientSession
) -> None:
    body = {"to": ["+886912345678"], "text": "order 42 shipped", "idempotency_key": "order-42"}
    async with http.post(f"{base}/api/v1/messages", json=body) as resp:
        assert resp.status == 202
        first = (await resp.json())["id"]
    # The same request (the number written nationally) is a replay: the original comes back.
    replay = {**body, "to": ["0912345678"]}
    async with http.post(f"{base}/api/v1/messages", json=replay) as resp:
        assert resp.status == 200
        assert resp.headers["Idempotent-Replayed"] == "true"
        assert (await resp.json())["id"] == first
    # The key with another text or number would silently drop that message: refused.
    for changed in ({"text": "order 43 shipped"}, {"to": ["+886912345679"]}, {"priority": 3}):
        async with http.post(f"{base}/api/v1/messages", json={**body, **changed}) as resp:
            assert resp.status == 422
            problem = await resp.json()
        assert problem["detail"] == (
            f"idempotency_key: already used for message {first} with a different to, text, "
            "route, send_at, priority or status_url; use a new key for a new message"
        )
        assert problem["original"] == first
    # Another API token never sees the message behind the key.
    async with http.post(
        f"{base}/api/v1/messages",
        json=body,
        headers={"Authorization": f"Bearer {OTHER_TOKEN}"},
    ) as resp:
        assert resp.status == 422
        problem = await resp.json()
    assert problem["detail"] == "idempotency_key: already used by another API token; use a new key"
    assert first not in str(problem)


@pytest.mark.parametrize(
    ("path", "status", "detail"),
    [
        ("/api/v1/messages/NOPE", 404, "no message with that id"),
        ("/api/v1/messages/..%2f..", 404, "no message with that id"),
        (
            "/api/v1/messages?state=dispatching",
            400,
            "state: expected one of queued, submitted, sent, delivered, failed, cancelled, expired",
        ),
        (
            "/api/v1/messages?since=yesterday",
            422,
            "since: expected an RFC 3339 time like 2026-01-31T09:00:00+08:00",
        ),
        ("/api/v1/messages?limit=0", 400, "limit: expected an integer from 1 to 1000"),
        ("/api/v1/messages?limit=abc", 400, "limit: expected an integer from 1 to 1000"),
        ("/api/v1/messages?after=%20x", 400, "after: not a message id"),
        ("/api/v1/inbound?before=x", 400, "before: expected an inbound id"),
        ("/api/v1/inbound?before=99999999999999999999999", 400, "before: expected an inbound id"),
        ("/api/v1/inbound?before=%C2%B2", 400, "before: expected an inbound id"),
        ("/api/v1/messages?limit=%C2%B2", 400, "limit: expected an integer from 1 to 1000"),
        ("/api/v1/nothing", 404, "no resource at /api/v1/nothing"),
    ],
)
async def test_get_errors(
    base: str, http: aiohttp.ClientSession, path: str, status: int, detail: str
) -> None:
    async with http.get(f"{base}{path}") as resp:
        problem = await resp.json(content_type=None)
        assert resp.status == status, problem
        assert problem["detail"] == detail


async def test_wrong_method_and_delete_unknown(base: str, http: aiohttp.ClientSession) -> None:
    async with http.put(f"{base}/api/v1/messages") as resp:
        assert resp.status == 405
        assert (await resp.json(content_type=None))["detail"] == (
            "method PUT is not allowed on /api/v1/messages"
        )
    async with http.delete(f"{base}/api/v1/messages/NOPE") as resp:
        assert resp.status == 404


async def test_messages_list_and_paging(base: str, http: aiohttp.ClientSession) -> None:
    ids = []
    for i in range(5):
        async with http.post(
            f"{base}/api/v1/messages", json={"to": f"+88691234567{i}", "text": f"page {i}"}
        ) as resp:
            ids.append((await resp.json())["id"])
    async with http.get(f"{base}/api/v1/messages?limit=2") as resp:
        page = await resp.json()
    assert [m["id"] for m in page["messages"]] == ids[::-1][:2]
    async with http.get(f"{base}/api/v1/messages?limit=2&after={page['next']}") as resp:
        page2 = await resp.json()
    assert [m["id"] for m in page2["messages"]] == ids[::-1][2:4]
    async with http.get(f"{base}/api/v1/messages?state=queued&since=2020-01-01T00:00:00Z") as r:
        assert len((await r.json())["messages"]) == 5


async def test_segments_and_encoding_are_computed(base: str, http: aiohttp.ClientSession) -> None:
    async with http.post(
        f"{base}/api/v1/messages", json={"to": "+886912345678", "text": "測" * 71}
    ) as resp:
        reply = await resp.json()
    assert (reply["encoding"], reply["segments"]) == ("UCS-2", 2)


async def test_priority_validity_and_status_url_are_stored_and_shown(
    base: str, http: aiohttp.ClientSession
) -> None:
    body = {
        "to": "+886912345678",
        "text": "your code is 5555",
        "priority": 3,
        "valid_for": "5m",
        # Events that cannot happen here (no fleet): nothing is ever POSTed to this host.
        "status_url": "https://app.example/sms-status?key=s3cret",
        "status_events": ["failed", "sent"],
    }
    async with http.post(f"{base}/api/v1/messages", json=body) as resp:
        assert resp.status == 202, await resp.text()
        message = await resp.json()
    created = datetime.fromisoformat(message["created_at"])
    expires = datetime.fromisoformat(message["expires_at"])
    assert expires - created == timedelta(minutes=5)
    assert message["priority"] == 3
    # The caller's own secrets in the query are not shown to every API token.
    assert message["status_url"] == "https://app.example/sms-status?..."
    assert message["status_events"] == ["sent", "failed"]
    async with http.get(f"{base}/api/v1/messages/{message['id']}") as resp:
        assert (await resp.json())["expires_at"] == message["expires_at"]
    # Without them: normal priority, no validity end, no callbacks.
    async with http.post(
        f"{base}/api/v1/messages", json={"to": "+886912345678", "text": "plain"}
    ) as resp:
        plain = await resp.json()
    assert (plain["priority"], plain["expires_at"], plain["status_url"]) == (1, None, None)


async def test_validity_counts_from_send_at_and_must_end_after_it(
    base: str, http: aiohttp.ClientSession
) -> None:
    send_at = datetime.now(UTC).replace(microsecond=0) + timedelta(hours=2)
    body = {"to": "+886912345678", "text": "at two", "send_at": send_at.isoformat()}
    async with http.post(f"{base}/api/v1/messages", json={**body, "valid_for": "10m"}) as resp:
        assert resp.status == 202, await resp.text()
        message = await resp.json()
    assert datetime.fromisoformat(message["expires_at"]) == send_at + timedelta(minutes=10)
    before = (send_at - timedelta(minutes=1)).isoformat()
    async with http.post(
        f"{base}/api/v1/messages", json={**body, "text": "at two again", "expires_at": before}
    ) as resp:
        assert resp.status == 422
        assert (await resp.json())["detail"] == "expires_at: must be after send_at"


@pytest.mark.parametrize(
    "url",
    ["http://127.0.0.1:9/hook", "http://localhost/hook", "http://[::1]/x", "http://10.1.2.3/"],
)
async def test_a_status_url_into_goipds_own_network_is_refused_by_default(
    base: str, http: aiohttp.ClientSession, url: str
) -> None:
    body = {"to": "+886912345678", "text": "x", "status_url": url}
    async with http.post(f"{base}/api/v1/messages", json=body) as resp:
        assert resp.status == 422
        detail = (await resp.json())["detail"]
    assert detail.startswith("status_url: ") and "callbacks.allow_private" in detail
