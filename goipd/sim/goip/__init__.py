"""A simulated GoIP SMS Server fleet: its servers, their two profiles, pushes, HTTP APIs and
web inboxes."""

from goipd.sim.common import SimError
from goipd.sim.goip.fleet import SimFleet
from goipd.sim.goip.http import (
    FLEET_KEY,
    RunningSimulator,
    build_app,
    is_loopback,
    start_simulator,
)
from goipd.sim.goip.inbox import Inbox, ReceiveRow
from goipd.sim.goip.lines import SimLine, SubTask
from goipd.sim.goip.php import PhpReply
from goipd.sim.goip.server import SimServer
from goipd.sim.goip.specs import demo_spec, synthetic_spec
from goipd.sim.goip.state import (
    APIS,
    DEFAULT_PROFILE,
    ENGINES,
    FAULT_MODES,
    PROFILE_DOCUMENT,
    PROFILE_KEYS,
    PROFILE_V1284,
    PROFILES,
    SimConflict,
)

__all__ = [
    "APIS",
    "DEFAULT_PROFILE",
    "ENGINES",
    "FAULT_MODES",
    "FLEET_KEY",
    "PROFILES",
    "PROFILE_DOCUMENT",
    "PROFILE_KEYS",
    "PROFILE_V1284",
    "Inbox",
    "PhpReply",
    "ReceiveRow",
    "RunningSimulator",
    "SimConflict",
    "SimError",
    "SimFleet",
    "SimLine",
    "SimServer",
    "SubTask",
    "build_app",
    "demo_spec",
    "is_loopback",
    "start_simulator",
    "synthetic_spec",
]
