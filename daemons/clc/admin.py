"""``mallee-admin``: the cloud's administrative commands (the seed's Administrative
Interface), run on the CLC's host against its database.

    mallee-admin user create NAME [--admin] [--access-key ID --secret-key SECRET]
                            [--rc FILE | --bundle DIR]
    mallee-admin user add-key NAME [--access-key ID --secret-key SECRET] [--rc | --bundle]
    mallee-admin user rotate-key NAME [--rc FILE | --bundle DIR]
    mallee-admin user list | disable NAME | enable NAME | remove NAME
    mallee-admin cluster add ZONE URL | list | remove ZONE
    mallee-admin node add ZONE NAME URL | list ZONE | remove ZONE NAME [--force]
    mallee-admin image add NAME (--disk FILE | --root FILE --kernel FILE [--ramdisk FILE])
                           [--private] [--owner USER] [--description TEXT]
    mallee-admin image store FILE | list | enable ID | disable ID | remove ID
    mallee-admin instance list [--user NAME] | terminate ID...
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
from collections.abc import Sequence
from pathlib import Path

from sqlalchemy.orm import Session

from mallee.clc import app, clusters, db, images, instances, securitygroups, users
from mallee.clc.config import ClcConfig
from mallee.clc.db import Image
from mallee.clc.users import Caller
from mallee.common import config
from mallee.common.config import CommonConfig
from mallee.common.errors import MalleeError

ADMIN = Caller("mallee-admin", admin=True)


def _credentials_text(credentials: users.Credentials, region: str) -> str:
    """An rc file for the aws CLI and boto3 (``. FILE``, then ``aws ec2 ...``)."""
    return (
        f"# mallee credentials of user {credentials.user}\n"
        f"export AWS_ACCESS_KEY_ID={credentials.access_key_id}\n"
        f"export AWS_SECRET_ACCESS_KEY={credentials.secret_access_key}\n"
        f"export AWS_DEFAULT_REGION={region}\n"
    )


def _write_bundle(
    folder: Path, credentials: users.Credentials, clc: ClcConfig, common: CommonConfig
) -> None:
    """A user's credentials bundle: ``mallee.rc`` (``. mallee.rc``, then ``aws ec2
    --endpoint-url $AWS_ENDPOINT_URL ...``), an aws CLI profile ``mallee`` in
    ``aws-config`` and ``aws-credentials``, and the cloud's CA certificate."""
    folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    url = clc.public_url(common.tls)
    ca = folder / "ca.pem"
    if common.tls:
        shutil.copyfile(common.ca_cert, ca)
    ca_line = f"export AWS_CA_BUNDLE={ca}\n" if common.tls else ""
    _write_secret(
        folder / "mallee.rc",
        _credentials_text(credentials, clc.region)
        + f"export AWS_ENDPOINT_URL={url}\nexport EC2_URL={url}\n{ca_line}",
    )
    ca_setting = f"ca_bundle = {ca}\n" if common.tls else ""
    _write_secret(
        folder / "aws-config",
        f"[profile mallee]\nregion = {clc.region}\nendpoint_url = {url}\n{ca_setting}",
    )
    _write_secret(
        folder / "aws-credentials",
        f"[mallee]\naws_access_key_id = {credentials.access_key_id}\n"
        f"aws_secret_access_key = {credentials.secret_access_key}\n",
    )


def _write_secret(path: Path, text: str) -> None:
    """Write ``text`` readable by its owner only, through no symbolic link."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
    with os.fdopen(fd, "w") as f:
        os.fchmod(fd, 0o600)
        f.write(text)


def _cluster(session: Session, args: argparse.Namespace) -> None:
    if args.verb == "add":
        clusters.add(session, args.name, args.url)
    elif args.verb == "remove":
        clusters.remove(session, args.name)
    else:
        for c in clusters.all_clusters(session):
            print(f"{c.name}\t{c.url}")


def _user(session: Session, args: argparse.Namespace, clc: ClcConfig, common: CommonConfig) -> None:
    if args.verb == "list":
        for u in users.list_users(session):
            flags = ("admin " if u.admin else "") + ("enabled" if u.enabled else "disabled")
            print(f"{u.name}\t{flags}")
        return
    if args.verb in ("enable", "disable"):
        users.set_enabled(session, args.name, args.verb == "enable")
        return
    if args.verb == "remove":
        users.remove_user(session, args.name)
        return
    given = None
    if getattr(args, "access_key", None) or getattr(args, "secret_key", None):
        if not (args.access_key and args.secret_key):
            raise ValueError("give both --access-key and --secret-key")
        given = (args.access_key, args.secret_key)
    if args.verb == "create":
        credentials = users.create_user(session, args.name, args.admin, given)
        securitygroups.default_group(session, args.name)  # EC2's, from the start
    elif args.verb == "add-key":
        credentials = users.add_access_key(session, args.name, given)
    else:
        credentials = users.rotate_keys(session, args.name)
    if args.bundle:
        _write_bundle(args.bundle, credentials, clc, common)
        print(f"credentials of {args.name} written to {args.bundle}/")
    elif args.rc:
        _write_secret(args.rc, _credentials_text(credentials, clc.region))
        print(f"credentials of {args.name} written to {args.rc}")
    else:
        print(_credentials_text(credentials, clc.region), end="")


def _node(args: argparse.Namespace, session: Session, clc: ClcConfig, common: CommonConfig) -> None:
    """Nodes are their CC's: the commands go to the zone's CC."""
    cluster = session.get(db.Cluster, args.zone)
    if cluster is None:
        raise ValueError(f"no cluster {args.zone!r}")
    cc = app.cc_clients(common, clc)(cluster.url)
    if args.verb == "add":
        node = cc.register_node(args.name, args.url)
        print(f"{node.name}\t{node.url}\t{node.health}")
    elif args.verb == "remove":
        cc.deregister_node(args.name, args.force)
    else:
        for n in cc.describe_nodes():
            print(f"{n.name}\t{n.url}\t{n.health}\t{n.instances} instance(s)")


def _image(session: Session, args: argparse.Namespace, store: images.ImageStore) -> None:
    if args.verb == "store":
        print(store.add(args.file).digest)
    elif args.verb == "add":
        _add_image(session, args, store)
    elif args.verb == "list":
        for i in images.describe(session, ADMIN, [], []):
            public = "public" if i.public else "private"
            print(f"{i.image_id}\t{i.kind}\t{i.state}\t{public}\t{i.owner}\t{i.name}")
    elif args.verb == "remove":
        image = session.get(Image, args.id)
        if image is None:
            raise ValueError(f"no image {args.id!r}")
        session.delete(image)
        session.flush()
        if not images.served(session, image.digest):  # no other image has its file
            store.remove(image.digest)
    else:
        images.set_state(session, args.id, "available" if args.verb == "enable" else "disabled")


def _add_image(session: Session, args: argparse.Namespace, store: images.ImageStore) -> None:
    """Store the files and register them: a machine image, with its kernel and ramdisk
    as images of their own when given."""
    if bool(args.disk) == bool(args.root):
        raise ValueError("give --disk FILE, or --root FILE with --kernel FILE")
    if args.root and not args.kernel:
        raise ValueError("--root boots by a kernel: give --kernel FILE")
    if args.disk and (args.kernel or args.ramdisk):
        raise ValueError("--disk boots its own bootloader: no --kernel or --ramdisk")
    if args.owner != images.CLOUD_OWNER and session.get(db.User, args.owner) is None:
        raise ValueError(f"no user {args.owner!r}")
    public = not args.private

    def add(kind: str, path: Path, **refs: str | None) -> Image:
        image = images.register(
            session,
            args.owner,
            kind,
            args.name,
            store.add(path),
            public=public,
            description=args.description,
            **refs,
        )
        print(f"{image.image_id}\t{kind}\t{path.name}")
        return image

    kernel = add("kernel", args.kernel) if args.kernel else None
    ramdisk = add("ramdisk", args.ramdisk) if args.ramdisk else None
    add(
        "machine",
        args.disk or args.root,
        kernel_id=kernel.image_id if kernel else None,
        ramdisk_id=ramdisk.image_id if ramdisk else None,
    )


def _instance(session: Session, args: argparse.Namespace, clc: ClcConfig) -> None:
    if args.verb == "terminate":
        # Marked here; the CLC's next poll of each cluster ends them.
        for instance, before in instances.terminate(session, ADMIN, args.ids):
            print(f"{instance.instance_id}\t{before} -> {instance.state}")
        return
    for i in instances.visible(session, ADMIN, [], clc.terminated_visible_s):
        if args.user in (None, i.owner):
            print(f"{i.instance_id}\t{i.owner}\t{i.state}\t{i.zone}\t{i.node}\t{i.image_id}")


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="mallee-admin", description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", help=f"the host's config file (default: {config.DEFAULT_PATH})")
    nouns = parser.add_subparsers(dest="noun", required=True)
    user = nouns.add_parser("user", help="the cloud's users and their access keys")
    verbs = user.add_subparsers(dest="verb", required=True)
    for verb, text in (
        ("create", "a user with one access key"),
        ("add-key", "another access key of the user"),
        ("rotate-key", "a new access key; the older ones stop working"),
    ):
        keyed = verbs.add_parser(verb, help=text)
        keyed.add_argument("name")
        if verb == "create":
            keyed.add_argument("--admin", action="store_true", help="sees and manages everyone's")
        if verb != "rotate-key":
            keyed.add_argument("--access-key", help="a key the user brings from another cloud")
            keyed.add_argument("--secret-key", help="that key's secret")
        output = keyed.add_mutually_exclusive_group()
        output.add_argument("--rc", type=Path, help="write an rc file here (mode 0600)")
        output.add_argument(
            "--bundle", type=Path, help="write an rc file, an aws CLI profile and the CA here"
        )
    verbs.add_parser("list", help="every user")
    for verb in ("disable", "enable", "remove"):
        verbs.add_parser(verb).add_argument("name")
    cluster = nouns.add_parser("cluster", help="the cloud's clusters: a CC is a zone")
    cluster_verbs = cluster.add_subparsers(dest="verb", required=True)
    add = cluster_verbs.add_parser("add", help="a CC, as the zone NAME")
    add.add_argument("name")
    add.add_argument("url", help="where the CLC reaches the CC: https://HOST:8774")
    cluster_verbs.add_parser("list")
    cluster_verbs.add_parser("remove").add_argument("name")
    node = nouns.add_parser("node", help="a cluster's nodes, through its CC")
    node_verbs = node.add_subparsers(dest="verb", required=True)
    add_node = node_verbs.add_parser("add", help="register an NC with the zone's CC")
    add_node.add_argument("zone")
    add_node.add_argument("name")
    add_node.add_argument("url", help="where the CC reaches the NC: https://HOST:8775")
    node_verbs.add_parser("list").add_argument("zone")
    remove_node = node_verbs.add_parser("remove")
    remove_node.add_argument("zone")
    remove_node.add_argument("name")
    remove_node.add_argument("--force", action="store_true", help="a node gone for good")
    image = nouns.add_parser("image", help="the image store and its registered images")
    image_verbs = image.add_subparsers(dest="verb", required=True)
    add_image = image_verbs.add_parser("add", help="store files and register them as images")
    add_image.add_argument("name")
    add_image.add_argument("--disk", type=Path, help="a raw or qcow2 disk that boots itself")
    add_image.add_argument("--root", type=Path, help="a root file system, booted by --kernel")
    add_image.add_argument("--kernel", type=Path)
    add_image.add_argument("--ramdisk", type=Path)
    add_image.add_argument("--private", action="store_true", help="only its owner sees it")
    add_image.add_argument(
        "--owner", default=images.CLOUD_OWNER, help="a user (default: the cloud)"
    )
    add_image.add_argument("--description", default="")
    image_verbs.add_parser(
        "store", help="store a file for RegisterImage; print its location"
    ).add_argument("file", type=Path)
    image_verbs.add_parser("list")
    for verb in ("enable", "disable", "remove"):
        image_verbs.add_parser(verb).add_argument("id")
    instance = nouns.add_parser("instance", help="every user's instances")
    instance_verbs = instance.add_subparsers(dest="verb", required=True)
    instance_verbs.add_parser("list").add_argument("--user")
    instance_verbs.add_parser("terminate").add_argument("ids", nargs="+")
    args = parser.parse_args(argv)
    if args.config:
        os.environ[config.PATH_ENV] = args.config
    common, clc = config.load(ClcConfig)
    db.migrate(clc.database_url)
    sessions = db.sessions_for(clc.database_url)
    try:
        with sessions.write.begin() as session:
            if args.noun == "cluster":
                _cluster(session, args)
            elif args.noun == "node":
                _node(args, session, clc, common)
            elif args.noun == "image":
                _image(session, args, images.ImageStore(Path(clc.image_dir)))
            elif args.noun == "instance":
                _instance(session, args, clc)
            else:
                _user(session, args, clc, common)
    except (ValueError, OSError) as e:
        sys.exit(f"mallee-admin: {e}")
    except MalleeError as e:
        sys.exit(f"mallee-admin: {e.message}")


if __name__ == "__main__":
    main()
