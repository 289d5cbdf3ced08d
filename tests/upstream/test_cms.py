"""The CMS ERROR table (Appendix A of the GoIP SMS Server JSON API) and its classification."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from goipd.upstream import cms
from goipd.upstream.cms import CMS_CODES, CmsClass, CmsCode, all_codes, classify, lookup, meaning

# Appendix A has 106 rows; 312 appears twice, so 105 distinct codes, 1 to 543.
EXPECTED_CODES = 105

# Rows copied from Appendix A (markdown escapes and trailing blanks removed).
APPENDIX_SAMPLE = {
    1: "Unassigned (unallocated) number",
    8: "Operator determined barring",
    30: "Unknown Subscriber",
    42: "Congestion",
    96: "Invalid mandatory information",
    98: "Message not compatible with short message protocol state",
    144: "Data coding scheme (alphabet) not supported",
    192: "SC busy",
    197: "SM Rejected-Duplicate SM",
    211: "Memory Capacity Exceeded",
    224: "TP_FCS_APPL_ERR_START",
    319: "incorrect PUK1",
    340: "no +CNMA acknowledgement expected",
    513: "MN_SMS_TIMER_EXPIRED",
    538: "MS network connection lost",
    543: "SMS rejected By SMS CONTROL",
}


def test_table_size_and_range() -> None:
    rows = all_codes()
    assert len(rows) == len(CMS_CODES) == EXPECTED_CODES
    assert [row.code for row in rows] == sorted(CMS_CODES)
    assert rows[0].code == 1
    assert rows[-1].code == 543


@pytest.mark.parametrize(("code", "text"), sorted(APPENDIX_SAMPLE.items()))
def test_meanings_are_verbatim(code: int, text: str) -> None:
    assert meaning(code) == text
    assert CMS_CODES[code].code == code


def test_duplicate_312_keeps_both_meanings() -> None:
    row = lookup(312)
    assert row.meaning == "PH-SIM PIN necessary / SIM PUK required"
    assert "PH-SIM PIN necessary" in row.meaning
    assert "SIM PUK required" in row.meaning
    assert row.cms_class is CmsClass.LINE


def test_meanings_are_clean() -> None:
    for row in all_codes():
        assert row.meaning == row.meaning.strip()
        assert "\\" not in row.meaning
        assert row.meaning


def test_every_class_is_used() -> None:
    assert {row.cms_class for row in all_codes()} == set(CmsClass)


@pytest.mark.parametrize(
    ("code", "expected"),
    [
        # The destination: no other line would do better.
        (1, CmsClass.RECIPIENT),
        (22, CmsClass.RECIPIENT),
        (27, CmsClass.RECIPIENT),
        (28, CmsClass.RECIPIENT),
        (30, CmsClass.RECIPIENT),
        (195, CmsClass.RECIPIENT),
        (196, CmsClass.RECIPIENT),
        (524, CmsClass.RECIPIENT),
        # The sending SIM, module or its network.
        (8, CmsClass.LINE),
        (10, CmsClass.LINE),
        (17, CmsClass.LINE),
        (38, CmsClass.LINE),
        (41, CmsClass.LINE),
        (42, CmsClass.LINE),
        (47, CmsClass.LINE),
        (50, CmsClass.LINE),
        (192, CmsClass.LINE),
        (194, CmsClass.LINE),
        (208, CmsClass.LINE),
        (213, CmsClass.LINE),
        (300, CmsClass.LINE),
        (310, CmsClass.LINE),
        (311, CmsClass.LINE),
        (313, CmsClass.LINE),
        (315, CmsClass.LINE),
        (322, CmsClass.LINE),
        (330, CmsClass.LINE),
        (331, CmsClass.LINE),
        (332, CmsClass.LINE),
        (538, CmsClass.LINE),
        # The message itself.
        (95, CmsClass.CONTENT),
        (96, CmsClass.CONTENT),
        (97, CmsClass.CONTENT),
        (99, CmsClass.CONTENT),
        (143, CmsClass.CONTENT),
        (144, CmsClass.CONTENT),
        (145, CmsClass.CONTENT),
        (159, CmsClass.CONTENT),
        (527, CmsClass.CONTENT),
        (530, CmsClass.CONTENT),
        # Ambiguous rows of the table.
        (21, CmsClass.UNKNOWN),
        (111, CmsClass.UNKNOWN),
        (127, CmsClass.UNKNOWN),
        (255, CmsClass.UNKNOWN),
        (543, CmsClass.UNKNOWN),
    ],
)
def test_classification(code: int, expected: CmsClass) -> None:
    assert classify(code) is expected
    assert classify(str(code)) is expected


@pytest.mark.parametrize("raw", ["331", " 331", "331 ", "\t331\n", "+331", "0331"])
def test_lookup_parses_strings(raw: str) -> None:
    assert lookup(raw) == CmsCode(331, "no network service", CmsClass.LINE)


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        # Not in Appendix A, though the document's own querysms example reports it.
        ("350", CmsCode(350, "unknown CMS error 350", CmsClass.UNKNOWN)),
        (350, CmsCode(350, "unknown CMS error 350", CmsClass.UNKNOWN)),
        (0, CmsCode(0, "unknown CMS error 0", CmsClass.UNKNOWN)),
        ("-1", CmsCode(-1, "unknown CMS error -1", CmsClass.UNKNOWN)),
        (None, CmsCode(-1, "unknown CMS error", CmsClass.UNKNOWN)),
        ("", CmsCode(-1, "unknown CMS error", CmsClass.UNKNOWN)),
        ("   ", CmsCode(-1, "unknown CMS error", CmsClass.UNKNOWN)),
        ("abc", CmsCode(-1, "unknown CMS error abc", CmsClass.UNKNOWN)),
        ("3.5", CmsCode(-1, "unknown CMS error 3.5", CmsClass.UNKNOWN)),
        ("1e3", CmsCode(-1, "unknown CMS error 1e3", CmsClass.UNKNOWN)),
        ("٣٣١", CmsCode(-1, "unknown CMS error ٣٣١", CmsClass.UNKNOWN)),  # Arabic-Indic digits
        ("33\x001", CmsCode(-1, "unknown CMS error 33?1", CmsClass.UNKNOWN)),
        (True, CmsCode(-1, "unknown CMS error <bool>", CmsClass.UNKNOWN)),
    ],
)
def test_lookup_unknown(raw: str | int | None, expected: CmsCode) -> None:
    assert lookup(raw) == expected
    assert meaning(raw) == expected.meaning
    assert classify(raw) is CmsClass.UNKNOWN


def test_lookup_bounds_what_it_echoes() -> None:
    hostile = "9" * 10_000
    row = lookup(hostile)
    assert row.code == -1
    assert row.meaning == "unknown CMS error " + "9" * 32
    huge = lookup(10**5000)  # str() of this would raise
    assert huge.code == -1
    assert huge.cms_class is CmsClass.UNKNOWN


def test_table_is_read_only() -> None:
    with pytest.raises(TypeError):
        cms.CMS_CODES[1] = CmsCode(1, "x", CmsClass.LINE)  # type: ignore[index]


@given(st.one_of(st.text(), st.integers(), st.none(), st.integers().map(str)))
def test_lookup_never_raises(raw: str | int | None) -> None:
    row = lookup(raw)
    assert isinstance(row.cms_class, CmsClass)
    assert len(row.meaning) <= len("unknown CMS error ") + 32 or row.code in CMS_CODES
    if row.code in CMS_CODES:
        assert row is CMS_CODES[row.code]
