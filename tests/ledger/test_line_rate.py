"""The per-line send rate and quota every instance counts against, as pure functions."""

from __future__ import annotations

from goipd.ledger.line_rate import grant, minute_bucket, quota_grant


def test_a_quota_counts_every_send_since_its_poll() -> None:
    minute = 1000
    polled_at = minute * 60.0 + 30  # half-way through minute 1000
    # Sends of the poll's own minute may be after it: they count (a few are given up rather
    # than overshot); earlier minutes were seen by the poll.
    assert quota_grant({999: 7, 1000: 2, 1001: 1}, 1001, (10, polled_at)) == 7
    # A poll 10 s into a minute may come from a clock a little ahead: the minute before counts.
    assert quota_grant({999: 7, 1000: 2}, 1000, (10, minute * 60.0 + 5)) == 1
    assert quota_grant({1000: 12}, 1000, (10, polled_at)) == 0
    # A poll older than the buckets kept is not trusted.
    assert quota_grant({}, 1000 + 61, (10, polled_at)) == 0


def test_the_sliding_minute_weighs_the_previous_bucket() -> None:
    minute, weight = minute_bucket(600.0 * 60 + 15)
    assert (minute, weight) == (600, 0.75)
    # 8 sends in the previous minute count as 6 a quarter into this one: 4 of 10 are left.
    assert grant({599: 8, 600: 0}, minute, weight, 9, 10) == 4
    assert grant({599: 8, 600: 4}, minute, weight, 9, 10) == 0
    assert grant({}, minute, weight, 9, 10) == 9
