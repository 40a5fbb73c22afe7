"""Each security group's VLAN on the private overlay, and each instance's.

Revision ID: 0009
Revises: 0008
"""

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


def downgrade() -> None:
    op.drop_column("instances", "vlan")
    op.drop_table("group_vlans")
