"""``mallee-admin``: the cloud's administrative commands (the seed's Administrative
Interface), run on the CLC's host against its database.

    mallee-admin user create NAME [--admin] [--rc FILE]
    mallee-admin user list
    mallee-admin user disable NAME | enable NAME
    mallee-admin user add-key NAME
    mallee-admin cluster add ZONE URL | list | remove ZONE
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from sqlalchemy.orm import Session

from mallee.clc import clusters, db, securitygroups, users
from mallee.clc.config import ClcConfig
from mallee.common import config


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
    except ValueError as e:
        sys.exit(f"mallee-admin: {e}")


if __name__ == "__main__":
    main()
