"""``mallee-admin``: the cloud's administrative commands (the seed's Administrative
Interface), run on the CLC's host against its database.

    mallee-admin user create NAME [--admin] [--rc FILE]
    mallee-admin user list
    mallee-admin user disable NAME | enable NAME
    mallee-admin user add-key NAME
    mallee-admin cluster add ZONE URL | list | remove ZONE
    mallee-admin image add NAME (--disk FILE | --root FILE --kernel FILE [--ramdisk FILE])
                           [--private] [--owner USER] [--description TEXT]
    mallee-admin image store FILE | list | enable ID | disable ID | remove ID
    mallee-admin instance list [--user NAME] | terminate ID...
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from sqlalchemy.orm import Session

from mallee.clc import clusters, db, images, instances, securitygroups, users
from mallee.clc.config import ClcConfig
from mallee.clc.db import Image
from mallee.clc.users import Caller
from mallee.common import config
from mallee.common.errors import MalleeError

ADMIN = Caller("mallee-admin", admin=True)


def _credentials_text(credentials: users.Credentials, clc: ClcConfig) -> str:
    """An rc file for the aws CLI and boto3 (``. FILE``, then ``aws ec2 ...``)."""
    return (
        f"# mallee credentials of user {credentials.user}\n"
        f"export AWS_ACCESS_KEY_ID={credentials.access_key_id}\n"
        f"export AWS_SECRET_ACCESS_KEY={credentials.secret_access_key}\n"
        f"export AWS_DEFAULT_REGION={clc.region}\n"
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


def _instance(session: Session, args: argparse.Namespace) -> None:
    if args.verb == "terminate":
        # Marked here; the CLC's next poll of each cluster ends them.
        for instance, before in instances.terminate(session, ADMIN, args.ids):
            print(f"{instance.instance_id}\t{before} -> {instance.state}")
        return
    for i in instances.visible(session, ADMIN, [], terminated_visible_s=float("inf")):
        if args.user in (None, i.owner):
            print(f"{i.instance_id}\t{i.owner}\t{i.state}\t{i.zone}\t{i.node}\t{i.image_id}")


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="mallee-admin", description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", help=f"the host's config file (default: {config.DEFAULT_PATH})")
    nouns = parser.add_subparsers(dest="noun", required=True)
    user = nouns.add_parser("user", help="the cloud's users and their access keys")
    verbs = user.add_subparsers(dest="verb", required=True)
    create = verbs.add_parser("create", help="a user with one access key")
    create.add_argument("name")
    create.add_argument("--admin", action="store_true", help="sees and manages everyone's")
    create.add_argument("--rc", type=Path, help="write the credentials here (mode 0600)")
    verbs.add_parser("list", help="every user")
    for verb in ("disable", "enable", "add-key"):
        verbs.add_parser(verb).add_argument("name")
    cluster = nouns.add_parser("cluster", help="the cloud's clusters: a CC is a zone")
    cluster_verbs = cluster.add_subparsers(dest="verb", required=True)
    add = cluster_verbs.add_parser("add", help="a CC, as the zone NAME")
    add.add_argument("name")
    add.add_argument("url", help="where the CLC reaches the CC: https://HOST:8774")
    cluster_verbs.add_parser("list")
    cluster_verbs.add_parser("remove").add_argument("name")
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
    _, clc = config.load(ClcConfig)
    db.migrate(clc.database_url)
    sessions = db.sessions(db.engine_for(clc.database_url))
    try:
        with sessions.begin() as session:
            if args.noun == "cluster":
                _cluster(session, args)
            elif args.noun == "image":
                _image(session, args, images.ImageStore(Path(clc.image_dir)))
            elif args.noun == "instance":
                _instance(session, args)
            elif args.verb == "create" or args.verb == "add-key":
                if args.verb == "create":
                    credentials = users.create_user(session, args.name, args.admin)
                    securitygroups.default_group(session, args.name)  # EC2's, from the start
                else:
                    credentials = users.add_access_key(session, args.name)
                text = _credentials_text(credentials, clc)
                if getattr(args, "rc", None):
                    _write_secret(args.rc, text)
                    print(f"credentials of {args.name} written to {args.rc}")
                else:
                    print(text, end="")
            elif args.verb == "list":
                for u in users.list_users(session):
                    flags = ("admin " if u.admin else "") + ("enabled" if u.enabled else "disabled")
                    print(f"{u.name}\t{flags}")
            else:
                users.set_enabled(session, args.name, args.verb == "enable")
    except (ValueError, OSError) as e:
        sys.exit(f"mallee-admin: {e}")
    except MalleeError as e:
        sys.exit(f"mallee-admin: {e.message}")


if __name__ == "__main__":
    main()
