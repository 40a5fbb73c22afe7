"""The EC2 actions mallee serves: one table from action name to handler.

A handler takes the request's context (the caller, a database session in the request's
transaction, the cloud's settings and clusters) and the parameters as the wire layer
parsed them (names and nesting of botocore's EC2 model), calls the domain modules, and
returns the output in the model's shape. Nothing here knows XML or signatures; an action
not in the table is ``InvalidAction``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from sqlalchemy.orm import Session

from mallee.cc.client import CcClient
from mallee.clc import clusters, filters, keypairs, securitygroups, tags
from mallee.clc.db import KeyPair
from mallee.clc.users import Caller
from mallee.clc.wire import Ec2Error
from mallee.common.capacity import VmType


@dataclass(frozen=True)
class Cloud:
    """What every request may need of the cloud: its region, its instance types, and
    a client for a cluster's CC by URL."""

    region: str
    catalog: list[VmType]
    cc_client: Callable[[str], CcClient]


@dataclass(frozen=True)
class Context:
    db: Session
    caller: Caller
    cloud: Cloud
    endpoint: str  # the host the caller reached the cloud at


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
    _not_yet(params, "Filters", "MaxResults", "NextToken")
    catalog = {vm.name: vm for vm in ctx.cloud.catalog}
    wanted = params.get("InstanceTypes", [])
    if missing := [w for w in wanted if w not in catalog]:
        raise Ec2Error("InvalidInstanceType", f"The instance type '{missing[0]}' does not exist")
    return {
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
            for vm in ctx.cloud.catalog
            if not wanted or vm.name in wanted
        ]
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
    _not_yet(params, "MaxResults", "NextToken")
    found = securitygroups.describe(
        ctx.db, ctx.caller, params.get("GroupNames", []), params.get("GroupIds", [])
    )
    tagged = tags.of_all(ctx.db, [group.group_id for group, _ in found])
    found = filters.apply(
        found, params.get("Filters", []), SECURITY_GROUP_FILTERS, lambda g: tagged[g[0].group_id]
    )
    return {
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
        ]
    }


def delete_security_group(ctx: Context, params: dict[str, Any]) -> dict[str, Any]:
    group = securitygroups.find(
        ctx.db, ctx.caller.user, params.get("GroupId"), params.get("GroupName"), lock=True
    )
    securitygroups.delete(ctx.db, group)
    tags.forget(ctx.db, group.group_id)
    return {"Return": True, "GroupId": group.group_id}


def _rule_change(direction: str, change: Callable[..., None]) -> Handler:
    """Authorize or revoke, ingress or egress: the same parameters, four actions."""

    def handler(ctx: Context, params: dict[str, Any]) -> dict[str, Any]:
        _not_yet(params, "TagSpecifications", "SecurityGroupRuleIds")
        group = securitygroups.find(
            ctx.db, ctx.caller.user, params.get("GroupId"), params.get("GroupName")
        )
        change(ctx.db, group, direction, securitygroups.flows(ctx.db, group, params))
        return {"Return": True}

    return handler


def create_tags(ctx: Context, params: dict[str, Any]) -> dict[str, Any]:
    tags.create(ctx.db, ctx.caller, params["Resources"], params["Tags"])
    return {}


def delete_tags(ctx: Context, params: dict[str, Any]) -> dict[str, Any]:
    tags.delete_tags(ctx.db, ctx.caller, params["Resources"], params.get("Tags", []))
    return {}


def describe_tags(ctx: Context, params: dict[str, Any]) -> dict[str, Any]:
    _not_yet(params, "MaxResults", "NextToken")
    return {"Tags": tags.describe(ctx.db, ctx.caller, params.get("Filters", []))}


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
}
