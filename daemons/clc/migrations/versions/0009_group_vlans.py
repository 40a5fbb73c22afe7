"""Each security group's VLAN on the private overlay, and each instance's; default
groups made before let their own members in, as EC2's do and new ones now do.

Revision ID: 0009
Revises: 0008
"""

import secrets

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"


def upgrade() -> None:
    op.create_table(
        "group_vlans",
        sa.Column(
            "group_id",
            sa.String(32),
            sa.ForeignKey("security_groups.group_id", ondelete="CASCADE"),
            primary_key=True,
        ),
        sa.Column("vlan", sa.Integer, nullable=False, unique=True),
    )
    op.add_column("instances", sa.Column("vlan", sa.Integer))
    rules = sa.table(
        "security_group_rules",
        *(sa.column(c) for c in ("rule_id", "group_id", "direction", "protocol")),
        *(sa.column(c) for c in ("from_port", "to_port", "cidr", "peer_group_id")),
    )
    connection = op.get_bind()
    defaults = connection.execute(
        sa.text(
            "SELECT g.group_id FROM security_groups g WHERE g.name = 'default'"
            " AND NOT EXISTS (SELECT 1 FROM security_group_rules r"
            " WHERE r.group_id = g.group_id AND r.direction = 'ingress' AND r.protocol = '-1'"
            " AND r.from_port = -1 AND r.to_port = -1 AND r.cidr = ''"
            " AND r.peer_group_id = g.group_id)"
        )
    ).scalars()
    for group_id in list(defaults):
        op.bulk_insert(
            rules,
            [
                {
                    "rule_id": "sgr-" + secrets.token_hex(9)[:17],
                    "group_id": group_id,
                    "direction": "ingress",
                    "protocol": "-1",
                    "from_port": -1,
                    "to_port": -1,
                    "cidr": "",
                    "peer_group_id": group_id,
                }
            ],
        )


def downgrade() -> None:
    op.drop_column("instances", "vlan")
    op.drop_table("group_vlans")
