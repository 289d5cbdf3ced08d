"""How many SMS a text costs, counted the way operators bill it, and how to cut it into them.

A text is sent in the GSM 03.38 default alphabet (7-bit septets) when every character is in its
basic or extension table, else in UCS-2 (UTF-16 code units). A single SMS holds 140 octets:
160 septets or 70 units. Concatenated parts lose 6 octets to the user-data header: 153 septets or
67 units each. An extension character is sent as ESC + char and an astral character as a
surrogate pair; neither pair may straddle two parts, so a part can end one unit short.
National language shift tables are not considered: the count is for the default alphabet.
"""

from __future__ import annotations

from bisect import bisect_right
from dataclasses import dataclass
from itertools import accumulate, pairwise
from typing import Final, Literal

GSM7_SINGLE: Final = 160
GSM7_PART: Final = 153
UCS2_SINGLE: Final = 70
UCS2_PART: Final = 67

# The 128 positions of the GSM 03.38 basic table, less 0x1B (the escape to the extension table).
GSM7_BASIC: Final = frozenset(
    "@£$¥èéùìòÇ\nØø\rÅå"
    "Δ_ΦΓΛΩΠΨΣΘΞÆæßÉ"
    " !\"#¤%&'()*+,-./"
    "0123456789:;<=>?"
    "¡ABCDEFGHIJKLMNOPQRSTUVWXYZÄÖÑÜ§"
    "¿abcdefghijklmnopqrstuvwxyzäöñüà"
)
# Each costs two septets (ESC + char).
GSM7_EXTENSION: Final = frozenset("\f^{}\\[]~|€")
_GSM7_ALL: Final = GSM7_BASIC | GSM7_EXTENSION
_EXTENSION_CHARS: Final = "".join(sorted(GSM7_EXTENSION))
_LATIN1_COSTS: Final = bytes(2 if chr(byte) in GSM7_EXTENSION else 1 for byte in range(256))
_PLANE_COSTS: Final = bytes([1] + [2] * 255)

Encoding = Literal["GSM-7", "UCS-2"]


@dataclass(frozen=True, slots=True)
class SegmentInfo:
    encoding: Encoding
    units: int
    """Septets for GSM-7, UTF-16 code units for UCS-2."""
    segments: int
    chars: int
    """Code points, as Python counts them."""


def is_gsm7(text: str) -> bool:
    return _GSM7_ALL.issuperset(text)


def _utf16_units(text: str) -> int:
    # surrogatepass: a lone surrogate (JSON allows "\ud800") must count, not raise.
    return len(text.encode("utf-16-le", "surrogatepass")) // 2


def _plan(text: str) -> tuple[Encoding, int, int]:
    """Encoding, units, and the units of one part if the text needs several."""
    if is_gsm7(text):
        return "GSM-7", len(text) + sum(map(text.count, _EXTENSION_CHARS)), GSM7_PART
    return "UCS-2", _utf16_units(text), UCS2_PART


def _single_limit(encoding: Encoding) -> int:
    return GSM7_SINGLE if encoding == "GSM-7" else UCS2_SINGLE


def _costs(text: str, encoding: Encoding) -> bytes:
    """Units of each character, one byte per character, computed without a Python loop."""
    if encoding == "GSM-7":
        # One byte per character: € (the only double outside Latin-1) becomes another double,
        # the Greek capitals (singles outside Latin-1) become "?".
        return text.replace("€", "^").encode("latin-1", "replace").translate(_LATIN1_COSTS)
    # Byte 2 of a UTF-32 code point is its plane: non-zero means outside the BMP.
    return text.encode("utf-32-le", "surrogatepass")[2::4].translate(_PLANE_COSTS)


def _part_starts(text: str, encoding: Encoding, part: int) -> list[int]:
    """Index where each part after the first starts, filling every part greedily.

    A part ends after the last character whose running unit count still fits, so a
    two-unit character that would straddle the boundary opens the next part instead.
    """
    ends = list(accumulate(_costs(text, encoding)))
    starts: list[int] = []
    done = 0
    while ends[-1] - done > part:
        start = bisect_right(ends, done + part)
        starts.append(start)
        done = ends[start - 1]
    return starts


def analyse(text: str) -> SegmentInfo:
    """Encoding, size and SMS count of `text`; an empty text is still one (empty) SMS."""
    encoding, units, part = _plan(text)
    if units <= _single_limit(encoding):
        segments = 1
    elif units == len(text):  # no two-unit character: plain arithmetic
        segments = -(-units // part)
    else:
        segments = len(_part_starts(text, encoding, part)) + 1
    return SegmentInfo(encoding, units, segments, len(text))


def split(text: str) -> list[str]:
    """The parts `text` is sent as, in order; they join back to `text`. "" gives [""]."""
    encoding, units, part = _plan(text)
    if units <= _single_limit(encoding):
        return [text]
    if units == len(text):
        return [text[start : start + part] for start in range(0, len(text), part)]
    bounds = [0, *_part_starts(text, encoding, part), len(text)]
    return [text[start:end] for start, end in pairwise(bounds)]
