"""EC2's ``Filter.N`` (a name and values, ``*`` and ``?`` as wildcards): a resource
matches when, for every filter, one of its values for that name matches one of the
filter's values."""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from functools import lru_cache
from typing import Any, TypeVar

from mallee.clc.wire import Ec2Error

Item = TypeVar("Item")
# A filter name → the values an item has for it.
Fields = Mapping[str, Callable[[Any], list[str]]]


@lru_cache(maxsize=256)  # the patterns are callers' text: bounded
def _pattern(value: str) -> re.Pattern[str]:
    pieces = ("." if c == "?" else ".*" if c == "*" else re.escape(c) for c in value)
    return re.compile("".join(pieces), re.DOTALL)


def apply(
    items: list[Item],
    filters: list[dict[str, Any]],
    fields: Fields,
    tags_of: Callable[[Any], dict[str, str]] | None = None,
) -> list[Item]:
    """The items every filter lets through; an unknown filter name is an error naming
    it and the names this resource takes. With ``tags_of``, also ``tag:KEY`` (the
    tag's value) and ``tag-key``."""
    every: dict[str, Callable[[Any], list[str]]] = dict(fields)
    if tags_of is not None:
        every["tag-key"] = lambda item: list(tags_of(item))
    for f in filters:
        name = str(f.get("Name"))
        if name.startswith("tag:") and tags_of is not None:
            every[name] = _tag_value(tags_of, name.removeprefix("tag:"))
        elif name not in every:
            raise Ec2Error(
                "InvalidParameterValue",
                f"The filter '{name}' is invalid; this resource takes: "
                f"{', '.join(sorted(every) + (['tag:KEY'] if tags_of else []))}",
            )
    return [item for item in items if all(_matches(item, f, every) for f in filters)]


def _tag_value(tags_of: Callable[[Any], dict[str, str]], key: str) -> Callable[[Any], list[str]]:
    def value(item: Any) -> list[str]:
        tags = tags_of(item)
        return [tags[key]] if key in tags else []

    return value


def _matches(item: Any, f: dict[str, Any], fields: Fields) -> bool:
    have = fields[f["Name"]](item)
    return any(_pattern(v).fullmatch(h) for v in f.get("Values", []) for h in have)
