"""Recipients normalised to E.164, with phonenumbers' answer for every input but a fast path for
the shapes clients send (issue #21).

`phonenumbers.parse` followed by `is_valid_number` costs 20 to 40 µs a number, most of it in
steps that only matter for unusual input: the viability and extension regexes, RFC 3966 and
vanity-letter handling, char-by-char Unicode digit normalisation, pattern look-ups by string,
and a type check that tries eight rare number kinds before fixed line and mobile. A bulk message
carries up to 1,000 numbers, so the daemon spent about a tenth of its CPU there; the fast path
takes about 3 µs.

The fast path takes a string of ASCII digits with an optional leading "+" and the separators
" -.()", such as "+886912345678", "+886 912-345-678", "0912345678" or "(02) 2345 6789", in a
supported default region. For those strings every generic step of `parse` is a no-op (no
phone-context or ";isub=", no extension label, no letters, nothing to trim but separators), so
what remains is replayed here against the same metadata, with its patterns compiled once per
region:

- "+": the country calling code is the shortest known prefix of the digits, as
  `_extract_country_code` takes it;
- no "+": the region's international prefix (IDD) is looked for as `parse` does, and a number
  starting with the region's own country code gets the same re-read as in
  `_maybe_extract_country_code`;
- both: the national prefix and carrier code are stripped with the metadata's
  `national_prefix_for_parsing` and transform rule, kept only when the length test of `parse`
  allows it; the national significant number is then the digits as they are, leading zeros
  included (Italy's), which is what `format_number` writes back from the Italian leading zero
  fields;
- validity is `is_valid_number`'s: the region of a shared country code is chosen by its leading
  digits or its patterns, then the general pattern and any number type must match, with the
  possible lengths of each.

The fast path only ever answers a valid number. Whenever it would refuse, or meets anything it
does not replay exactly (an IDD, an unknown country code after "+", a transform rule without a
group, a too-short or too-long number, a region code phonenumbers does not list as it is, a str
subclass), it gives up and the input goes through `phonenumbers.parse` and `is_valid_number` as
before, so every refusal and its text come from phonenumbers itself.

Why this is safe: tests/accept/test_numbers.py holds the original function as a reference and
checks with hypothesis that both give the same number or the same refusal for arbitrary text,
E.164-like and national-like strings in ten regions with different numbering plans, and every
example number phonenumbers has for every region and type, in every format. A phonenumbers
upgrade runs the same tests against the new metadata and code.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import phonenumbers
from phonenumbers import PhoneMetadata, PhoneNumberDesc

from goipd.problem import Problem, json_kind

MAX_LENGTH = 32
"""Longest phone number string accepted, before any parsing."""

_FAST_SHAPE = re.compile(r"\+?[0-9() .\-]*")
_NOT_DIGITS = re.compile(r"[^0-9]+")
# phonenumbers rejects a national significant number outside these bounds.
_MIN_NSN = 2
_MAX_NSN = 17

# phonenumbers.ValidationResult, for the results of the general-length test parse runs.
_POSSIBLE = phonenumbers.ValidationResult.IS_POSSIBLE
_LOCAL_ONLY = phonenumbers.ValidationResult.IS_POSSIBLE_LOCAL_ONLY
_TOO_SHORT = phonenumbers.ValidationResult.TOO_SHORT
_TOO_LONG = phonenumbers.ValidationResult.TOO_LONG
_INVALID_LENGTH = phonenumbers.ValidationResult.INVALID_LENGTH


def normalise_number(raw: object, region: str, where: str) -> str:
    """The E.164 form of a recipient written in full or in `region`'s national format, or a
    422 Problem naming `where` when it is not a valid phone number."""
    if not isinstance(raw, str):
        raise Problem(422, f"{where}: expected a phone number as a string, got {json_kind(raw)}")
    if len(raw) > MAX_LENGTH:
        raise Problem(422, f"{where}: a phone number has at most 32 characters")
    # A str subclass could answer differently to the methods parse calls than to a regex.
    if type(raw) is str and type(region) is str:
        fast = _fast_e164(raw, region)
        if fast is not None:
            return fast
    try:
        parsed = phonenumbers.parse(raw, region)
    except phonenumbers.NumberParseException:
        raise Problem(422, f"{where}: {raw!r} is not a phone number") from None
    if not phonenumbers.is_valid_number(parsed):
        raise Problem(422, f"{where}: {raw!r} is not a valid number (default region {region})")
    return phonenumbers.format_number(parsed, phonenumbers.PhoneNumberFormat.E164)


@dataclass(frozen=True, slots=True)
class _Desc:
    """A PhoneNumberDesc as `_is_number_matching_desc` reads it: its lengths are a filter only
    when the metadata lists some."""

    lengths: frozenset[int]
    pattern: re.Pattern[str]

    def matches(self, number: str) -> bool:
        if self.lengths and len(number) not in self.lengths:
            return False
        return self.pattern.fullmatch(number) is not None


def _desc(desc: PhoneNumberDesc | None) -> _Desc | None:
    """None where phonenumbers would never match (no desc, or an empty pattern)."""
    if desc is None or not desc.national_number_pattern:
        return None
    return _Desc(frozenset(desc.possible_length), re.compile(desc.national_number_pattern))


@dataclass(frozen=True, slots=True)
class _Plan:
    """One region's (or non-geographic country code's) metadata, compiled for the fast path."""

    country_code: int
    country_prefix: str
    international_prefix: re.Pattern[str] | None
    national_prefix: re.Pattern[str] | None
    transform_rule: str | None
    general_pattern: re.Pattern[str] | None
    possible_lengths: tuple[int, ...]
    local_lengths: frozenset[int]
    general: _Desc | None
    kinds: tuple[_Desc, ...]
    leading_digits: re.Pattern[str] | None

    def general_match(self, number: str) -> bool:
        """`_match_national_number(number, general_desc, False)`: the pattern, no lengths."""
        pattern = self.general_pattern
        return pattern is not None and pattern.fullmatch(number) is not None

    def length_result(self, number: str) -> int:
        """`_test_number_length(number, metadata)`, for the general description."""
        length = len(number)
        if length in self.local_lengths:
            return _LOCAL_ONLY
        lengths = self.possible_lengths
        if lengths[0] == length:
            return _POSSIBLE
        if lengths[0] > length:
            return _TOO_SHORT
        if lengths[-1] < length:
            return _TOO_LONG
        return _POSSIBLE if length in lengths[1:] else _INVALID_LENGTH

    def strip_national_prefix(self, number: str) -> str | None:
        """`_maybe_strip_national_prefix_carrier_code` without the carrier code, or None where
        phonenumbers would fail in a way this does not copy."""
        pattern = self.national_prefix
        if not number or pattern is None:
            return number
        found = pattern.match(number)
        if found is None:
            return number
        viable = self.general_match(number)
        groups = found.groups()
        rule = self.transform_rule
        if rule is not None and not groups:
            return None  # phonenumbers indexes groups()[-1] here and raises IndexError
        if rule is None or groups[-1] is None:
            stripped = number[found.end() :]
        else:
            stripped = pattern.sub(rule, number, count=1)
        if viable and not self.general_match(stripped):
            return number
        return stripped

    def is_type_known(self, number: str) -> bool:
        """`_number_type_helper(number, metadata) != UNKNOWN`."""
        general = self.general
        if general is None or not general.matches(number):
            return False
        # A loop, not any() over a generator: this runs for every number.
        length = len(number)
        for kind in self.kinds:
            if (not kind.lengths or length in kind.lengths) and kind.pattern.fullmatch(number):
                return True
        return False


def _plan(metadata: PhoneMetadata) -> _Plan | None:
    general = metadata.general_desc
    country_code = metadata.country_code
    if general is None or not general.possible_length or country_code is None:
        return None  # parse would fail (AttributeError, IndexError): leave it to the slow path
    # _number_type_helper tries mobile only when its pattern differs from fixed line's, and
    # mobile or fixed line first here: validity is whether any kind matches, in any order.
    fields = [metadata.mobile, metadata.fixed_line]
    if metadata.same_mobile_and_fixed_line_pattern:
        fields = [metadata.fixed_line]
    fields += [
        metadata.premium_rate,
        metadata.toll_free,
        metadata.shared_cost,
        metadata.voip,
        metadata.personal_number,
        metadata.pager,
        metadata.uan,
        metadata.voicemail,
    ]
    kinds = tuple(d for d in map(_desc, fields) if d is not None)
    return _Plan(
        country_code=country_code,
        country_prefix=str(country_code),
        # parse compiles an empty international prefix too (it would match anywhere).
        international_prefix=(
            re.compile(metadata.international_prefix)
            if metadata.international_prefix is not None
            else None
        ),
        national_prefix=(
            re.compile(metadata.national_prefix_for_parsing)
            if metadata.national_prefix_for_parsing
            else None
        ),
        transform_rule=metadata.national_prefix_transform_rule or None,
        general_pattern=(
            re.compile(general.national_number_pattern) if general.national_number_pattern else None
        ),
        possible_lengths=tuple(general.possible_length),
        local_lengths=frozenset(general.possible_length_local_only),
        general=_desc(general),
        kinds=kinds,
        leading_digits=(
            re.compile(metadata.leading_digits) if metadata.leading_digits is not None else None
        ),
    )


# Filled on first use, per region or country code: compiling every region's patterns up front
# would cost the daemon's start for regions it never sees. Metadata never changes in a process,
# and two threads filling an entry at once compute the same value.
_REGION_PLANS: dict[str, _Plan | None] = {}
_PARSE_PLANS: dict[int, _Plan | None] = {}
_VALIDITY_PLANS: dict[int, tuple[tuple[_Plan, bool], ...]] = {}


def _region_plan(region: str) -> _Plan | None:
    try:
        return _REGION_PLANS[region]
    except KeyError:
        pass
    # Only exact, supported codes: parse treats others (lower case, "001", "ZZ") apart. Nor are
    # they kept, so that no string can grow the cache.
    if region not in phonenumbers.SUPPORTED_REGIONS:
        return None
    metadata = PhoneMetadata.metadata_for_region(region, None)
    _REGION_PLANS[region] = plan = _plan(metadata) if metadata is not None else None
    return plan


def _parse_plan(country_code: int) -> _Plan | None:
    """The metadata parse reads a number with this country code in: its main region's."""
    try:
        return _PARSE_PLANS[country_code]
    except KeyError:
        pass
    main = phonenumbers.COUNTRY_CODE_TO_REGION_CODE[country_code][0]
    metadata = PhoneMetadata.metadata_for_region_or_calling_code(country_code, main)
    plan = _plan(metadata) if metadata is not None else None
    _PARSE_PLANS[country_code] = plan
    return plan


def _validity_plans(country_code: int) -> tuple[tuple[_Plan, bool], ...]:
    """The regions `region_code_for_number` chooses from, each with whether
    `is_valid_number_for_region` would accept the country code there; none (every number left
    to the slow path) if a region's metadata is missing or unusable, rather than copy how
    phonenumbers skips or trips over it."""
    try:
        return _VALIDITY_PLANS[country_code]
    except KeyError:
        pass
    plans: list[tuple[_Plan, bool]] = []
    for region in phonenumbers.COUNTRY_CODE_TO_REGION_CODE[country_code]:
        metadata = PhoneMetadata.metadata_for_region_or_calling_code(country_code, region)
        plan = _plan(metadata) if metadata is not None else None
        if plan is None:
            plans = []
            break
        non_geo = region == phonenumbers.REGION_CODE_FOR_NON_GEO_ENTITY
        plans.append((plan, non_geo or plan.country_code == country_code))
    _VALIDITY_PLANS[country_code] = result = tuple(plans)
    return result


def _is_valid(country_code: int, nsn: str) -> bool:
    """`is_valid_number` of the number with this country code and national significant
    number."""
    plans = _validity_plans(country_code)
    if not plans:
        return False
    chosen = plans[0] if len(plans) == 1 else _region_of(plans, nsn)
    if chosen is None:
        return False
    plan, accepted = chosen
    return accepted and plan.is_type_known(nsn)


def _region_of(plans: tuple[tuple[_Plan, bool], ...], nsn: str) -> tuple[_Plan, bool] | None:
    """`_region_code_for_number_from_list`: the first region whose leading digits start the
    number or, without them, whose patterns know it."""
    for candidate in plans:
        plan = candidate[0]
        if plan.leading_digits is not None:
            if plan.leading_digits.match(nsn):
                return candidate
        elif plan.is_type_known(nsn):
            return candidate
    return None


# Country codes by their digits; no code starts with 0, so a string key is an int key.
_COUNTRY_CODES = {str(code): code for code in phonenumbers.COUNTRY_CODE_TO_REGION_CODE}


def _split_country_code(digits: str) -> tuple[int, str] | None:
    """`_extract_country_code`: the shortest known code the digits start with."""
    if digits[0] == "0":
        return None
    for end in (1, 2, 3):
        code = _COUNTRY_CODES.get(digits[:end])
        if code is not None:
            return code, digits[end:]
    return None


def _fast_e164(raw: str, region: str) -> str | None:
    """The E.164 form phonenumbers gives a valid number of the fast shape, or None for the
    slow path (invalid, or not a shape replayed here)."""
    if _FAST_SHAPE.fullmatch(raw) is None:
        return None
    home = _region_plan(region)
    if home is None:
        return None
    digits = _NOT_DIGITS.sub("", raw)
    # Three digits make the string viable for parse (and more than an IDD's TOO_SHORT).
    if len(digits) < 3:
        return None
    if raw[0] == "+":
        split = _split_country_code(digits)
        if split is None:
            return None  # parse then retries without the "+": left to it
        country_code, national = split
        plan = _parse_plan(country_code)
    else:
        idd = home.international_prefix
        if idd is not None:
            found = idd.match(digits)
            # An IDD followed by 0 is not one (_parse_prefix_as_idd).
            if found is not None and digits[found.end() : found.end() + 1] != "0":
                return None
        country_code, national, plan = home.country_code, digits, home
        if digits.startswith(home.country_prefix):
            potential = home.strip_national_prefix(digits[len(home.country_prefix) :])
            if potential is None:
                return None
            if (
                not home.general_match(digits) and home.general_match(potential)
            ) or home.length_result(digits) == _TOO_LONG:
                national, plan = potential, _parse_plan(country_code)
    if plan is None or len(national) < _MIN_NSN:
        return None
    stripped = plan.strip_national_prefix(national)
    if stripped is None:
        return None
    if plan.length_result(stripped) not in (_TOO_SHORT, _LOCAL_ONLY, _INVALID_LENGTH):
        national = stripped
    if not (_MIN_NSN <= len(national) <= _MAX_NSN and national.isascii() and national.isdigit()):
        return None
    if not _is_valid(country_code, national):
        return None
    return f"+{country_code}{national}"
