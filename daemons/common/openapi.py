"""Each daemon's OpenAPI 3.1 document is the contract of its internal API.

The daemon validates request bodies against the document's schemas, so the document and
the code cannot drift apart on input, and errors name the offending field. Schemas both
daemons use live once in ``schemas.yaml`` beside this module; a document refers to them
by relative ``$ref`` and is loaded with them copied in, so what a daemon serves at
``/v1/openapi.json`` needs no other file.
"""

from __future__ import annotations

from functools import cache
from pathlib import Path
from typing import Any
from urllib.parse import urljoin, urlsplit
from urllib.request import url2pathname

import jsonschema
import yaml
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012

from mallee.common.errors import MalformedRequest

_URN = "urn:mallee:openapi"
_SCHEMAS = "#/components/schemas/"


class OpenApiSpec:
    def __init__(self, path: Path) -> None:
        self.path = path
        self.document: dict[str, Any] = _bundle(path)
        resource = Resource.from_contents(self.document, default_specification=DRAFT202012)
        self._registry: Registry[Any] = Registry().with_resource(_URN, resource)

    @cache  # noqa: B019 - one spec object per daemon, kept for the process' life
    def _validator(self, schema: str) -> jsonschema.Draft202012Validator:
        if schema not in self.document["components"]["schemas"]:
            raise KeyError(f"{self.path} has no schema {schema!r}")
        ref = {"$ref": f"{_URN}{_SCHEMAS}{schema}"}
        return jsonschema.Draft202012Validator(ref, registry=self._registry)

    def validate(self, schema: str, data: Any, where: str = "body") -> None:
        """Raise MalformedRequest naming the first offending field of ``data``."""
        error = jsonschema.exceptions.best_match(self._validator(schema).iter_errors(data))
        if error is not None:
            field = "/".join(str(p) for p in error.absolute_path) or where
            raise MalformedRequest(f"{field}: {error.message}")


def _retrieve(uri: str) -> Resource[Any]:
    """A YAML (or JSON) file a ``$ref`` names; only local files are ever read."""
    parts = urlsplit(uri)
    if parts.scheme != "file":
        raise ValueError(f"only local files are read, not {uri}")
    contents = yaml.safe_load(Path(url2pathname(parts.path)).read_text())
    return Resource.from_contents(contents, default_specification=DRAFT202012)


def _bundle(path: Path) -> dict[str, Any]:
    """The OpenAPI document at ``path`` standing alone: every schema it takes from another
    file (``$ref: "../common/schemas.yaml#/$defs/NAME"``), and every schema that one takes
    in turn, copied into its ``components/schemas`` as NAME, each ``$ref`` pointed there.
    A document's own entry ``NAME: {$ref: "<file>#/$defs/NAME"}`` becomes the copy."""
    uri = path.resolve().as_uri()
    document = _retrieve(uri).contents
    # referencing's attrs-made __init__ is opaque to mypy
    resolver = Registry(retrieve=_retrieve).resolver()  # type: ignore[call-arg]
    own = {
        name
        for name, schema in document.get("components", {}).get("schemas", {}).items()
        if not _names_another_file(schema, name)
    }
    copied: dict[str, Any] = {}
    sources: dict[str, str] = {}

    def copy(node: Any, base: str) -> Any:
        if isinstance(node, list):
            return [copy(item, base) for item in node]
        if not isinstance(node, dict):
            return node
        ref = node.get("$ref")
        if not isinstance(ref, str) or (base == uri and ref.startswith("#")):
            return {key: copy(value, base) for key, value in node.items()}
        target = urljoin(base, ref)
        name = target.rpartition("/")[2]
        if name in own or sources.setdefault(name, target) != target:
            raise ValueError(f"{path}: two schemas named {name!r} ({target})")
        if name not in copied:
            copied[name] = {}  # taken, should the schema refer to itself
            copied[name] = copy(resolver.lookup(target).contents, target.partition("#")[0])
        return {**node, "$ref": _SCHEMAS + name}

    bundled: dict[str, Any] = copy(document, uri)
    if copied:
        bundled.setdefault("components", {}).setdefault("schemas", {}).update(copied)
    return bundled


def _names_another_file(schema: Any, name: str) -> bool:
    """Whether a components entry is only ``{$ref: "<another file>#/.../NAME"}``."""
    if not isinstance(schema, dict) or set(schema) != {"$ref"}:
        return False
    ref = schema["$ref"]
    return isinstance(ref, str) and not ref.startswith("#") and ref.endswith("/" + name)
