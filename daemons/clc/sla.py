"""SLAs (seed §2.1, "SLA Implementation and Management"): every RunInstances passes
through an ordered chain of policies before anything is recorded or run.

A policy is a function ``policy(request, model, config) -> request``: it may read the
request and VmControl's model of the clouds' room and users' instances, return the
request changed (fewer instances, zones chosen, a lease set), or refuse it by raising
``Ec2Error``. The chain is ``[clc] sla_policies``, a list of ``module:function`` names
run in order; a site adds its own by writing such a function in a module of its own on
the CLC's Python path and naming it there. The ones shipped:

- ``quota``: at most ``[clc] instance_quota`` live instances per user (the seed's public
  cloud: 4); a request is cut to what is left, or refused (``InstanceLimitExceeded``)
  when not even its MinCount fits.
- ``placement``: the zone of each instance, from ``Placement.AvailabilityZone``: a
  zone's name runs the whole request there; ``mallee:emptiest`` in the zone with the
  most room; ``mallee:fit`` (also no zone given) in the first zone, by name, where
  the whole request fits; ``mallee:spread`` round-robin over the zones with room.
  As many as fit between MinCount and MaxCount run, else
  ``InsufficientInstanceCapacity``.
- ``lease``: instances end after ``[clc] lease_hours`` (the seed's: 6; 0 for never);
  VmControl terminates them then, with the reason ``Server.LeaseExpired``.
"""

from __future__ import annotations

import dataclasses
import importlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

from mallee.clc.config import ClcConfig
from mallee.clc.wire import Ec2Error
from mallee.common.capacity import VmType

EMPTIEST = "mallee:emptiest"
FIT = "mallee:fit"
SPREAD = "mallee:spread"


@dataclass(frozen=True)
class LaunchRequest:
    """What a RunInstances asks for, as the policies see and change it."""

    owner: str
    vm_type: VmType
    min_count: int
    max_count: int
    zone: str  # as asked ("" for none)
    zones: list[str] = field(default_factory=list)  # one per instance, once placed
    lease_hours: float = 0.0  # 0: no lease


class Model(Protocol):
    """What policies may read of VmControl's model."""

    def zones(self) -> list[str]:
        """The zones whose cluster answered its last poll, by name."""

    def room(self, zone: str, vm_type: VmType) -> int:
        """How many more of ``vm_type`` fit in ``zone`` now."""

    def live_instances(self, owner: str) -> int:
        """The owner's instances not terminated."""


Policy = Callable[[LaunchRequest, Model, ClcConfig], LaunchRequest]


def quota(request: LaunchRequest, model: Model, config: ClcConfig) -> LaunchRequest:
    if config.instance_quota <= 0:
        return request
    left = config.instance_quota - model.live_instances(request.owner)
    if left < request.min_count:
        raise Ec2Error(
            "InstanceLimitExceeded",
            f"Your quota allows for {max(left, 0)} more running instance(s) "
            f"(at most {config.instance_quota}); you requested at least {request.min_count}",
        )
    return dataclasses.replace(request, max_count=min(request.max_count, left))


def placement(request: LaunchRequest, model: Model, config: ClcConfig) -> LaunchRequest:
    zones = model.zones()
    if not zones:
        raise Ec2Error("InsufficientInstanceCapacity", "No availability zone answers now", 503)
    room = {z: model.room(z, request.vm_type) for z in zones}
    asked = request.zone or FIT
    if asked == SPREAD:
        placed = _spread(room, request.max_count)
    else:
        if asked == EMPTIEST:
            zone = max(zones, key=lambda z: room[z])  # the first by name of equals
        elif asked == FIT:
            fitting = [z for z in zones if room[z] >= request.max_count]
            zone = fitting[0] if fitting else max(zones, key=lambda z: room[z])
        else:
            zone = asked
            if zone not in room:
                raise Ec2Error(
                    "InvalidParameterValue",
                    f"Invalid availability zone: [{zone}] (or it does not answer now)",
                )
        placed = [zone] * min(request.max_count, room[zone])
    if len(placed) < request.min_count:
        raise Ec2Error(
            "InsufficientInstanceCapacity",
            f"There is room for {len(placed)} instance(s) of {request.vm_type.name} "
            f"where asked ({asked}); you requested at least {request.min_count}",
            503,
        )
    return dataclasses.replace(request, zones=placed)


def _spread(room: dict[str, int], count: int) -> list[str]:
    """Round-robin over the zones with room, in name order."""
    left = dict(room)
    placed: list[str] = []
    while len(placed) < count and any(left.values()):
        for zone in sorted(left):
            if left[zone] > 0 and len(placed) < count:
                placed.append(zone)
                left[zone] -= 1
    return placed


def lease(request: LaunchRequest, model: Model, config: ClcConfig) -> LaunchRequest:
    return dataclasses.replace(request, lease_hours=config.lease_hours)


def chain_of(config: ClcConfig) -> list[Policy]:
    """The site's policies, as ``[clc] sla_policies`` names them."""
    policies = []
    for name in config.sla_policies:
        module_name, _, function = name.partition(":")
        try:
            policy = getattr(importlib.import_module(module_name), function)
        except (ImportError, AttributeError, ValueError) as e:
            raise ValueError(f"[clc] sla_policies: {name!r} is not module:function ({e})") from e
        policies.append(policy)
    return policies


def apply(
    chain: list[Policy], request: LaunchRequest, model: Model, config: ClcConfig
) -> LaunchRequest:
    for policy in chain:
        request = policy(request, model, config)
    if not request.zones:
        raise Ec2Error(
            "InternalError", "The site's SLA chain placed no instance (no placement policy?)", 500
        )
    return request
