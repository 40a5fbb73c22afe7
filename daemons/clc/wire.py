"""EC2's Query protocol, both ways, driven by botocore's EC2 service model.

The wire layer turns a request's flat parameters (``Action=RunInstances&MinCount=1&
TagSpecification.1.Tag.1.Key=name``) into the plain nested data of the operation's input
shape, and an operation's output into EC2's XML, without a line of hand-written XML per
action: the model (API version 2016-11-15, the one every EC2 client speaks) says what each
operation takes and answers. The CLC's domain code sees only Python values.

Names follow botocore's own EC2 serializer: a member's key on the wire is its
``queryName``, else its ``locationName`` with the first letter upper-cased, else the
member's name; list entries are ``Key.1``, ``Key.2``, ...; in responses members go under
their ``locationName`` and list entries are ``<item>``.
"""

from __future__ import annotations

import base64
import binascii
import functools
import re
from collections.abc import Callable, Hashable, Mapping
from datetime import UTC, datetime
from typing import Any, NamedTuple

from botocore.loaders import Loader
from botocore.model import OperationModel, ServiceModel, Shape

from mallee.common.errors import MalleeError

API_VERSION = "2016-11-15"
NAMESPACE = f"http://ec2.amazonaws.com/doc/{API_VERSION}/"

# Parameters of the protocol and of its signatures (v2 in the body or query, v4
# presigned in the query), not of any operation.
PROTOCOL_PARAMETERS = frozenset(
    {
        "Action",
        "Version",
        "AWSAccessKeyId",
        "SignatureVersion",
        "SignatureMethod",
        "Signature",
        "Timestamp",
        "Expires",
        "SecurityToken",
        "X-Amz-Algorithm",
        "X-Amz-Credential",
        "X-Amz-Date",
        "X-Amz-Expires",
        "X-Amz-SignedHeaders",
        "X-Amz-Signature",
        "X-Amz-Security-Token",
    }
)
_INDEX = re.compile(r"[1-9][0-9]{0,5}")  # EC2 lists count from 1
_INTEGER = re.compile(r"[-+]?[0-9]{1,20}")
_NUMBER = re.compile(r"[-+]?([0-9]+(\.[0-9]*)?|\.[0-9]+)([eE][-+]?[0-9]+)?")
# Characters XML 1.0 cannot carry; a caller's text may hold them (it is echoed in errors).
_NOT_XML = re.compile("[^\t\n\r\x20-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")


class Ec2Error(MalleeError):
    """An error EC2 answers with its own code and status."""

    def __init__(self, code: str, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.code = code
        self.status = status


def invalid_action(action: str) -> Ec2Error:
    return Ec2Error("InvalidAction", f"The action {action} is not valid for this web service.")


@functools.cache
def service_model() -> ServiceModel:
    """EC2's model as botocore ships it (loaded once: it holds about 4,400 shapes)."""
    return ServiceModel(Loader().load_service_model("ec2", "service-2", API_VERSION), "ec2")


def operation(action: str) -> OperationModel:
    """The model of ``action``; InvalidAction for a name EC2 does not have."""
    model = service_model()
    if action not in model.operation_names:
        raise invalid_action(action)
    return model.operation_model(action)


def wire_name(shape: Shape, member: str) -> str:
    """A member's key in a request, as botocore's EC2 serializer writes it."""
    if "queryName" in shape.serialization:
        return str(shape.serialization["queryName"])
    if "name" in shape.serialization:
        name = str(shape.serialization["name"])
        return name[0].upper() + name[1:]
    return member


# -- requests ---------------------------------------------------------------------------


def parse_request(model: OperationModel, params: Mapping[str, str]) -> dict[str, Any]:
    """The operation's input as plain data. Parameters the operation does not have are
    ``UnknownParameter``; missing required ones ``MissingParameter``; values that are not
    of their member's type ``InvalidParameterValue``, each naming the key as the caller
    wrote it. Enums are left to the actions: the model's lists are AWS's (its instance
    types, say), and a cloud has its own."""
    given = {k: v for k, v in params.items() if k not in PROTOCOL_PARAMETERS}
    used: set[str] = set()
    shape = model.input_shape
    parsed = {} if shape is None else _parse_structure(shape, "", given, used)
    if unknown := sorted(set(given) - used):
        raise Ec2Error("UnknownParameter", f"The parameter {unknown[0]} is not recognized")
    return parsed


def _parse(shape: Shape, key: str, params: Mapping[str, str], used: set[str]) -> Any:
    """The value at ``key``, or None when the request has nothing there."""
    if shape.type_name == "structure":
        if not any(k.startswith(f"{key}.") for k in params):
            return None
        return _parse_structure(shape, f"{key}.", params, used)
    if shape.type_name == "list":
        return _parse_list(shape, key, params, used)
    if key not in params:
        return None
    used.add(key)
    return _scalar(shape, key, params[key])


def _parse_structure(
    shape: Shape, prefix: str, params: Mapping[str, str], used: set[str]
) -> dict[str, Any]:
    parsed = {}
    for member, member_shape in shape.members.items():
        key = prefix + wire_name(member_shape, member)
        value = _parse(member_shape, key, params, used)
        if value is not None:
            parsed[member] = value
    for member in shape.required_members:
        if member not in parsed:
            key = prefix + wire_name(shape.members[member], member)
            raise Ec2Error("MissingParameter", f"The request must contain the parameter {key}")
    return parsed


def _parse_list(
    shape: Shape, key: str, params: Mapping[str, str], used: set[str]
) -> list[Any] | None:
    indices = set()
    for k in params:
        if k.startswith(f"{key}."):
            index = k[len(key) + 1 :].split(".", 1)[0]
            if _INDEX.fullmatch(index):
                indices.add(int(index))
    if not indices:
        return None
    # Entries in the order of their numbers; a gap (Key.1, Key.3) is no error, as in EC2.
    entries = [_parse(shape.member, f"{key}.{i}", params, used) for i in sorted(indices)]
    return [e for e in entries if e is not None]


def _scalar(shape: Shape, key: str, text: str) -> Any:
    def invalid(expected: str) -> Ec2Error:
        return Ec2Error(
            "InvalidParameterValue", f"Value ({text}) for parameter {key} is invalid. {expected}"
        )

    kind = shape.type_name
    if kind == "string":
        return text
    if kind in ("integer", "long"):
        if not _INTEGER.fullmatch(text):
            raise invalid("Expected an integer.")
        return int(text)
    if kind in ("double", "float"):
        if not _NUMBER.fullmatch(text):
            raise invalid("Expected a number.")
        return float(text)
    if kind == "boolean":
        if text.lower() not in ("true", "false"):
            raise invalid("Expected true or false.")
        return text.lower() == "true"
    if kind == "timestamp":
        try:
            when = datetime.fromisoformat(text)
        except ValueError:
            raise invalid("Expected an ISO 8601 time.") from None
        if when.tzinfo is None:  # EC2's times are UTC unless they say otherwise
            when = when.replace(tzinfo=UTC)
        return when.astimezone(UTC)
    if kind == "blob":
        try:
            return base64.b64decode(text, validate=True)
        except (binascii.Error, ValueError):  # ValueError: not ASCII
            raise invalid("Expected base64.") from None
    raise invalid(f"Parameters of type {kind} are not taken.")


# -- responses --------------------------------------------------------------------------


def serialize_response(model: OperationModel, output: Mapping[str, Any], request_id: str) -> bytes:
    """EC2's XML for the operation's output: ``<{Action}Response>`` in EC2's namespace
    with ``requestId``, or ``<return>true</return>`` for operations without output.
    Written as text straight from the shapes (no element tree): a listing of a thousand
    instances is a hundred thousand elements."""
    out = [
        "<?xml version='1.0' encoding='utf-8'?>\n",
        f'<{model.name}Response xmlns="{NAMESPACE}">',
        f"<requestId>{_escaped(request_id)}</requestId>",
    ]
    shape = model.output_shape
    if shape is None:
        out.append("<return>true</return>")
    else:
        _writer(shape)(out, output)
    out.append(f"</{model.name}Response>")
    return "".join(out).encode("utf-8")


def serialize_error(code: str, message: str, request_id: str) -> bytes:
    """EC2's error document (note ``RequestID`` here, ``requestId`` in answers)."""
    return (
        "<?xml version='1.0' encoding='utf-8'?>\n<Response><Errors><Error>"
        f"<Code>{_escaped(code)}</Code><Message>{_escaped(message)}</Message>"
        f"</Error></Errors><RequestID>{_escaped(request_id)}</RequestID></Response>"
    ).encode()


def _escaped(text: str) -> str:
    """``text`` as XML character data: what XML cannot carry replaced by U+FFFD."""
    if type(text) is not str:  # an id or a count given as a number, say
        text = str(text)
    if not (text.isascii() and text.isprintable()):  # most text is: skip the search
        text = _NOT_XML.sub("\ufffd", text)
    if "&" in text or "<" in text or ">" in text:
        text = text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
    return text


# A shape's writer appends a value's XML to a list of text; a scalar's renders it. Made
# once per shape, so writing a value asks its shape nothing (a listing of a thousand
# instances writes a hundred thousand elements).
Writer = Callable[[list[str], Any], None]


class Memo(NamedTuple):
    """A structure named by a key that changes whenever the structure would: its XML is
    written once and used again while answers hold the same key. For listings of many
    records of which few change between calls (a DescribeInstances of thousands)."""

    key: Hashable
    make: Callable[[], Mapping[str, Any]]


MEMO_LIMIT = 20_000  # written structures kept (an instance's is about 900 bytes)
_memos: dict[tuple[str, Hashable], str] = {}


def _memoized(shape: Shape, write: Writer, memo: Memo) -> str:
    key = (shape.name, memo.key)
    text = _memos.get(key)
    if text is None:
        parts: list[str] = []
        write(parts, memo.make())
        text = "".join(parts)
        if len(_memos) >= MEMO_LIMIT:
            _memos.clear()  # bounded, simply: what is still asked for is written again
        _memos[key] = text
    return text


@functools.cache
def _writer(shape: Shape) -> Writer:
    if shape.type_name == "structure":
        return _structure_writer(shape)
    if shape.type_name == "list":
        return _list_writer(shape)
    render = _renderer(shape)
    return lambda out, value: out.append(render(value))


def _structure_writer(shape: Shape) -> Writer:
    scalars: dict[str, tuple[str, str, Callable[[Any], str]]] = {}
    nested: dict[str, tuple[str, str, Shape]] = {}
    for member, member_shape in shape.members.items():
        name = member_shape.serialization.get("name", member)
        if member_shape.type_name in ("structure", "list"):
            nested[member] = (f"<{name}>", f"</{name}>", member_shape)
        else:
            scalars[member] = (f"<{name}>", f"</{name}>", _renderer(member_shape))

    def write(out: list[str], value: Mapping[str, Any] | Memo) -> None:
        if isinstance(value, Memo):
            out.append(_memoized(shape, write, value))
            return
        for member, member_value in value.items():
            if member_value is None:
                continue
            if member in scalars:
                opening, closing, render = scalars[member]
                out.append(opening + render(member_value) + closing)
            elif member in nested:
                # its writer found now: a shape may (through its members) hold itself
                opening, closing, member_shape = nested[member]
                out.append(opening)
                _writer(member_shape)(out, member_value)
                out.append(closing)
            else:
                raise KeyError(f"{shape.name} has no member {member}")  # a bug of ours

    return write


def _list_writer(shape: Shape) -> Writer:
    item = shape.member.serialization.get("name", "item")
    opening, closing = f"<{item}>", f"</{item}>"

    def write(out: list[str], value: list[Any]) -> None:
        write_entry = _writer(shape.member)
        for entry in value:
            out.append(opening)
            write_entry(out, entry)
            out.append(closing)

    return write


def _renderer(shape: Shape) -> Callable[[Any], str]:
    kind = shape.type_name
    if kind == "boolean":
        return lambda value: "true" if value else "false"
    if kind == "timestamp":
        return _timestamp
    if kind == "blob":
        return lambda value: base64.b64encode(value).decode("ascii")
    if kind == "string":
        return _escaped
    return lambda value: _escaped(str(value))


def _timestamp(value: datetime) -> str:
    """ISO 8601 in UTC with milliseconds, as EC2 writes its times (a naive time is
    UTC already: the database gives them so)."""
    if value.tzinfo is not None:
        value = value.astimezone(UTC).replace(tzinfo=None)
    return value.isoformat(timespec="milliseconds") + "Z"
