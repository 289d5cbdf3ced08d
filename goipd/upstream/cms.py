"""The CMS ERROR codes a GoIP reports for a failed send, and what each one means for routing.

The table is Appendix A of the GoIP SMS Server JSON API, verbatim (markdown escapes and trailing
blanks removed); the class of each code sits on the same row, so a review of a classification is
a review of data. The codes are the RP-causes of 3GPP TS 24.011 (1–127), the TP-FCS values of
TS 23.040 (128–255), the +CMS ERROR values of TS 27.005 (300–340) and modem-stack codes (512+).
The RP-causes of a mobile-originated send mostly describe the sender (our SIM), not the
recipient: that is why barring and subscription causes are line faults here.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from types import MappingProxyType
from typing import Final


class CmsClass(StrEnum):
    RECIPIENT = "recipient"
    """The destination cannot take the message: fail, don't retry."""
    LINE = "line"
    """SIM, module or network fault of the sending line: retry on another line, count toward
    quarantining this one."""
    CONTENT = "content"
    """The message as built is refused, whichever line sends it: fail."""
    UNKNOWN = "unknown"
    """Cause unclear, or not in the table: retry once."""


@dataclass(frozen=True, slots=True)
class CmsCode:
    code: int
    meaning: str
    cms_class: CmsClass


_RCPT: Final = CmsClass.RECIPIENT
_LINE: Final = CmsClass.LINE
_CONTENT: Final = CmsClass.CONTENT
_UNKNOWN: Final = CmsClass.UNKNOWN

_TABLE: Final[tuple[tuple[int, str, CmsClass], ...]] = (
    # RP-causes (TS 24.011 Annex E). Only the SMSC's number and subscriber checks speak of the
    # recipient; a line that is not registered never gets this far, so 28/30 are about the
    # destination. 8, 10 and 50 mean our SIM is barred or lacks the SMS service (typically out
    # of credit): another SIM may succeed, and this one must stop taking traffic.
    (1, "Unassigned (unallocated) number", _RCPT),
    (8, "Operator determined barring", _LINE),
    (10, "Call barred", _LINE),
    (17, "Network failure", _LINE),
    # 21 is the SMSC's catch-all refusal: SIM blocked for spam, no credit, keyword filter or a bad
    # destination all show up as 21, so one retry elsewhere without blaming the line.
    (21, "Short message transfer rejected", _UNKNOWN),
    (22, "Memory capacity exceeded", _RCPT),
    (27, "Destination out of service", _RCPT),
    (28, "Unidentified subscriber", _RCPT),
    # 29/69: the line's network lacks a facility; another operator may have it, but the SIM is
    # not broken, so no quarantine count.
    (29, "Facility rejected", _UNKNOWN),
    (30, "Unknown Subscriber", _RCPT),
    # Network out of order, temporary failure, congestion: transient on this line's network.
    (38, "Network out of order", _LINE),
    (41, "Temporary failure", _LINE),
    (42, "Congestion", _LINE),
    (47, "Resources unavailable, unspecified", _LINE),
    (50, "Requested facility not subscribed", _LINE),
    (69, "Requested facility not implemented", _UNKNOWN),
    (81, "Invalid short message reference value", _UNKNOWN),
    # Invalid-message causes: the TPDU (text, coding, length) is what the network refuses.
    (95, "Invalid message, unspecified", _CONTENT),
    (96, "Invalid mandatory information", _CONTENT),
    (97, "Message type non-existent or not implemented", _CONTENT),
    (98, "Message not compatible with short message protocol state", _CONTENT),
    (99, "Information element non-existent or not implemented", _CONTENT),
    (111, "Protocol error, unspecified", _UNKNOWN),
    (127, "Interworking unspecified", _UNKNOWN),
    # TP-FCS (TS 23.040): the SMSC refuses the message's PID/DCS/class/command fields, which are
    # the same whichever line sends it.
    (128, "Telematic interworking not supported", _CONTENT),
    (129, "Short message type 0 not supported", _CONTENT),
    (130, "Cannot replace short message", _CONTENT),
    (143, "Unspecified TP-PID error", _CONTENT),
    (144, "Data coding scheme (alphabet) not supported", _CONTENT),
    (145, "Message class not supported", _CONTENT),
    (159, "Unspecified TP-DCS error", _CONTENT),
    (160, "Command cannot be actioned", _CONTENT),
    (161, "Command unsupported", _CONTENT),
    (175, "Unspecified TP-Command error", _CONTENT),
    (176, "TPDU not supported", _CONTENT),
    # The SMSC of this line's operator is busy, failing, or not open to this SIM.
    (192, "SC busy", _LINE),
    (193, "No SC subscription", _LINE),
    (194, "SC system failure", _LINE),
    (195, "Invalid SME address", _RCPT),
    (196, "Destination SME barred", _RCPT),
    # The SMSC already holds this very message: resending it elsewhere would duplicate it.
    (197, "SM Rejected-Duplicate SM", _CONTENT),
    # The validity period is set by the gateway's module settings and refused by this operator's
    # SMSC: another line (other operator or settings) may pass.
    (198, "TP-VPF not supported", _LINE),
    (199, "TP-VP not supported", _LINE),
    # SIM storage and SIM toolkit faults of the sending module.
    (208, "SIM SMS storage full", _LINE),
    (209, "No SMS storage capability in SIM", _LINE),
    (210, "Error in MS", _LINE),
    (211, "Memory Capacity Exceeded", _LINE),
    (212, "SIM Application Toolkit Busy", _LINE),
    (213, "SIM data download error", _LINE),
    # Application-specific range bounds and "unspecified": nothing to go on.
    (224, "TP_FCS_APPL_ERR_START", _UNKNOWN),
    (254, "TP_FCS_APPL_ERR_STOP", _UNKNOWN),
    (255, "TP_FCS_UNSPECIFIED", _UNKNOWN),
    # +CMS ERROR of TS 27.005: the module (ME), its SIM, its memory or its network service.
    (300, "ME failure", _LINE),
    (301, "SMS service of ME reserved", _LINE),
    (302, "operation not allowed", _LINE),
    (303, "operation not supported", _LINE),
    (305, "invalid text mode parameter", _LINE),
    (310, "SIM not inserted", _LINE),
    (311, "SIM PIN required", _LINE),
    # Appendix A lists 312 twice; both meanings are kept (docs/goip-sms-server.md#cms-error-codes).
    (312, "PH-SIM PIN necessary / SIM PUK required", _LINE),
    (313, "SIM failure", _LINE),
    (314, "SIM busy", _LINE),
    (315, "SIM wrong", _LINE),
    (317, "SIM PIN2 required", _LINE),
    (318, "SIM PUK2 required", _LINE),
    (319, "incorrect PUK1", _LINE),
    (320, "memory failure", _LINE),
    (321, "invalid memory index", _LINE),
    (322, "memory full", _LINE),
    (330, "SMSC address unknown", _LINE),
    (331, "no network service", _LINE),
    (332, "network timeout", _LINE),
    (340, "no +CNMA acknowledgement expected", _LINE),
    # Modem-stack codes. An RP-ACK reported as an error may mean the SMSC took the message, and
    # the forward-available codes concern received messages: neither says anything clear.
    (512, "MN_SMS_RP_ACK", _UNKNOWN),
    (513, "MN_SMS_TIMER_EXPIRED", _LINE),
    (514, "MN_SMS_FORW_AVAIL_FAILED", _UNKNOWN),
    (515, "MN_SMS_FORW_AVAIL_ABORTED", _UNKNOWN),
    # The module's own check of the TPDU its firmware built, or a Phase 1 network unable to carry
    # it: both belong to the line, not to the message.
    (516, "MS invalid TP-Message-Type-Indicator", _LINE),
    (517, "MS no TP-Status-Report in Phase 1", _LINE),
    (518, "MS no TP-Reject-Duplicate in Phase 1", _LINE),
    (519, "MS no TP-Reply-Path in Phase 1", _LINE),
    (520, "MS no TP-User-Data-Header in Phase 1", _LINE),
    (521, "MS missing TP-Validity-Period", _LINE),
    (522, "MS invalid TP-Service-Centre-Time-Stamp", _LINE),
    # The destination number itself is missing or malformed.
    (523, "MS missing TP-Destination-Address", _RCPT),
    (524, "MS invalid TP-Destination-Address", _RCPT),
    # The SIM's SMSC number is missing or wrong (as 330).
    (525, "MS missing Service-Centre-Address", _LINE),
    (526, "MS invalid Service-Centre-Address", _LINE),
    # The text: alphabet, length, missing or too long user data.
    (527, "MS invalid alphabet", _CONTENT),
    (528, "MS invalid TP-User-Data-Length", _CONTENT),
    (529, "MS missing TP-User-Data", _CONTENT),
    (530, "MS TP-User-Data too long", _CONTENT),
    (531, "MS no Command-Request in Phase 1", _LINE),
    (532, "MS Cmd-Req invalid TP-Destination-Address", _RCPT),
    (533, "MS Cmd-Req invalid TP-User-Data-Length", _CONTENT),
    (534, "MS Cmd-Req invalid TP-User-Data", _CONTENT),
    (535, "MS Cmd-Req invalid TP-Command-Type", _CONTENT),
    # The module could not set up, or lost, its connection to the network, or is still busy
    # with an earlier send.
    (536, "MN MNR creation failed", _LINE),
    (537, "MS CMM creation failed", _LINE),
    (538, "MS network connection lost", _LINE),
    (539, "MS pending MO SM transfer", _LINE),
    # "OK" errors, SIM data download, and the SIM's MO-SMS control applet refusing (it may judge
    # the destination or the SIM's own policy): unclear, so one retry elsewhere.
    (540, "RP-Error OK", _UNKNOWN),
    (541, "RP-Error OK no icon display", _UNKNOWN),
    (542, "SMS-PP Unspecified", _UNKNOWN),
    (543, "SMS rejected By SMS CONTROL", _UNKNOWN),
)

CMS_CODES: Final[Mapping[int, CmsCode]] = MappingProxyType(
    {code: CmsCode(code, text, klass) for code, text, klass in _TABLE}
)

# Reports are untrusted: only a short run of ASCII digits is taken for a code, so a hostile
# string can neither be expensive to parse nor become an unbounded metric label.
_CODE_RE: Final = re.compile(r"[+-]?[0-9]{1,9}", re.ASCII)
_MAX_ECHO: Final = 32


def _echo(raw: str) -> str:
    return "".join(ch if ch.isprintable() else "?" for ch in raw[:_MAX_ECHO])


def _unknown(code: int, raw: str) -> CmsCode:
    meaning = f"unknown CMS error {_echo(raw)}".rstrip()
    return CmsCode(code, meaning, CmsClass.UNKNOWN)


def lookup(code: str | int | None) -> CmsCode:
    """The table row for `code`, or an UNKNOWN row (code -1 if unparseable); never raises."""
    if isinstance(code, bool) or not isinstance(code, int | str):
        # bool is an int, but True is no error code; other types can only come from a bug
        # upstream, and a report must still be recorded.
        raw = "" if code is None else f"<{type(code).__name__}>"
        return _unknown(-1, raw)
    if isinstance(code, int):
        if code in CMS_CODES:
            return CMS_CODES[code]
        # str() of a huge int raises (and would be a huge label): keep only sane magnitudes.
        if -(10**9) < code < 10**9:
            return _unknown(code, str(code))
        return _unknown(-1, "<out of range>")
    text = code.strip()
    if _CODE_RE.fullmatch(text):
        number = int(text)
        row = CMS_CODES.get(number)
        return row if row is not None else _unknown(number, text)
    return _unknown(-1, text)


def meaning(code: str | int | None) -> str:
    return lookup(code).meaning


def classify(code: str | int | None) -> CmsClass:
    return lookup(code).cms_class


def all_codes() -> list[CmsCode]:
    """Every row of the table by code, e.g. for the goipd_cms_error_info metric."""
    return sorted(CMS_CODES.values(), key=lambda row: row.code)
