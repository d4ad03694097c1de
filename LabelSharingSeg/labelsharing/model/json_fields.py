"""Typed checkers of JSON fields: each says, for a value at a JSON path, whether it is allowed.

:mod:`labelsharing.model.schema` builds the schema of ``model.json`` from them. A checker raises
:class:`Refusal` naming the field as a JSON path (``tasks.Liver.labels.liver.value``), what was
found and what is allowed; the schema turns that into the user's error.
"""

from __future__ import annotations

import math
import re
from typing import Any, Mapping, NoReturn

from labelsharing.plan import terminology_entry_problem

__all__ = ["Refusal", "refuse", "join_path", "Field", "Integer", "Number", "Text", "TerminologyEntry", "Pattern",
           "Choice", "Either", "Array", "FreeList", "Fields", "Names", "Switch"]


class Refusal(Exception):
    """A field that breaks the schema: its JSON path, what was found and what is allowed."""

    def __init__(self, path: str, problem: str):
        super().__init__(path, problem)
        self.path, self.problem = path, problem


def refuse(path: str, value: Any, allowed: str) -> NoReturn:
    shown = repr(value)
    raise Refusal(path, f"is {shown if len(shown) <= 60 else shown[:57] + '...'}; allowed: {allowed}")


def join_path(path: str, *keys: object) -> str:
    """``path`` extended by object keys (``.name``, quoted unless a plain word) and list indices (``[i]``)."""
    for key in keys:
        if isinstance(key, int):
            path = f"{path}[{key}]"
            continue
        text = key if re.fullmatch(r"[A-Za-z_][A-Za-z0-9_\-]*", str(key)) else repr(key)
        path = f"{path}.{text}" if path else str(text)
    return path


class Field:
    """A checker of one JSON value; ``allowed`` describes valid values for the error message."""

    allowed = "anything"

    def check(self, value: Any, path: str) -> None:
        """Raise ``Refusal`` if ``value`` (found at JSON ``path``) is not allowed."""


class Integer(Field):
    """A JSON integer (not a bool, not 2.0) in ``lo..hi``."""

    def __init__(self, lo: int, hi: int):
        self.lo, self.hi = lo, hi
        self.allowed = f"an integer in {lo}..{hi}"

    def check(self, value: Any, path: str) -> None:
        if isinstance(value, bool) or not isinstance(value, int) or not self.lo <= value <= self.hi:
            refuse(path, value, self.allowed)


class Number(Field):
    """A finite JSON number in ``lo..hi`` (``lo`` excluded if ``above``)."""

    def __init__(self, lo: float = -math.inf, hi: float = math.inf, above: bool = False):
        self.lo, self.hi, self.above = lo, hi, above
        if math.isinf(lo) and math.isinf(hi):
            self.allowed = "a finite number"
        elif math.isinf(hi):
            self.allowed = f"a finite number {'>' if above else '>='} {lo:g}"
        else:
            self.allowed = f"a number in {lo:g}..{hi:g}"

    def check(self, value: Any, path: str) -> None:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            refuse(path, value, self.allowed)
        try:
            number = float(value)
        except OverflowError:  # an integer beyond any float
            refuse(path, value, self.allowed)
        if not (math.isfinite(number) and (number > self.lo if self.above else number >= self.lo) and number <= self.hi):
            refuse(path, value, self.allowed)


class Text(Field):
    """A non-empty JSON string."""

    allowed = "a non-empty string"

    def check(self, value: Any, path: str) -> None:
        if not isinstance(value, str) or not value:
            refuse(path, value, self.allowed)


class TerminologyEntry(Field):
    """A Slicer terminology entry string (:func:`labelsharing.plan.terminology.terminology_entry_problem`)."""

    allowed = "a Slicer terminology entry"

    def check(self, value: Any, path: str) -> None:
        if not isinstance(value, str):
            refuse(path, value, self.allowed)
        problem = terminology_entry_problem(value)
        if problem is not None:
            refuse(path, value, f"{self.allowed} (this one {problem})")


class Pattern(Field):
    """A JSON string matching a regular expression."""

    def __init__(self, regex: str, allowed: str):
        self.regex, self.allowed = re.compile(regex), allowed

    def check(self, value: Any, path: str) -> None:
        if not isinstance(value, str) or not self.regex.fullmatch(value):
            refuse(path, value, self.allowed)


class Choice(Field):
    """One of a fixed set of JSON scalars (``None`` for null)."""

    def __init__(self, *choices: Any):
        self.choices = choices
        self.allowed = "one of " + ", ".join("null" if c is None else repr(c) for c in choices)

    def check(self, value: Any, path: str) -> None:
        if not any(value is c or (type(value) is type(c) and value == c) for c in self.choices):
            refuse(path, value, self.allowed)


class Either(Field):
    """A value allowed by any of several checkers."""

    def __init__(self, *options: Field):
        self.options = options
        self.allowed = " or ".join(o.allowed for o in options)

    def check(self, value: Any, path: str) -> None:
        for option in self.options:
            try:
                option.check(value, path)
                return
            except Refusal:
                continue
        refuse(path, value, self.allowed)


class Array(Field):
    """A JSON list of ``lo..hi`` items, each checked by ``item``."""

    def __init__(self, item: Field, lo: int, hi: int):
        self.item, self.lo, self.hi = item, lo, hi
        count = str(lo) if lo == hi else f"{lo}..{hi}"
        self.allowed = f"a list of {count} items, each {item.allowed}"

    def check(self, value: Any, path: str) -> None:
        if not isinstance(value, list) or not self.lo <= len(value) <= self.hi:
            refuse(path, value, self.allowed)
        for index, item in enumerate(value):
            self.item.check(item, join_path(path, index))


class FreeList(Field):
    """Any JSON list (``history``: its records are kept as written)."""

    allowed = "a list"

    def check(self, value: Any, path: str) -> None:
        if not isinstance(value, list):
            refuse(path, value, self.allowed)


class Fields(Field):
    """A JSON object with required and optional keys; any other key is refused."""

    def __init__(self, required: Mapping[str, Field], optional: Mapping[str, Field] | None = None):
        self.required, self.optional = dict(required), dict(optional or {})
        self.allowed = "an object with keys " + ", ".join([*self.required, *self.optional])

    def check(self, value: Any, path: str) -> None:
        if not isinstance(value, dict):
            refuse(path, value, self.allowed)
        known = {**self.required, **self.optional}
        unknown = [key for key in value if key not in known]
        if unknown:
            raise Refusal(join_path(path, unknown[0]), f"is not a known key; allowed keys here: {', '.join(known)}")
        missing = [key for key in self.required if key not in value]
        if missing:
            raise Refusal(join_path(path, missing[0]), "is missing; it is required")
        for key, checker in known.items():
            if key in value:
                checker.check(value[key], join_path(path, key))


class Names(Field):
    """A JSON object mapping ``lo..hi`` non-empty names to values checked by ``item``."""

    def __init__(self, item: Field, lo: int = 1, hi: int = 100_000, what: str = "names"):
        self.item, self.lo, self.hi = item, lo, hi
        self.allowed = f"an object of {lo}..{hi} {what}, each {item.allowed}"

    def check(self, value: Any, path: str) -> None:
        if not isinstance(value, dict) or not self.lo <= len(value) <= self.hi:
            refuse(path, value, self.allowed)
        for name, item in value.items():
            if not name.strip():
                raise Refusal(join_path(path, name), "is an empty name; names must contain a visible character")
            self.item.check(item, join_path(path, name))


class Switch(Field):
    """An object whose allowed fields depend on the value of one key (``scheme``)."""

    def __init__(self, key: str, variants: Mapping[str, Fields]):
        self.key, self.variants = key, dict(variants)
        self.selector = Choice(*variants)
        self.allowed = f"an object whose '{key}' is " + self.selector.allowed[len("one of "):]

    def check(self, value: Any, path: str) -> None:
        if not isinstance(value, dict):
            refuse(path, value, self.allowed)
        if self.key not in value:
            raise Refusal(join_path(path, self.key), "is missing; it is required")
        self.selector.check(value[self.key], join_path(path, self.key))
        self.variants[value[self.key]].check(value, path)
