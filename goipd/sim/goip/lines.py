"""One SIM line of a simulated SMS Server and one recipient of a task: the line's fields and
their checks, its quotas, and the send results and error codes a recipient can end with."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields
from typing import Any, Final

from goipd.sim.common import SimError

REG_STATES: Final = ("LOGIN", "LOGOUT", "")
REBOOT_RESULTS: Final = ("registered", "unregistered", "offline")
"""After a reboot the line is online and LOGIN, online but not registered, or stays offline."""
LINE_LOST_CODE: Final = "331"
"""err_code when the assigned line stopped being usable before its turn came ("no network
service"): goipd classes it as a line fault and retries elsewhere, which is what it should do."""
NO_LINE_CODE: Final = "302"
"""err_code for a recipient no line had quota left for ("operation not allowed")."""
DEVICE_MAX_BYTES: Final = 3000
"""A GoIP takes at most this much UTF-8 text per send command (public `styryl/goip`)."""
TOO_LONG_CODE: Final = "500"
"""err_code for a text the device refuses as too long. An assumption: what a real GoIP answers
is not known; "500" is the vendor's "unknown error". goipd never sends such texts through GoIP."""


@dataclass
class SimLine:
    line_id: str
    online: bool = True
    reg: str = "LOGIN"
    remain_sms: int = -1
    day_remain_sms: int = -1
    provider: str = "default"
    fail_code: str | None = None
    """Every send on this line fails with this CMS error code."""
    receipt: bool = True
    """Push a delivery receipt report shortly after each successful send."""
    num: str = ""
    """The SIM's own number; the v1.28.4 profile lists it in querylines (as some builds do)."""
    ussd: dict[str, str] = field(default_factory=dict)
    """USSD code -> the carrier's answer, as en/ussd.php relays it (relay.py); another code is
    answered `ERROR USSD send failed!`."""
    ussd_error: str | None = None
    """Every USSD on this line is answered `ERROR <ussd_error>`."""
    responds: bool = True
    """The line's GoIP answers what the engine relays; false: USSD gets `ERROR term no
    response` after the server's `ussd_timeout`, api.php commands `ERROR:time out` after its
    `command_timeout`."""
    reboot_result: str = "registered"
    """How the line comes back from a module or device reboot (REBOOT_RESULTS)."""
    csq: int = 25
    """The device's signal reading (status.xml `gsm_signal`): 0-31, 99 unknown."""
    operator: str = ""
    """The network the device shows (`gsm_cur_oper`); empty: the line's provider."""
    sim_present: bool = True
    """The device sees a SIM in the slot (`gsm_sim`)."""
    module_up: bool = True
    """The GSM module is powered (`module_status`)."""

    @property
    def usable(self) -> bool:
        return (
            self.online
            and self.reg == "LOGIN"
            and self.remain_sms != 0
            and self.day_remain_sms != 0
        )

    def querylines_entry(self) -> dict[str, str]:
        return {
            "goip_line": self.line_id,
            "online": "1" if self.online else "0",
            "reg": self.reg,
            "remain_sms": str(self.remain_sms),
            "day_remain_sms": str(self.day_remain_sms),
        }

    def state(self) -> dict[str, Any]:
        return {**asdict(self), "usable": self.usable}

    @classmethod
    def from_spec(cls, spec: Mapping[str, Any]) -> SimLine:
        if not isinstance(spec, Mapping):
            raise SimError("a line must be an object")
        unknown = set(spec) - _LINE_FIELDS
        if unknown:
            raise SimError(f"unknown line fields: {', '.join(sorted(unknown))}")
        if "line_id" not in spec:
            raise SimError("a line needs a line_id")
        return cls(**{key: line_value(key, value) for key, value in spec.items()})


_LINE_FIELDS: Final = frozenset(f.name for f in fields(SimLine))


def line_value(key: str, value: Any) -> Any:
    """Checks one line field; the control API is how tests break things, so typos must fail."""
    if key == "line_id":
        if not isinstance(value, str) or not value or "/" in value:
            raise SimError("line_id must be a non-empty string without '/'")
    elif key in ("online", "receipt", "responds", "sim_present", "module_up"):
        if not isinstance(value, bool):
            raise SimError(f"{key} must be true or false")
    elif key == "reg":
        if value not in REG_STATES:
            raise SimError(f"reg must be one of {list(REG_STATES)}")
    elif key in ("remain_sms", "day_remain_sms"):
        # bool is an int subclass; `true` as a quota is a mistake, not 1.
        if not isinstance(value, int) or isinstance(value, bool) or value < -1:
            raise SimError(f"{key} must be an integer >= -1 (-1 = unlimited)")
    elif key == "ussd":
        if not isinstance(value, Mapping) or not all(
            isinstance(code, str) and code and isinstance(answer, str)
            for code, answer in value.items()
        ):
            raise SimError("ussd must be an object of USSD code -> answer text")
        return dict(value)
    elif key == "ussd_error":
        if value is not None and (not isinstance(value, str) or not value):
            raise SimError("ussd_error must be a message or null")
    elif key == "reboot_result":
        if value not in REBOOT_RESULTS:
            raise SimError(f"reboot_result must be one of {list(REBOOT_RESULTS)}")
    elif key == "csq":
        if (
            isinstance(value, bool)
            or not isinstance(value, int)
            or not (0 <= value <= 31 or value == 99)
        ):
            raise SimError("csq must be 0-31, or 99 (unknown)")
    elif key in ("provider", "num", "operator"):
        if not isinstance(value, str):
            raise SimError(f"{key} must be a string")
    elif key == "fail_code":
        if isinstance(value, int) and not isinstance(value, bool):
            return str(value)
        if value is not None and (not isinstance(value, str) or not value):
            raise SimError("fail_code must be a CMS code string or null")
    else:
        raise SimError(f"unknown line field {key!r}")
    return value


@dataclass
class SubTask:
    task_id: str
    number: str
    content: str
    goip_line: str | None
    """The line this recipient was given at accept time; None when no line had quota left."""
    send: str = "unsend"
    err_code: str | None = None
    receipt: bool = False
    parts: int = 1
    """SMS parts it takes off a line's quotas (the v1.28.4 profile counts them; else 1)."""
    stored: bool = False
    """A `sends` row of the v1.28.4 profile: the engine gives it a line when it sends it, so
    `goip_line` is None until then."""
    send_time: str = ""
    """v1.28.4: the row's `time` column (when it was stored), querysms' `sendTime`."""
    stored_at: float = 0.0
    """v1.28.4: when it was stored (monotonic); the engine gives up on it after a day."""
    ready_at: float = 0.0
    """v1.28.4: the engine does not look at it before this (monotonic): a slow engine."""
    pin_line: str | None = None
    """v1.28.4: the line the task named (message.goipid): only that line may send it."""
    pin_provider: str | None = None
    """v1.28.4: the provider the task named (message.prov): only its lines may send it."""

    @property
    def sub_task_id(self) -> str:
        return f"{self.task_id}.{self.number}"

    def report(self) -> dict[str, str]:
        """The report object of the vendor doc (§2.3), as pushed and as listed by querysms."""
        shown = self.goip_line if self.send != "unsend" and self.goip_line else "null"
        body = {"taskID": self.sub_task_id, "goip_line": shown, "send": self.send}
        if self.err_code is not None:
            body["err_code"] = self.err_code
        if self.receipt:
            body["receipt"] = "1"
        return body


def live(line: SimLine) -> tuple[bool, str]:
    """(alive, gsm_status) as a running engine writes them for the device's state."""
    return (True, line.reg) if line.online else (False, "")


def has_quota(line: SimLine, parts: int, pending: int = 0) -> bool:
    """Both quotas (-1: none) leave room for `parts` more beyond the `pending` ones."""
    return all(
        quota < 0 or quota - pending >= parts for quota in (line.remain_sms, line.day_remain_sms)
    )


def take_quota(line: SimLine, parts: int) -> None:
    if line.remain_sms > 0:
        line.remain_sms = max(0, line.remain_sms - parts)
    if line.day_remain_sms > 0:
        line.day_remain_sms = max(0, line.day_remain_sms - parts)
