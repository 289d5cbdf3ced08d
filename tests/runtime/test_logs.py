"""Logs: one compiled pattern scrubs every configured secret, the longest first."""

from __future__ import annotations

from goipd.runtime.logs import REDACTED, SecretScrubber


def test_scrubber_pattern_redacts_every_secret_longest_first() -> None:
    scrubber = SecretScrubber()
    secrets = [f"pw-{i:04d}-{'x' * (i % 7)}" for i in range(2000)]
    special = ["a.b*c(d)", "hook-token-0123", "hook-token-0123456789", "[x]\\y", "短い秘密の鍵"]
    scrubber.set_secrets([*secrets, *special, "abc"])  # shorter than 4: never a secret
    text = "|".join(["pw-0005-xxxxx", "a.b*c(d)", "hook-token-0123456789", "[x]\\y", "abc"])
    assert scrubber.scrub(text) == "|".join([REDACTED] * 4 + ["abc"])
    # The longest secret wins where one contains another; the shorter alone still goes.
    assert scrubber.scrub("t=hook-token-0123456789;s=hook-token-0123;") == (
        f"t={REDACTED};s={REDACTED};"
    )
    assert scrubber.scrub("a.bxc(d) 短い秘密の鍵!") == f"a.bxc(d) {REDACTED}!"
    event = scrubber(None, "info", {"event": "x", "detail": ["pw-1999-xxxx", {"k": 12}]})
    assert event == {"event": "x", "detail": [REDACTED, {"k": 12}]}
    scrubber.set_secrets([])
    assert scrubber.scrub("pw-0005-xxxxx") == "pw-0005-xxxxx"
