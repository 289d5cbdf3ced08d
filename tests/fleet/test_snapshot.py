"""A server's state as one snapshot: a follower copies it silently and keeps what it learned
itself."""

from __future__ import annotations

import pytest
from structlog.testing import capture_logs

from goipd.fleet import snapshot
from goipd.fleet.registry import LineRegistry, LineState
from goipd.upstream.errors import ErrorReason
from goipd.upstream.goip import LineStatus

NOW = 1_800_000_000.0


def status(line_id: str, online: bool = True, day: int | None = None) -> LineStatus:
    return LineStatus(line_id, online, online, "LOGIN" if online else "LOGOUT", None, day)


def test_a_snapshot_copies_the_server_silently_and_keeps_what_the_follower_learned() -> None:
    owner, follower = LineRegistry(["hq"]), LineRegistry(["hq"])
    follower.servers["hq"].owned = False
    owner.apply_poll("hq", [status("G1"), status("G2", day=5)], NOW)
    owner.apply_poll("hq", [status("G1", online=False), status("G2", day=4)], NOW + 1)
    with capture_logs() as logs:
        snapshot.apply(follower, "hq", snapshot.encode(owner.servers["hq"]))
    assert logs == [], "copying a snapshot logs nothing: the owner logged the transitions"
    copied = follower.servers["hq"]
    assert copied.up and copied.polled and copied.last_poll == NOW + 1
    g1, g2 = copied.lines["G1"], copied.lines["G2"]
    assert g1.state is LineState.OFFLINE and g1.online_changes == 1 and g1.first_seen == NOW
    assert g2.day_remain_sms == 4 and g2.state is LineState.REGISTERED

    # What the follower learned itself (a quarantine after errors it saw) survives the next
    # copy; a copy that changes no line set does not make routing rebuild its order.
    g2.quarantined_until = NOW + 600
    generation = follower.generation
    owner.apply_poll("hq", [status("G1"), status("G2", day=3)], NOW + 2)
    snapshot.apply(follower, "hq", snapshot.encode(owner.servers["hq"]))
    assert copied.lines["G2"] is g2 and g2.quarantined_until == NOW + 600 and g2.day_remain_sms == 3
    assert copied.lines["G1"].online and follower.generation == generation

    # A line gone and a server failing travel too, and reshape routing.
    owner.apply_poll("hq", [status("G1")], NOW + 3)
    owner.apply_failure("hq", ErrorReason.TIMEOUT, "querylines: no reply", NOW + 4)
    snapshot.apply(follower, "hq", snapshot.encode(owner.servers["hq"]))
    assert copied.lines["G2"].gone and follower.generation > generation
    assert not copied.up and copied.last_error_reason is ErrorReason.TIMEOUT

    for damaged in ("{", '{"format": 99}', '{"format": 1, "up": true}', "[]"):
        with pytest.raises(snapshot.SnapshotError):
            snapshot.apply(follower, "hq", damaged)
