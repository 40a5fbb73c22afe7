"""Each daemon's OpenAPI 3.1 document is the contract of its internal API.

The daemon validates request bodies against the document's schemas, so the document and
the code cannot drift apart on input, and errors name the offending field.
"""

from __future__ import annotations

from functools import cache
from pathlib import Path
from typing import Any

import jsonschema
import yaml
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012

from mallee.common.errors import MalformedRequest

_URN = "urn:mallee:openapi"


class OpenApiSpec:
    def __init__(self, path: Path) -> None:
        self.path = path
        self.document: dict[str, Any] = yaml.safe_load(path.read_text())
        resource = Resource.from_contents(self.document, default_specification=DRAFT202012)
        self._registry: Registry[Any] = Registry().with_resource(_URN, resource)

    @cache  # noqa: B019 - one spec object per daemon, kept for the process' life
    def _validator(self, schema: str) -> jsonschema.Draft202012Validator:
        if schema not in self.document["components"]["schemas"]:
            raise KeyError(f"{self.path} has no schema {schema!r}")
        ref = {"$ref": f"{_URN}#/components/schemas/{schema}"}
        return jsonschema.Draft202012Validator(ref, registry=self._registry)

    def validate(self, schema: str, data: Any, where: str = "body") -> None:
        """Raise MalformedRequest naming the first offending field of ``data``."""
        error = jsonschema.exceptions.best_match(self._validator(schema).iter_errors(data))
        if error is not None:
            field = "/".join(str(p) for p in error.absolute_path) or where
            raise MalformedRequest(f"{field}: {error.message}")
