"""The recipient fast path against phonenumbers itself: for every input the same E.164 number,
or the same refusal with the same text, as the original parse-and-validate; and the usual
shapes answered without phonenumbers.parse."""

from __future__ import annotations

import functools
import re
from collections.abc import Callable
from typing import Any

import phonenumbers
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from phonenumbers import PhoneMetadata, PhoneNumber, PhoneNumberFormat, PhoneNumberType

from goipd.accept.numbers import normalise_number
from goipd.problem import Problem, json_kind

WHERE = "to[3]"
# Leading zeros (IT), a country code shared by 25 regions (US), varied lengths (GB, DE), trunk
# prefixes with carrier codes (CN), no trunk prefix (HK), long numbers (ID).
REGIONS = ("TW", "CN", "US", "GB", "IT", "DE", "HK", "ID", "VN", "TH")
ALL_REGIONS = tuple(sorted(phonenumbers.SUPPORTED_REGIONS))
# Codes parse treats apart from the supported ones.
ODD_REGIONS = ("tw", "ZZ", "001", "")
COUNTRY_CODES = tuple(sorted(phonenumbers.COUNTRY_CODE_TO_REGION_CODE))
TYPES = (
    PhoneNumberType.FIXED_LINE,
    PhoneNumberType.MOBILE,
    PhoneNumberType.TOLL_FREE,
    PhoneNumberType.PREMIUM_RATE,
    PhoneNumberType.SHARED_COST,
    PhoneNumberType.VOIP,
    PhoneNumberType.PERSONAL_NUMBER,
    PhoneNumberType.PAGER,
    PhoneNumberType.UAN,
    PhoneNumberType.VOICEMAIL,
)


def _examples() -> list[tuple[str, PhoneNumber]]:
    """(region, number) of every example phonenumbers has, "001" for the non-geographic."""
    found = [
        (region, number)
        for region in ALL_REGIONS
        for kind in TYPES
        if (number := phonenumbers.example_number_for_type(region, kind)) is not None
    ]
    for code in sorted(phonenumbers.COUNTRY_CODES_FOR_NON_GEO_REGIONS):
        number = phonenumbers.example_number_for_non_geo_entity(code)
        if number is not None:
            found.append(("001", number))
    return found


EXAMPLES = _examples()


def reference(raw: object, region: str, where: str) -> str:
    """normalise_number as it was before the fast path (goipd/accept/validate.py)."""
    if not isinstance(raw, str):
        raise Problem(422, f"{where}: expected a phone number as a string, got {json_kind(raw)}")
    if len(raw) > 32:
        raise Problem(422, f"{where}: a phone number has at most 32 characters")
    try:
        parsed = phonenumbers.parse(raw, region)
    except phonenumbers.NumberParseException:
        raise Problem(422, f"{where}: {raw!r} is not a phone number") from None
    if not phonenumbers.is_valid_number(parsed):
        raise Problem(422, f"{where}: {raw!r} is not a valid number (default region {region})")
    return phonenumbers.format_number(parsed, phonenumbers.PhoneNumberFormat.E164)


def outcome(
    normalise: Callable[[object, str, str], str], raw: object, region: str
) -> tuple[Any, ...]:
    try:
        return ("number", normalise(raw, region, WHERE))
    except Problem as exc:
        return ("problem", exc.status, exc.detail, exc.title)
    except Exception as exc:  # whatever phonenumbers raises, the fast path must raise too
        return ("raised", type(exc).__name__, str(exc))


def assert_same(raw: object, region: str) -> None:
    assert outcome(normalise_number, raw, region) == outcome(reference, raw, region), (raw, region)


def formats(number: PhoneNumber) -> set[str]:
    """The ways a client may write an example number."""
    nsn = phonenumbers.national_significant_number(number)
    code = str(number.country_code)
    return {
        phonenumbers.format_number(number, PhoneNumberFormat.E164),
        phonenumbers.format_number(number, PhoneNumberFormat.INTERNATIONAL),
        phonenumbers.format_number(number, PhoneNumberFormat.NATIONAL),
        phonenumbers.format_number(number, PhoneNumberFormat.RFC3966),
        nsn,
        "0" + nsn,
        code + nsn,
        f"+{code}0{nsn}",
        f"+{code} ({nsn[:3]}) {nsn[3:]}",
    }


DIGITS = "0123456789"
# Built once: sampled_from labels itself from all its elements, at every draw of a new one.
SOME_REGION = st.sampled_from(REGIONS)
ANY_REGION = st.sampled_from(ALL_REGIONS)
REGION = st.sampled_from((*REGIONS, *REGIONS, *ALL_REGIONS, *ODD_REGIONS))
COUNTRY_CODE = st.sampled_from(COUNTRY_CODES)
# Mostly nothing; the ones the fast path reads, and some parse gives a meaning to.
SEPARATORS = st.sampled_from(
    ["", "", "", "", "", "", " ", "-", ".", "(", ")", "  ", " - ", "/", "x", "+", "*", "#", ",", ";", "\t", "\u00a0", "_"]
)  # fmt: skip


@st.composite
def spread(draw: st.DrawFn, digits: str) -> str:
    """The digits as they are, or with separators between (and before and after) them."""
    if draw(st.booleans()):
        return digits
    return draw(SEPARATORS) + "".join(digit + draw(SEPARATORS) for digit in digits)


@functools.cache
def _patterns(region: str) -> list[str]:
    """The national number patterns of a region's number types (its general one if none)."""
    metadata = PhoneMetadata.metadata_for_region(region)
    assert metadata is not None and metadata.general_desc is not None
    descs = [
        metadata.fixed_line,
        metadata.mobile,
        metadata.toll_free,
        metadata.premium_rate,
        metadata.shared_cost,
        metadata.voip,
        metadata.personal_number,
        metadata.pager,
        metadata.uan,
        metadata.voicemail,
    ]
    found = [d.national_number_pattern for d in descs if d and d.national_number_pattern]
    return found or [metadata.general_desc.national_number_pattern or r"\d{2,17}"]


_FROM_PATTERN: dict[str, st.SearchStrategy[str]] = {}


@st.composite
def patterned(draw: st.DrawFn, regions: st.SearchStrategy[str]) -> tuple[str, int, str]:
    """(region, country code, national significant number) drawn from one of the region's
    number patterns: mostly valid numbers, which are what the fast path answers."""
    region = draw(regions)
    pattern = draw(st.sampled_from(_patterns(region)))
    if pattern not in _FROM_PATTERN:
        # ASCII: \d would draw any Unicode digit, and those are tried by the other properties.
        _FROM_PATTERN[pattern] = st.from_regex(re.compile(pattern, re.ASCII), fullmatch=True)
    nsn = draw(_FROM_PATTERN[pattern])
    return region, phonenumbers.country_code_for_region(region), nsn


@st.composite
def e164_like(draw: st.DrawFn) -> str:
    """ "+" and 1 to 17 digits: arbitrary, after a known country code, or a number of a
    region's patterns (with the trunk prefix at times, which parse strips)."""
    choice = draw(st.integers(0, 3))
    if choice == 0:
        digits = draw(st.text(DIGITS, min_size=1, max_size=17))
    elif choice == 1:
        code = str(draw(COUNTRY_CODE))
        digits = code + draw(st.text(DIGITS, min_size=0, max_size=17 - len(code)))
    else:
        _, code_number, nsn = draw(patterned(SOME_REGION if choice == 2 else ANY_REGION))
        digits = f"{code_number}{draw(st.sampled_from(['', '', '0', '1']))}{nsn}"
    return "+" + draw(spread(digits))


_IDD: dict[str, st.SearchStrategy[str]] = {}


def idd(region: str) -> st.SearchStrategy[str]:
    """The international prefixes dialled from the region, such as 002 or 019 from Taiwan."""
    if region not in _IDD:
        metadata = PhoneMetadata.metadata_for_region(region)
        assert metadata is not None and metadata.international_prefix is not None
        pattern = re.compile(metadata.international_prefix, re.ASCII)
        _IDD[region] = st.from_regex(pattern, fullmatch=True)
    return _IDD[region]


@st.composite
def national_like(draw: st.DrawFn) -> tuple[str, str]:
    """(region, number) as dialled in the region, half of them in the ten regions: arbitrary
    digits or a number of the region's patterns after nothing, a trunk prefix, a country code
    or the like; or a number of any region after an IDD and its country code."""
    region = draw(st.one_of(SOME_REGION, ANY_REGION))
    metadata = PhoneMetadata.metadata_for_region(region)
    assert metadata is not None
    code = str(metadata.country_code)
    trunk = metadata.national_prefix or ""
    kind = draw(st.integers(0, 3))
    if kind == 3:
        _, abroad, nsn = draw(patterned(ANY_REGION))
        return region, draw(spread(f"{draw(idd(region))}{abroad}{nsn}"))
    if kind == 0:
        digits = draw(st.text(DIGITS, min_size=0, max_size=15))
    else:
        _, _, digits = draw(patterned(st.just(region)))
    prefix = draw(
        st.sampled_from(
            ["", "", "", trunk, trunk, "0", "1", "00", "01", "002", "011", code, code + trunk]
        )
    )
    return region, draw(spread(prefix + digits))


EXAMPLE_TEXT = st.sampled_from([(home, sorted(formats(number))) for home, number in EXAMPLES])


@st.composite
def near_example(draw: st.DrawFn) -> tuple[str, str]:
    """(region, number): an example number in some format with its last digits replaced,
    dropped or added to, so that many are valid and many only just not."""
    home, texts = draw(EXAMPLE_TEXT)
    text = draw(st.sampled_from(texts))
    cut = draw(st.integers(0, 4))
    if cut:
        text = text[:-cut]
    text += draw(st.text(DIGITS, max_size=5))
    region = draw(st.one_of(st.just(home), REGION))
    return region, text


PHONE_TEXT = st.text(
    alphabet=st.sampled_from([*"0123456789+-() ./x#;,*~eEtTnN:=", "٣", "３", "＋", "\u00a0"]),
    max_size=34,
)


# Drawing from a region's patterns (from_regex) costs most of these tests' time: 2,000 of those,
# 4,000 of the cheaper draws, keep the file near 20 s.
def runs(count: int) -> settings:
    return settings(max_examples=count, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@runs(4000)
@given(st.one_of(st.text(max_size=40), PHONE_TEXT), REGION)
def test_any_text_gets_the_same_answer(raw: str, region: str) -> None:
    assert_same(raw, region)


@runs(2000)
@given(e164_like(), REGION)
def test_e164_like_numbers_get_the_same_answer(raw: str, region: str) -> None:
    assert_same(raw, region)


@runs(2000)
@given(national_like())
def test_national_like_numbers_get_the_same_answer(case: tuple[str, str]) -> None:
    assert_same(case[1], case[0])


@runs(4000)
@given(near_example())
def test_numbers_near_the_examples_get_the_same_answer(case: tuple[str, str]) -> None:
    assert_same(case[1], case[0])


def test_every_example_number_gets_the_same_answer_in_every_format() -> None:
    assert len(EXAMPLES) > 1000
    for home, number in EXAMPLES:
        for raw in formats(number):
            for region in {home, "TW", "US", "IT", "GB"} - {"001"}:
                assert_same(raw, region)


@pytest.mark.parametrize(
    ("raw", "region", "expected"),
    [
        ("+886912345678", "TW", "+886912345678"),
        ("+886 912-345-678", "TW", "+886912345678"),
        ("0912345678", "TW", "+886912345678"),
        ("0912-345-678", "TW", "+886912345678"),
        ("912345678", "TW", "+886912345678"),
        ("(02) 2345 6789", "TW", "+886223456789"),
        ("+88609 1234 5678", "TW", "+886912345678"),  # a trunk prefix after the country code
        ("886912345678", "TW", "+886912345678"),  # the region's code without "+"
        ("002886912345678", "TW", "+886912345678"),  # TW's IDD
        ("+886912345678", "US", "+886912345678"),
        ("06 1234 5678", "IT", "+390612345678"),  # Italian leading zero kept
        ("+39 06 1234 5678", "TW", "+390612345678"),
        ("+1 (201) 555-0123", "US", "+12015550123"),
        ("1 201 555 0123", "US", "+12015550123"),
        ("+1 416 555 0123", "TW", "+14165550123"),  # Canada, in +1
        ("07400 123456", "GB", "+447400123456"),
        ("+800 1234 5678", "TW", "+80012345678"),  # non-geographic
        ("tel:+886-912-345-678", "TW", "+886912345678"),
        ("+886912345678", "tw", "+886912345678"),
    ],
)
def test_numbers_are_normalised_to_e164(raw: str, region: str, expected: str) -> None:
    assert normalise_number(raw, region, WHERE) == expected
    assert reference(raw, region, WHERE) == expected


@pytest.mark.parametrize(
    ("raw", "region", "detail"),
    [
        (886912345678, "TW", "to[3]: expected a phone number as a string, got a number"),
        (None, "TW", "to[3]: expected a phone number as a string, got null"),
        (["+886912345678"], "TW", "to[3]: expected a phone number as a string, got an array"),
        ({"to": "+886"}, "TW", "to[3]: expected a phone number as a string, got an object"),
        (True, "TW", "to[3]: expected a phone number as a string, got a boolean"),
        ("+" + "8" * 32, "TW", "to[3]: a phone number has at most 32 characters"),
        ("hello", "TW", "to[3]: 'hello' is not a phone number"),
        ("+12", "TW", "to[3]: '+12' is not a phone number"),
        ("+999 123 4567", "TW", "to[3]: '+999 123 4567' is not a phone number"),
        ("+0912345678", "TW", "to[3]: '+0912345678' is not a phone number"),
        ("0912345678", "tw", "to[3]: '0912345678' is not a phone number"),
        ("0912345", "TW", "to[3]: '0912345' is not a valid number (default region TW)"),
        ("+886 12", "TW", "to[3]: '+886 12' is not a valid number (default region TW)"),
        ("12", "TW", "to[3]: '12' is not a valid number (default region TW)"),
        (
            "+1 123 555 0123",
            "US",
            "to[3]: '+1 123 555 0123' is not a valid number (default region US)",
        ),
    ],
)
def test_refusals_name_the_field_and_the_reason(raw: object, region: str, detail: str) -> None:
    with pytest.raises(Problem) as refused:
        normalise_number(raw, region, WHERE)
    assert (refused.value.status, refused.value.detail) == (422, detail)
    assert outcome(reference, raw, region) == outcome(normalise_number, raw, region)


def test_thirty_two_characters_are_still_parsed() -> None:
    raw = "+886 912 345 678" + " " * 16
    assert len(raw) == 32
    assert normalise_number(raw, "TW", WHERE) == "+886912345678"


class _Text(str):
    """A str subclass: parse reads it through its methods, so it takes the slow path."""


def test_a_str_subclass_gets_the_same_answer() -> None:
    assert_same(_Text("+886912345678"), "TW")
    assert_same(_Text("bad"), "TW")


@pytest.fixture
def parse_calls(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Every string phonenumbers.parse is asked to read from now on."""
    calls: list[str] = []
    real = phonenumbers.parse

    def counting(number: str, region: str | None = None, *args: Any, **kwargs: Any) -> Any:
        calls.append(number)
        return real(number, region, *args, **kwargs)

    monkeypatch.setattr(phonenumbers, "parse", counting)
    return calls


def test_usual_shapes_do_not_call_phonenumbers_parse(parse_calls: list[str]) -> None:
    numbers = [f"+8869{n:08d}" for n in range(0, 10**8, 10**8 // 500)]
    assert [normalise_number(n, "TW", WHERE) for n in numbers] == numbers
    national = [f"09{n:08d}" for n in range(0, 10**8, 10**8 // 500)]
    assert [normalise_number(n, "TW", WHERE) for n in national] == [
        "+886" + n[1:] for n in national
    ]
    for raw in [
        "912345678",
        "0912-345-678",
        "+886 912 345 678",
        "(02) 2345 6789",
        "+1 (201) 555-0123",
    ]:
        normalise_number(raw, "TW", WHERE)
    assert parse_calls == []
    with pytest.raises(Problem):
        normalise_number("0912345", "TW", WHERE)
    assert parse_calls == ["0912345"]  # a refusal comes from phonenumbers itself


def test_every_valid_example_in_e164_or_its_national_format_takes_the_fast_path(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    cases = []
    for home, number in EXAMPLES:
        cases.append((phonenumbers.format_number(number, PhoneNumberFormat.E164), "TW"))
        if home in REGIONS:
            for fmt in (PhoneNumberFormat.INTERNATIONAL, PhoneNumberFormat.NATIONAL):
                cases.append((phonenumbers.format_number(number, fmt), home))
    expected = [outcome(reference, raw, region) for raw, region in cases]
    valid = [
        (case, answer)
        for case, answer in zip(cases, expected, strict=True)
        if answer[0] == "number"
    ]
    assert len(valid) > 1000

    def no_parse(*args: object, **kwargs: object) -> None:
        raise AssertionError(f"phonenumbers.parse{args}")

    monkeypatch.setattr(phonenumbers, "parse", no_parse)
    for (raw, region), answer in valid:
        assert normalise_number(raw, region, WHERE) == answer[1], (raw, region)
