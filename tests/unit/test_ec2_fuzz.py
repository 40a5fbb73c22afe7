"""Hypothesis throws signed requests of every action mallee serves at the EC2 front end,
with keys drawn from the action's input shape (and some that are not), values of any
text: no answer is a 5xx, and every answer is EC2's XML that botocore reads."""

from __future__ import annotations

import pytest
from botocore.model import Shape
from botocore.parsers import create_parser
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mallee.cc.client import CcClient
from mallee.clc import db, users, wire
from mallee.clc.actions import ACTIONS
from mallee.clc.app import build_cloud
from mallee.clc.config import ClcConfig
from mallee.clc.frontend import Ec2Frontend
from mallee.common.errors import MalleeError
from mallee.common.metrics import Metrics
from tests.support.ec2 import signed


def wire_keys(shape: Shape, prefix: str = "", depth: int = 0) -> list[str]:
    """Every scalar key of ``shape`` on the wire, lists numbered 1 and 2."""
    keys = []
    for member, member_shape in shape.members.items():
        key = prefix + wire.wire_name(member_shape, member)
        keys += _keys_of(member_shape, key, depth)
    return keys


def _keys_of(shape: Shape, key: str, depth: int) -> list[str]:
    if depth > 4:
        return []
    if shape.type_name == "structure":
        return wire_keys(shape, f"{key}.", depth + 1)
    if shape.type_name == "list":
        return [k for i in (1, 2) for k in _keys_of(shape.member, f"{key}.{i}", depth + 1)]
    return [key]


KEYS = {
    action: [*wire_keys(wire.operation(action).input_shape), "Bogus", "Filter.0.Name"]
    for action in ACTIONS
}
VALUES = st.one_of(
    st.text(max_size=40),
    st.integers(-(2**70), 2**70).map(str),
    st.sampled_from(["true", "false", "-1", "0", "", "tcp", "0.0.0.0/0", "sg-0", "key-0", "*"]),
)


@st.composite
def requests(draw: st.DrawFn) -> dict[str, str]:
    action = draw(st.sampled_from(sorted(KEYS)))
    keys = draw(st.lists(st.sampled_from(KEYS[action]), max_size=8, unique=True))
    return {"Action": action, "Version": wire.API_VERSION} | {k: draw(VALUES) for k in keys}


def unreachable_cc(url: str) -> CcClient:
    raise MalleeError(f"no cluster at {url} in this test")


@pytest.fixture(scope="module")
def cloud(tmp_path_factory: pytest.TempPathFactory) -> tuple[Ec2Frontend, users.Credentials]:
    url = f"sqlite:///{tmp_path_factory.mktemp('clc') / 'clc.db'}"
    db.migrate(url)
    sessions = db.sessions_for(url)
    with sessions.write.begin() as session:
        credentials = users.create_user(session, "fuzzer")
    config = ClcConfig(
        instance_types=["m1.small 1 128 2"],
        image_dir=str(tmp_path_factory.mktemp("images")),
        cc_timeout_s=0.01,
    )
    cloud = build_cloud(config, sessions, unreachable_cc, "https://clc", Metrics("test"))
    return Ec2Frontend(sessions, cloud), credentials


@settings(
    max_examples=400, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(params=requests())
def test_no_request_makes_a_5xx_or_a_broken_answer(
    cloud: tuple[Ec2Frontend, users.Credentials], params: dict[str, str]
) -> None:
    frontend, credentials = cloud
    answer = frontend.handle(signed(params, credentials), "req-fuzz")
    # EC2's 503s: no cluster has room (none answers in this test), or try again.
    unavailable = (b"InsufficientInstanceCapacity", b"ServiceUnavailable", b"RequestLimitExceeded")
    assert answer.status < 500 or (
        answer.status == 503 and any(code in answer.body for code in unavailable)
    ), answer.body
    model = wire.operation(params["Action"])
    response = {"body": answer.body, "headers": {}, "status_code": answer.status}
    parsed = create_parser("ec2").parse(response, model.output_shape)
    assert parsed["ResponseMetadata"]["RequestId"] == "req-fuzz"
    assert b"Traceback" not in answer.body


def test_the_fuzz_reaches_the_actions(cloud: tuple[Ec2Frontend, users.Credentials]) -> None:
    """The requests above are signed well enough to get past the signature check."""
    frontend, credentials = cloud
    params = {"Action": "DescribeKeyPairs", "Version": wire.API_VERSION}
    assert frontend.handle(signed(params, credentials), "req-1").status == 200
