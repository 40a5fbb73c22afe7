"""The EC2 actions mallee serves: one table from action name to handler.

A handler takes the request's context (the caller, a database session in the request's
transaction, the cloud's settings and clusters) and the parameters as the wire layer
parsed them (names and nesting of botocore's EC2 model), calls the domain modules, and
returns the output in the model's shape. Nothing here knows XML or signatures; an action
not in the table is ``InvalidAction``.
"""

from __future__ import annotations

import base64
import functools
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from mallee.cc.client import CcClient
from mallee.clc import (
    addresses,
    clusters,
    filters,
    images,
    instances,
    keypairs,
    paging,
    securitygroups,
    sla,
    tags,
    wire,
)
from mallee.clc.config import ClcConfig
from mallee.clc.db import ElasticAddress, Image, Instance, KeyPair
from mallee.clc.instances import Listed
from mallee.clc.users import Caller
from mallee.clc.vmcontrol import VmControl
from mallee.clc.wire import Ec2Error
from mallee.common.capacity import VmType
from mallee.common.rpc import RemoteError


@dataclass(frozen=True)
class Cloud:
    """What every request may need of the cloud: its settings and instance types, a
    client for a cluster's CC by URL, VmControl, the SLA chain and the image store."""

    config: ClcConfig
    catalog: list[VmType]
    cc_client: Callable[[str], CcClient]
    vmcontrol: VmControl
    sla_chain: list[sla.Policy]
    store: images.ImageStore

    @property
    def region(self) -> str:
        return self.config.region


@dataclass(frozen=True)
class Context:
    db: Session
    caller: Caller
    cloud: Cloud
    endpoint: str  # the host the caller reached the cloud at
    # What to do once the request's transaction has committed (and only then).
    after_commit: list[Callable[[], object]] = field(default_factory=list)


Handler = Callable[[Context, dict[str, Any]], dict[str, Any]]


def _not_yet(params: dict[str, Any], *names: str) -> None:
    """Parameters EC2 has and mallee does not serve yet: refused, never ignored."""
    if given := [n for n in names if params.get(n)]:
        raise Ec2Error("InvalidParameterValue", f"{', '.join(given)}: not supported yet")


def _key_pair_info(record: KeyPair, its_tags: dict[str, str], public_key: bool) -> dict[str, Any]:
    info = {
        "KeyPairId": record.key_pair_id,
        "KeyName": record.name,
        "KeyFingerprint": record.fingerprint,
        "KeyType": record.key_type,
        "CreateTime": record.created_at,
        "Tags": tags.as_list(its_tags),
    }
    if public_key:
        info["PublicKey"] = record.public_key
    return info


def _tagged(ctx: Context, resource_id: str, params: dict[str, Any]) -> list[dict[str, str]]:
    """Tag what a create call made, as its TagSpecification.N says; its tags."""
    tags.from_specifications(ctx.db, ctx.caller, resource_id, params.get("TagSpecifications", []))
    return tags.of(ctx.db, resource_id)


def create_key_pair(ctx: Context, params: dict[str, Any]) -> dict[str, Any]:
    if params.get("KeyFormat", "pem") != "pem":
        raise Ec2Error("InvalidParameterValue", "KeyFormat: only pem is supported")
    made = keypairs.create(ctx.db, ctx.caller, params["KeyName"], params.get("KeyType", "rsa"))
    return {
        "KeyPairId": made.record.key_pair_id,
        "KeyName": made.record.name,
        "KeyFingerprint": made.record.fingerprint,
        "KeyMaterial": made.private_key,
        "Tags": _tagged(ctx, made.record.key_pair_id, params),
    }


def import_key_pair(ctx: Context, params: dict[str, Any]) -> dict[str, Any]:
    record = keypairs.import_(ctx.db, ctx.caller, params["KeyName"], params["PublicKeyMaterial"])
    return {
        "KeyPairId": record.key_pair_id,
        "KeyName": record.name,
        "KeyFingerprint": record.fingerprint,
        "Tags": _tagged(ctx, record.key_pair_id, params),
    }


KEY_PAIR_FILTERS: filters.Fields = {
    "key-name": lambda k: [k.name],
    "key-pair-id": lambda k: [k.key_pair_id],
    "fingerprint": lambda k: [k.fingerprint],
    "key-type": lambda k: [k.key_type],
}


def describe_key_pairs(ctx: Context, params: dict[str, Any]) -> dict[str, Any]:
    records = keypairs.describe(
        ctx.db, ctx.caller, params.get("KeyNames", []), params.get("KeyPairIds", [])
    )
    tagged = tags.of_all(ctx.db, [r.key_pair_id for r in records])
    records = filters.apply(
        records, params.get("Filters", []), KEY_PAIR_FILTERS, lambda k: tagged[k.key_pair_id]
    )
    public = bool(params.get("IncludePublicKey"))
    return {"KeyPairs": [_key_pair_info(r, tagged[r.key_pair_id], public) for r in records]}


def delete_key_pair(ctx: Context, params: dict[str, Any]) -> dict[str, Any]:
    deleted = keypairs.delete(ctx.db, ctx.caller, params.get("KeyName"), params.get("KeyPairId"))
    if deleted:
        tags.forget(ctx.db, deleted)
    return {"Return": True, **({"KeyPairId": deleted} if deleted else {})}


def describe_regions(ctx: Context, params: dict[str, Any]) -> dict[str, Any]:
    _not_yet(params, "Filters")
    for name in params.get("RegionNames", []):
        if name != ctx.cloud.region:
            raise Ec2Error("InvalidParameterValue", f"Invalid region: {name}")
    region = {
        "RegionName": ctx.cloud.region,
        "Endpoint": ctx.endpoint,
        "OptInStatus": "opt-in-not-required",
    }
    return {"Regions": [region]}


def _zone(ctx: Context, name: str, state: str, messages: list[str]) -> dict[str, Any]:
    return {
        "ZoneName": name,
        "ZoneId": name,
        "State": state,
        "RegionName": ctx.cloud.region,
        "ZoneType": "availability-zone",
        "Messages": [{"Message": m} for m in messages],
    }


def describe_availability_zones(ctx: Context, params: dict[str, Any]) -> dict[str, Any]:
    """One zone per cluster; "available" while its CC answers. An admin who asks for
    zone "verbose" gets Eucalyptus' form: after each zone, its free and maximum count of
    each instance type."""
    _not_yet(params, "Filters")
    wanted = params.get("ZoneNames", [])
    verbose = "verbose" in wanted
    if verbose and not ctx.caller.admin:
        raise Ec2Error("UnauthorizedOperation", "The verbose zone listing is for admins", 403)
    wanted = [w for w in wanted if w != "verbose"]
    known = clusters.all_clusters(ctx.db)
    if missing := sorted(set(wanted) - {c.name for c in known}):
        raise Ec2Error("InvalidParameterValue", f"Invalid availability zone: [{missing[0]}]")
    zones = []
    for cluster in known:
        if wanted and cluster.name not in wanted:
            continue
        state = clusters.state_of(cluster, ctx.cloud.cc_client, ctx.cloud.catalog)
        problem = [f"the cluster does not answer: {state.problem}"] if state.problem else []
        zones.append(_zone(ctx, cluster.name, "unavailable" if problem else "available", problem))
        if verbose:
            zones.append(_zone(ctx, "|- vm types", "free / max   cpu   ram  disk", []))
            for room in state.rooms:
                vm = room.vm_type
                counts = f"{room.available:04d} / {room.maximum:04d}"
                line = f"{counts} {vm.cores:5d} {vm.memory_mb:5d} {vm.disk_gb:5d}"
                zones.append(_zone(ctx, f"|- {vm.name}", line, []))
    return {"AvailabilityZones": zones}


def describe_instance_types(ctx: Context, params: dict[str, Any]) -> dict[str, Any]:
    _not_yet(params, "Filters")
    catalog = {vm.name: vm for vm in ctx.cloud.catalog}
    wanted = params.get("InstanceTypes", [])
    if missing := [w for w in wanted if w not in catalog]:
        raise Ec2Error("InvalidInstanceType", f"The instance type '{missing[0]}' does not exist")
    listed, token = paging.page(
        [vm for vm in ctx.cloud.catalog if not wanted or vm.name in wanted], params
    )
    return {
        "NextToken": token,
        "InstanceTypes": [
            {
                "InstanceType": vm.name,
                "VCpuInfo": {"DefaultVCpus": vm.cores},
                "MemoryInfo": {"SizeInMiB": vm.memory_mb},
                "InstanceStorageSupported": True,
                "InstanceStorageInfo": {"TotalSizeInGB": vm.disk_gb},
                "SupportedRootDeviceTypes": ["instance-store"],
                "SupportedUsageClasses": ["on-demand"],
                "CurrentGeneration": True,
            }
            for vm in listed
        ],
    }


def create_security_group(ctx: Context, params: dict[str, Any]) -> dict[str, Any]:
    _not_yet(params, "VpcId")
    group = securitygroups.create(ctx.db, ctx.caller, params["GroupName"], params["Description"])
    return {"GroupId": group.group_id, "Tags": _tagged(ctx, group.group_id, params)}


SECURITY_GROUP_FILTERS: filters.Fields = {
    "group-name": lambda found: [found[0].name],
    "group-id": lambda found: [found[0].group_id],
    "description": lambda found: [found[0].description],
    "owner-id": lambda found: [found[0].owner],
}


def describe_security_groups(ctx: Context, params: dict[str, Any]) -> dict[str, Any]:
    if (params.get("GroupNames") or params.get("GroupIds")) and "MaxResults" in params:
        raise Ec2Error("InvalidParameterCombination", "Groups named cannot be paged")
    found = securitygroups.describe(
        ctx.db, ctx.caller, params.get("GroupNames", []), params.get("GroupIds", [])
    )
    tagged = tags.of_all(ctx.db, [group.group_id for group, _ in found])
    found = filters.apply(
        found, params.get("Filters", []), SECURITY_GROUP_FILTERS, lambda g: tagged[g[0].group_id]
    )
    found, token = paging.page(found, params)
    return {
        "NextToken": token,
        "SecurityGroups": [
            {
                "GroupId": group.group_id,
                "GroupName": group.name,
                "Description": group.description,
                "OwnerId": group.owner,
                "IpPermissions": securitygroups.permissions(ctx.db, rules, securitygroups.INGRESS),
                "IpPermissionsEgress": securitygroups.permissions(
                    ctx.db, rules, securitygroups.EGRESS
                ),
                "Tags": tags.as_list(tagged[group.group_id]),
            }
            for group, rules in found
        ],
    }


def delete_security_group(ctx: Context, params: dict[str, Any]) -> dict[str, Any]:
    group = securitygroups.find(
        ctx.db, ctx.caller.user, params.get("GroupId"), params.get("GroupName"), lock="delete"
    )
    securitygroups.delete(ctx.db, group)
    tags.forget(ctx.db, group.group_id)
    return {"Return": True, "GroupId": group.group_id}


def _rule_change(direction: str, change: Callable[..., None]) -> Handler:
    """Authorize or revoke, ingress or egress: the same parameters, four actions."""

    def handler(ctx: Context, params: dict[str, Any]) -> dict[str, Any]:
        _not_yet(params, "TagSpecifications", "SecurityGroupRuleIds")
        group = securitygroups.find(
            ctx.db, ctx.caller.user, params.get("GroupId"), params.get("GroupName"), lock="keep"
        )
        change(ctx.db, group, direction, securitygroups.flows(ctx.db, group, params))
        ctx.after_commit.append(ctx.cloud.vmcontrol.groups.sync)  # enforced when answered
        return {"Return": True}

    return handler


def create_tags(ctx: Context, params: dict[str, Any]) -> dict[str, Any]:
    tags.create(ctx.db, ctx.caller, params["Resources"], params["Tags"])
    return {}


def delete_tags(ctx: Context, params: dict[str, Any]) -> dict[str, Any]:
    tags.delete_tags(ctx.db, ctx.caller, params["Resources"], params.get("Tags", []))
    return {}


def describe_tags(ctx: Context, params: dict[str, Any]) -> dict[str, Any]:
    found, token = paging.page(tags.describe(ctx.db, ctx.caller, params.get("Filters", [])), params)
    return {"Tags": found, "NextToken": token}


def describe_account_attributes(ctx: Context, params: dict[str, Any]) -> dict[str, Any]:
    """What clients ask before they launch: the platform (EC2-Classic's kind: no VPCs)."""
    attributes = {"supported-platforms": ["EC2"], "default-vpc": ["none"]}
    wanted = params.get("AttributeNames") or list(attributes)
    if unknown := [a for a in wanted if a not in attributes]:
        raise Ec2Error("InvalidParameterValue", f"Unknown account attribute: {unknown[0]}")
    return {
        "AccountAttributes": [
            {
                "AttributeName": name,
                "AttributeValues": [{"AttributeValue": v} for v in attributes[name]],
            }
            for name in wanted
        ]
    }


# -- instances --------------------------------------------------------------------------

# Parameters of RunInstances mallee does not serve: refused when given, never ignored.
RUN_UNSUPPORTED = (
    "BlockDeviceMappings",
    "NetworkInterfaces",
    "SubnetId",
    "PrivateIpAddress",
    "IamInstanceProfile",
    "LaunchTemplate",
    "ElasticGpuSpecification",
    "ElasticInferenceAccelerators",
    "InstanceMarketOptions",
    "CreditSpecification",
    "CpuOptions",
    "CapacityReservationSpecification",
    "HibernationOptions",
    "LicenseSpecifications",
    "MetadataOptions",
    "EnclaveOptions",
    "Ipv6Addresses",
    "Ipv6AddressCount",
    "DisableApiTermination",
    "AdditionalInfo",
)


def _state(name: str) -> dict[str, Any]:
    return {"Code": instances.STATE_CODES[name], "Name": name}


def _instance_info(
    r: Listed, its_tags: dict[str, str], group_names: dict[str, str], region: str
) -> dict[str, Any]:
    reason_code, _, reason_message = r.state_reason.partition(": ")
    private_ip = r.private_ip if r.state != "terminated" else ""
    return {
        "InstanceId": r.instance_id,
        "ImageId": r.image_id,
        "State": _state(r.state),
        "PrivateDnsName": instances.dns_name(private_ip, region) if private_ip else "",
        "PublicDnsName": "",
        "StateTransitionReason": r.state_reason,
        "StateReason": (
            {"Code": reason_code, "Message": reason_message or reason_code}
            if r.state_reason
            else None
        ),
        "KeyName": r.key_name,
        "AmiLaunchIndex": r.launch_index,
        "InstanceType": r.instance_type,
        "LaunchTime": r.launch_time,
        "Placement": {"AvailabilityZone": r.zone, "Tenancy": "default"},
        "KernelId": r.kernel_id,
        "RamdiskId": r.ramdisk_id,
        "Monitoring": {"State": "disabled"},
        "PrivateIpAddress": private_ip or None,
        "PublicIpAddress": instances.public_address(r) or None,
        "Architecture": "x86_64",
        "RootDeviceType": "instance-store",
        "VirtualizationType": "paravirtual" if r.kernel_id else "hvm",
        "SecurityGroups": [
            {"GroupId": g, "GroupName": group_names[g]} for g in r.group_ids if g in group_names
        ],
        "Tags": tags.as_list(its_tags),
    }


def _group_names(ctx: Context, records: list[Listed]) -> dict[str, str]:
    wanted = {g for r in records for g in r.group_ids}
    return {g.group_id: g.name for g in securitygroups.by_ids(ctx.db, wanted)}


def _described(
    r: Listed,
    its_tags: dict[str, str],
    group_names: dict[str, str],
    region: str,
    token: str | None,
) -> wire.Memo:
    """An instance's description, named by everything it is made of (its row, its tags,
    its groups' names, its ClientToken, the region): an unchanged instance's is written
    once, not at every listing."""
    group_ids = r.group_ids
    names = tuple(map(group_names.get, group_ids))
    key = (
        r[:-1],
        tuple(group_ids),
        names,
        tuple(its_tags.items()),
        token,
        region,
    )  # [:-1]: all but group_ids

    def make() -> dict[str, Any]:
        return _instance_info(r, its_tags, group_names, region) | {"ClientToken": token}

    return wire.Memo(key, make)


def _reservations(
    ctx: Context, records: list[Listed], tokens: dict[str, str | None]
) -> list[dict[str, Any]]:
    """Instances grouped by reservation, in order of launch, as EC2 lists them."""
    tagged = tags.of_all(ctx.db, [r.instance_id for r in records])
    group_names = _group_names(ctx, records)
    by_reservation: dict[str, dict[str, Any]] = {}
    for r in records:
        reservation = by_reservation.setdefault(
            r.reservation_id,
            {"ReservationId": r.reservation_id, "OwnerId": r.owner, "Groups": [], "Instances": []},
        )
        token = tokens.get(r.reservation_id)
        reservation["Instances"].append(
            _described(r, tagged[r.instance_id], group_names, ctx.cloud.region, token)
        )
    return list(by_reservation.values())


def run_instances(ctx: Context, params: dict[str, Any]) -> dict[str, Any]:
    _not_yet(params, *RUN_UNSUPPORTED)
    cloud = ctx.cloud
    launch = instances.run(
        ctx.db,
        ctx.caller,
        params,
        cloud.catalog,
        cloud.config,
        cloud.sla_chain,
        cloud.vmcontrol.model(ctx.db),
    )
    if not launch.repeated:
        for record in launch.instances:
            for spec in params.get("TagSpecifications", []):
                tags.create(ctx.db, ctx.caller, [record.instance_id], spec.get("Tags", []))
        reservation_id = launch.reservation.reservation_id
        ctx.after_commit.append(lambda: cloud.vmcontrol.dispatch(reservation_id))
    ids = [r.instance_id for r in launch.instances]
    [reservation] = _reservations(
        ctx,
        instances.visible(ctx.db, ctx.caller, ids, cloud.config.terminated_visible_s),
        {launch.reservation.reservation_id: launch.reservation.client_token},
    )
    return reservation


INSTANCE_FILTERS: filters.Fields = {
    "instance-id": lambda r: [r.instance_id],
    "reservation-id": lambda r: [r.reservation_id],
    "instance-state-name": lambda r: [r.state],
    "instance-state-code": lambda r: [str(instances.STATE_CODES[r.state])],
    "instance-type": lambda r: [r.instance_type],
    "image-id": lambda r: [r.image_id],
    "kernel-id": lambda r: [r.kernel_id] if r.kernel_id else [],
    "ramdisk-id": lambda r: [r.ramdisk_id] if r.ramdisk_id else [],
    "key-name": lambda r: [r.key_name] if r.key_name else [],
    "availability-zone": lambda r: [r.zone],
    "owner-id": lambda r: [r.owner],
    "launch-index": lambda r: [str(r.launch_index)],
    "group-id": lambda r: list(r.group_ids),
    "instance.group-id": lambda r: list(r.group_ids),
    "private-ip-address": lambda r: [r.private_ip] if r.state != "terminated" else [],
    "ip-address": lambda r: [a] if (a := instances.public_address(r)) else [],
    "architecture": lambda r: ["x86_64"],
    "root-device-type": lambda r: ["instance-store"],
}


def _listed(ctx: Context, params: dict[str, Any], ids_param: str) -> list[Listed]:
    ids = params.get(ids_param, [])
    if ids and "MaxResults" in params:
        raise Ec2Error("InvalidParameterCombination", f"{ids_param} cannot be used with MaxResults")
    records = instances.visible(ctx.db, ctx.caller, ids, ctx.cloud.config.terminated_visible_s)

    @functools.cache  # read only when a filter asks for tags
    def tagged() -> dict[str, dict[str, str]]:
        return tags.of_all(ctx.db, [r.instance_id for r in records])

    return filters.apply(
        records, params.get("Filters", []), INSTANCE_FILTERS, lambda r: tagged()[r.instance_id]
    )


def describe_instances(ctx: Context, params: dict[str, Any]) -> dict[str, Any]:
    records, token = paging.page(_listed(ctx, params, "InstanceIds"), params)
    tokens = instances.client_tokens(ctx.db, {r.reservation_id for r in records})
    return {"Reservations": _reservations(ctx, records, tokens), "NextToken": token}


def describe_instance_status(ctx: Context, params: dict[str, Any]) -> dict[str, Any]:
    """Running instances (all with IncludeAllInstances); a running instance's checks
    pass while its node answers."""
    records = _listed(ctx, params, "InstanceIds")
    if not params.get("IncludeAllInstances"):
        records = [r for r in records if r.state == "running"]
    records, token = paging.page(records, params)
    reachable = ctx.cloud.vmcontrol.reachable({r.instance_id for r in records})

    def status(r: Listed) -> dict[str, Any]:
        if r.state != "running":
            return {"Status": "not-applicable"}
        ok = r.instance_id in reachable
        check = "passed" if ok else "failed"
        return {
            "Status": "ok" if ok else "impaired",
            "Details": [{"Name": "reachability", "Status": check}],
        }

    return {
        "InstanceStatuses": [
            {
                "InstanceId": r.instance_id,
                "AvailabilityZone": r.zone,
                "InstanceState": _state(r.state),
                "InstanceStatus": status(r),
                "SystemStatus": status(r),
            }
            for r in records
        ],
        "NextToken": token,
    }


def terminate_instances(ctx: Context, params: dict[str, Any]) -> dict[str, Any]:
    changed = instances.terminate(ctx.db, ctx.caller, params["InstanceIds"])
    ending = [r.instance_id for r, _ in changed if r.state == "shutting-down"]
    ctx.after_commit.append(lambda: ctx.cloud.vmcontrol.terminate(ending))
    return {
        "TerminatingInstances": [
            {
                "InstanceId": r.instance_id,
                "CurrentState": _state(r.state),
                "PreviousState": _state(before),
            }
            for r, before in changed
        ]
    }


def reboot_instances(ctx: Context, params: dict[str, Any]) -> dict[str, Any]:
    records = instances.owned(ctx.db, ctx.caller, params["InstanceIds"])
    if ended := [r.instance_id for r in records if r.state in ("shutting-down", "terminated")]:
        raise Ec2Error("IncorrectInstanceState", f"The instance '{ended[0]}' is not running")
    ctx.cloud.vmcontrol.reboot(ctx.db, [r for r in records if r.state == "running"])
    return {}


def get_console_output(ctx: Context, params: dict[str, Any]) -> dict[str, Any]:
    [record] = instances.owned(ctx.db, ctx.caller, [params["InstanceId"]])
    output = ctx.cloud.vmcontrol.console_output(ctx.db, record)
    return {
        "InstanceId": record.instance_id,
        "Timestamp": datetime.now(UTC),
        "Output": base64.b64encode(output.encode()).decode("ascii"),
    }


def describe_instance_attribute(ctx: Context, params: dict[str, Any]) -> dict[str, Any]:
    [r] = instances.visible(
        ctx.db, ctx.caller, [params["InstanceId"]], ctx.cloud.config.terminated_visible_s
    )
    attribute = params["Attribute"]
    values: dict[str, Callable[[], dict[str, Any]]] = {
        "userData": lambda: {
            "UserData": {"Value": ctx.db.get_one(Instance, r.instance_id).user_data}
        },
        "instanceType": lambda: {"InstanceType": {"Value": r.instance_type}},
        "kernel": lambda: {"KernelId": {"Value": r.kernel_id}},
        "ramdisk": lambda: {"RamdiskId": {"Value": r.ramdisk_id}},
        "groupSet": lambda: {
            "Groups": [
                {"GroupId": g.group_id, "GroupName": g.name}
                for g in securitygroups.by_ids(ctx.db, set(r.group_ids))
            ]
        },
        "rootDeviceName": lambda: {"RootDeviceName": {"Value": "/dev/vda"}},
        "disableApiTermination": lambda: {"DisableApiTermination": {"Value": False}},
        "instanceInitiatedShutdownBehavior": lambda: {
            "InstanceInitiatedShutdownBehavior": {"Value": "terminate"}
        },
    }
    return {"InstanceId": r.instance_id, **_attribute(attribute, values)}


def _attribute(attribute: str, values: dict[str, Callable[[], dict[str, Any]]]) -> dict[str, Any]:
    """The answer for one of a resource's attributes, each made only when asked."""
    if attribute not in values:
        raise Ec2Error(
            "InvalidParameterValue",
            f"Attribute {attribute}: mallee answers {', '.join(values)}",
        )
    return values[attribute]()


# -- images -----------------------------------------------------------------------------


def _image_info(image: Image, its_tags: dict[str, str]) -> dict[str, Any]:
    return {
        "ImageId": image.image_id,
        "ImageLocation": image.digest,
        "State": image.state if image.state == "available" else "disabled",
        "OwnerId": image.owner,
        "CreationDate": images.creation_date(image),
        "Public": image.public,
        "Architecture": "x86_64",
        "ImageType": image.kind,
        "KernelId": image.kernel_id,
        "RamdiskId": image.ramdisk_id,
        "Name": image.name,
        "Description": image.description or None,
        "RootDeviceType": "instance-store",
        "RootDeviceName": "/dev/vda",
        "VirtualizationType": "paravirtual" if image.kernel_id else "hvm",
        "Hypervisor": "xen",  # the model's enum knows ovm and xen only
        "Tags": tags.as_list(its_tags),
    }


IMAGE_FILTERS: filters.Fields = {
    "image-id": lambda i: [i.image_id],
    "image-type": lambda i: [i.kind],
    "name": lambda i: [i.name],
    "description": lambda i: [i.description],
    "owner-id": lambda i: [i.owner],
    "is-public": lambda i: ["true" if i.public else "false"],
    "state": lambda i: [i.state],
    "kernel-id": lambda i: [i.kernel_id] if i.kernel_id else [],
    "ramdisk-id": lambda i: [i.ramdisk_id] if i.ramdisk_id else [],
    "architecture": lambda i: ["x86_64"],
    "root-device-type": lambda i: ["instance-store"],
}


def describe_images(ctx: Context, params: dict[str, Any]) -> dict[str, Any]:
    _not_yet(params, "ExecutableUsers")
    found = images.describe(
        ctx.db, ctx.caller, params.get("ImageIds", []), params.get("Owners", [])
    )
    tagged = tags.of_all(ctx.db, [i.image_id for i in found])
    found = filters.apply(
        found, params.get("Filters", []), IMAGE_FILTERS, lambda i: tagged[i.image_id]
    )
    found, token = paging.page(found, params)
    return {"Images": [_image_info(i, tagged[i.image_id]) for i in found], "NextToken": token}


def register_image(ctx: Context, params: dict[str, Any]) -> dict[str, Any]:
    """Admins register a file of the image store (``mallee-admin image store FILE``
    prints its location) as a machine image, booting its own disk or the kernel (and
    ramdisk) named."""
    _not_yet(params, "BlockDeviceMappings", "BillingProducts", "SriovNetSupport", "EnaSupport")
    if not ctx.caller.admin:
        raise Ec2Error("UnauthorizedOperation", "Only admins register images", 403)
    if params.get("Architecture", "x86_64") != "x86_64":
        raise Ec2Error("InvalidParameterValue", "Architecture: mallee runs x86_64 only")
    location = params.get("ImageLocation") or ""
    stored = ctx.cloud.store.stat(location)
    if stored is None:
        raise Ec2Error(
            "InvalidParameterValue",
            f"ImageLocation {location[:80]!r}: not a file of the image store (sha256:HEX, "
            "as `mallee-admin image store FILE` prints it)",
        )
    image = images.register(
        ctx.db,
        ctx.caller.user,
        "machine",
        params["Name"],
        stored,
        kernel_id=params.get("KernelId"),
        ramdisk_id=params.get("RamdiskId"),
        description=params.get("Description", ""),
    )
    return {"ImageId": image.image_id}


def deregister_image(ctx: Context, params: dict[str, Any]) -> dict[str, Any]:
    images.deregister(ctx.db, ctx.caller, params["ImageId"])
    tags.forget(ctx.db, params["ImageId"])
    return {}


def modify_image_attribute(ctx: Context, params: dict[str, Any]) -> dict[str, Any]:
    """Launch permission for everyone (``Group: all``) given or taken, or a new
    description: by the image's owner or an admin."""
    _not_yet(params, "UserIds", "UserGroups", "ProductCodes", "OrganizationArns")
    image = images.find(ctx.db, ctx.caller, params["ImageId"])
    if image.owner != ctx.caller.user and not ctx.caller.admin:
        raise Ec2Error("AuthFailure", f"The image '{image.image_id}' is not yours", 403)
    permission = params.get("LaunchPermission", {})
    for change, public in (("Add", True), ("Remove", False)):
        for grant in permission.get(change, []):
            if grant.get("Group") != "all" or set(grant) - {"Group"}:
                raise Ec2Error("InvalidParameterValue", "Launch permissions go to Group 'all' only")
            image.public = public
    if "Description" in params:
        image.description = str(params["Description"].get("Value", ""))[:255]
    return {}


def describe_image_attribute(ctx: Context, params: dict[str, Any]) -> dict[str, Any]:
    image = images.find(ctx.db, ctx.caller, params["ImageId"])
    attribute = params["Attribute"]
    values: dict[str, Callable[[], dict[str, Any]]] = {
        "description": lambda: {"Description": {"Value": image.description}},
        "kernel": lambda: {"KernelId": {"Value": image.kernel_id}},
        "ramdisk": lambda: {"RamdiskId": {"Value": image.ramdisk_id}},
        "launchPermission": lambda: {
            "LaunchPermissions": [{"Group": "all"}] if image.public else []
        },
        "productCodes": lambda: {"ProductCodes": []},
        "blockDeviceMapping": lambda: {"BlockDeviceMappings": []},
    }
    return {"ImageId": image.image_id, **_attribute(attribute, values)}


# -- elastic addresses ------------------------------------------------------------------


def _address_info(a: ElasticAddress, private_ips: dict[str, str]) -> dict[str, Any]:
    return {
        "PublicIp": a.public_ip,
        "AllocationId": a.allocation_id,
        "Domain": "standard",
        "InstanceId": a.instance_id,
        "AssociationId": a.association_id,
        "PrivateIpAddress": private_ips.get(a.instance_id or ""),
    }


def allocate_address(ctx: Context, params: dict[str, Any]) -> dict[str, Any]:
    _not_yet(params, "Address", "PublicIpv4Pool", "CustomerOwnedIpv4Pool", "NetworkBorderGroup")
    if params.get("Domain", "standard") != "standard":
        raise Ec2Error("InvalidParameterValue", "Domain: this cloud has no VPCs (standard only)")
    made = addresses.allocate(ctx.db, ctx.caller, ctx.cloud.config.public_addresses)
    return {"PublicIp": made.public_ip, "AllocationId": made.allocation_id, "Domain": "standard"}


def associate_address(ctx: Context, params: dict[str, Any]) -> dict[str, Any]:
    _not_yet(params, "NetworkInterfaceId", "PrivateIpAddress")
    if not params.get("InstanceId"):
        raise Ec2Error("MissingParameter", "The request must contain the parameter InstanceId")
    address = addresses.find(ctx.db, ctx.caller, params.get("PublicIp"), params.get("AllocationId"))
    [instance] = instances.owned(ctx.db, ctx.caller, [params["InstanceId"]])
    association_id = addresses.associate(ctx.db, address, instance)
    zone, public_ip = instance.zone, address.public_ip
    ctx.after_commit.append(lambda: _translated(ctx.cloud, zone, public_ip, association_id))
    return {"AssociationId": association_id}


def _translated(cloud: Cloud, zone: str, public_ip: str, association_id: str) -> None:
    """Answer once the zone's CC translates the address. A CC that refuses it (a zone
    whose CC routes no public traffic, say) undoes the association, and the caller is
    told why; one that does not answer gets it at a later sync."""
    refused = cloud.vmcontrol.addresses.sync().get(zone, {}).get(public_ip)
    if not isinstance(refused, RemoteError):  # translated, or the CC did not answer
        return
    with cloud.vmcontrol.sessions.write.begin() as db:
        address = db.get(ElasticAddress, public_ip)
        if address is not None and address.association_id == association_id:
            addresses.disassociate(db, address)
    raise Ec2Error(refused.code, f"Zone {zone} cannot translate {public_ip}: {refused.message}")


def disassociate_address(ctx: Context, params: dict[str, Any]) -> dict[str, Any]:
    if params.get("AssociationId"):
        address = addresses.by_association(ctx.db, ctx.caller, params["AssociationId"])
    else:
        address = addresses.find(ctx.db, ctx.caller, params.get("PublicIp"), None)
    addresses.disassociate(ctx.db, address)
    ctx.after_commit.append(ctx.cloud.vmcontrol.addresses.sync)  # no longer translated
    return {}


def release_address(ctx: Context, params: dict[str, Any]) -> dict[str, Any]:
    address = addresses.find(ctx.db, ctx.caller, params.get("PublicIp"), params.get("AllocationId"))
    addresses.disassociate(ctx.db, address)
    ctx.db.delete(address)
    tags.forget(ctx.db, address.allocation_id)
    ctx.after_commit.append(ctx.cloud.vmcontrol.addresses.sync)
    return {}


ADDRESS_FILTERS: filters.Fields = {
    "public-ip": lambda a: [a.public_ip],
    "allocation-id": lambda a: [a.allocation_id],
    "instance-id": lambda a: [a.instance_id] if a.instance_id else [],
    "association-id": lambda a: [a.association_id] if a.association_id else [],
    "domain": lambda a: ["standard"],
}


def describe_addresses(ctx: Context, params: dict[str, Any]) -> dict[str, Any]:
    found = addresses.describe(
        ctx.db, ctx.caller, params.get("PublicIps", []), params.get("AllocationIds", [])
    )
    found = filters.apply(found, params.get("Filters", []), ADDRESS_FILTERS)
    held = {a.instance_id for a in found if a.instance_id}
    query = select(Instance.instance_id, Instance.private_ip).where(Instance.instance_id.in_(held))
    private_ips = {i: ip for i, ip in ctx.db.execute(query)}
    return {"Addresses": [_address_info(a, private_ips) for a in found]}


ACTIONS: dict[str, Handler] = {
    "CreateKeyPair": create_key_pair,
    "ImportKeyPair": import_key_pair,
    "DescribeKeyPairs": describe_key_pairs,
    "DeleteKeyPair": delete_key_pair,
    "DescribeRegions": describe_regions,
    "DescribeAvailabilityZones": describe_availability_zones,
    "DescribeInstanceTypes": describe_instance_types,
    "CreateSecurityGroup": create_security_group,
    "DescribeSecurityGroups": describe_security_groups,
    "DeleteSecurityGroup": delete_security_group,
    "AuthorizeSecurityGroupIngress": _rule_change(securitygroups.INGRESS, securitygroups.authorize),
    "AuthorizeSecurityGroupEgress": _rule_change(securitygroups.EGRESS, securitygroups.authorize),
    "RevokeSecurityGroupIngress": _rule_change(securitygroups.INGRESS, securitygroups.revoke),
    "RevokeSecurityGroupEgress": _rule_change(securitygroups.EGRESS, securitygroups.revoke),
    "CreateTags": create_tags,
    "DeleteTags": delete_tags,
    "DescribeTags": describe_tags,
    "DescribeAccountAttributes": describe_account_attributes,
    "RunInstances": run_instances,
    "DescribeInstances": describe_instances,
    "DescribeInstanceStatus": describe_instance_status,
    "TerminateInstances": terminate_instances,
    "RebootInstances": reboot_instances,
    "GetConsoleOutput": get_console_output,
    "DescribeInstanceAttribute": describe_instance_attribute,
    "DescribeImages": describe_images,
    "RegisterImage": register_image,
    "DeregisterImage": deregister_image,
    "DescribeImageAttribute": describe_image_attribute,
    "ModifyImageAttribute": modify_image_attribute,
    "AllocateAddress": allocate_address,
    "AssociateAddress": associate_address,
    "DisassociateAddress": disassociate_address,
    "ReleaseAddress": release_address,
    "DescribeAddresses": describe_addresses,
}
