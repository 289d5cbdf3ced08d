"""A simulated GoIP SMS Server fleet: its servers, their two profiles, pushes, HTTP APIs, web
inboxes, relayed USSD and remote commands, and the GoIP devices' status pages."""

from goipd.sim.common import SimError
from goipd.sim.goip.devices import DEVICE_FAULTS, SimDevice
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
from goipd.sim.goip.relay import RELAY_KEYS
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
    "DEVICE_FAULTS",
    "ENGINES",
    "FAULT_MODES",
    "FLEET_KEY",
    "PROFILES",
    "PROFILE_DOCUMENT",
    "PROFILE_KEYS",
    "PROFILE_V1284",
    "RELAY_KEYS",
    "Inbox",
    "PhpReply",
    "ReceiveRow",
    "RunningSimulator",
    "SimConflict",
    "SimDevice",
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
