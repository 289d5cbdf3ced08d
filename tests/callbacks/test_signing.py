"""Goipd-Signature: HMAC-SHA256 over "<t>.<body>", verified as a receiver would."""

from __future__ import annotations

import hashlib
import hmac

from goipd.callbacks.signing import sign, verify

SECRET = "whsec-0123456789abcdef"
BODY = b'{"id":"evt_1","state":"sent"}'
NOW = 1_800_000_000.0


def test_the_header_is_t_and_the_hex_hmac_of_t_dot_body() -> None:
    header = sign(SECRET, BODY, NOW + 0.9)
    expected = hmac.new(SECRET.encode(), b"1800000000." + BODY, hashlib.sha256).hexdigest()
    assert header == f"t=1800000000,v1={expected}"
    assert verify(SECRET, header, BODY, now=NOW)


def test_a_wrong_secret_a_changed_body_or_an_old_signature_fail() -> None:
    header = sign(SECRET, BODY, NOW)
    assert not verify("another-secret-0123", header, BODY, now=NOW)
    assert not verify(SECRET, header, BODY + b" ", now=NOW)
    assert not verify(SECRET, header, BODY, now=NOW + 301)
    assert verify(SECRET, header, BODY, now=NOW + 301, tolerance=600)
    assert not verify(SECRET, "v1=" + header.split("v1=")[1], BODY, now=NOW)
    assert not verify(SECRET, "garbage", BODY, now=NOW)


def test_any_of_several_signatures_may_match() -> None:
    header = sign(SECRET, BODY, NOW)
    rotated = f"{header.split(',')[0]},v1={'0' * 64},{header.split(',')[1]}"
    assert verify(SECRET, rotated, BODY, now=NOW)
