"""Several instances on one ledger: the default instance id."""

from __future__ import annotations

import re

from goipd.fleet.ha import default_instance_id


def test_the_default_instance_id_is_the_host_and_on_postgresql_a_new_suffix() -> None:
    first, second = default_instance_id(), default_instance_id()
    assert first != second
    assert first.rsplit("-", 1)[0] == second.rsplit("-", 1)[0]
    assert re.fullmatch(r"[A-Za-z0-9_.-]{1,64}", first)
    assert default_instance_id(shared=False) == first.rsplit("-", 1)[0]
