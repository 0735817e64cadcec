"""Numbers and dates of the private-term model (`cogenesis.cloud_bridge.terms`), found in normalized text.

* **numbers**: every digit run of >= ``NUMBER_KEY_DIGITS`` (7) digits (phones, accounts, IDs) is keyed by its
  last 7 digits, so ``+44 7700 900123`` and ``07700 900123`` match; a list of years ("2019 2020 2021") is none.
* **dates**: keyed in ISO form (``--MM-DD`` without a year); "14 March 1987", "March 14th, 1987",
  "1987-03-14", "14/03/1987" and "03/14/1987" are one date (both readings of "03/04/1987" are kept).

The text is normalized (lower case, punctuation folded to single spaces: see `cogenesis.cloud_bridge.textnorm`);
the date regexes run only in windows around digit runs, so the search is linear in the text size.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

NUMBER_KEY_DIGITS = 7  # digit runs this long are identifiers; matched on their last 7 digits
_MONTHS = {m: i + 1 for i, m in enumerate(
    "january february march april may june july august september october november december".split())}
_MONTHS.update({m[:3]: i for m, i in list(_MONTHS.items())})
_MONTHS["sept"] = 9
_MON = "|".join(sorted(_MONTHS, key=len, reverse=True))
_ORD = r"(?:st|nd|rd|th)?"
# dates on normalized text (lower case, punctuation folded to single spaces)
_DATE_DMY = re.compile(rf"\b(\d{{1,2}}){_ORD} (?:of )?({_MON})\b(?: (\d{{4}}))?")
_DATE_MDY = re.compile(rf"\b({_MON}) (\d{{1,2}}){_ORD}\b(?: (\d{{4}}))?")
_DATE_ISO = re.compile(r"\b(\d{4}) (\d{1,2}) (\d{1,2})\b")
_DATE_NUM = re.compile(r"\b(\d{1,2}) (\d{1,2}) (\d{4}|\d{2})\b")
_DIGIT_RUN = re.compile(r"\d+(?: \d+)*")


def _is_year_list(run: str) -> bool:
    """'2019 2020 2021' is years next to each other, not a phone number."""
    parts = run.split()
    return len(parts) > 1 and all(len(p) == 4 and p[:2] in ("19", "20") for p in parts)


def _iso(y: str | None, m: int, d: int) -> str | None:
    if not (1 <= m <= 12 and 1 <= d <= 31):
        return None
    if y is None:
        return f"--{m:02d}-{d:02d}"
    year = int(y) + (2000 if len(y) == 2 and int(y) < 50 else 1900 if len(y) == 2 else 0)
    return f"{year:04d}-{m:02d}-{d:02d}"


def _date_spans(norm: str) -> Iterable[tuple[str, int, int]]:
    """(ISO or --MM-DD, start, end) for every date written in a normalized text (both readings of 03/04).
    Every date has a digit: the regexes only run in windows around digit runs (one fast pass finds them)."""
    windows: list[list[int]] = []
    for m in re.finditer(r"\d+", norm):
        s, e = max(m.start() - 14, 0), m.end() + 16  # "september 14" / "14th of september"
        if windows and s <= windows[-1][1]:
            windows[-1][1] = e
        else:
            windows.append([s, e])
    for s, e in windows:
        yield from _date_spans_in(norm, s, min(e, len(norm)))


def _date_spans_in(norm: str, s: int, e: int) -> Iterable[tuple[str, int, int]]:
    for m in _DATE_DMY.finditer(norm, s, e):
        iso = _iso(m.group(3), _MONTHS[m.group(2)], int(m.group(1)))
        if iso:
            yield iso, m.start(), m.end()
    for m in _DATE_MDY.finditer(norm, s, e):
        iso = _iso(m.group(3), _MONTHS[m.group(1)], int(m.group(2)))
        if iso:
            yield iso, m.start(), m.end()
    for m in _DATE_ISO.finditer(norm, s, e):
        iso = _iso(m.group(1), int(m.group(2)), int(m.group(3)))
        if iso:
            yield iso, m.start(), m.end()
    for m in _DATE_NUM.finditer(norm, s, e):
        a, b, y = int(m.group(1)), int(m.group(2)), m.group(3)
        for iso in {_iso(y, b, a), _iso(y, a, b)} - {None}:
            yield iso, m.start(), m.end()


def _dates(norm: str) -> set[str]:
    return {iso for iso, _, _ in _date_spans(norm)}
