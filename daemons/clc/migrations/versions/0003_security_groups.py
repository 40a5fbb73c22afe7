"""Security groups and their rules.

Revision ID: 0003
Revises: 0002
"""

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"


def upgrade() -> None:
    op.create_table(
        "security_groups",
        sa.Column("group_id", sa.String(32), primary_key=True),
        sa.Column(
            "owner",
            sa.String(64),
            sa.ForeignKey("users.name", ondelete="CASCADE"),
            nullable=False,
        ),
        sa.Column("name", sa.String(255), nullable=False),
        sa.Column("description", sa.String(255), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.UniqueConstraint("owner", "name"),
    )
    op.create_table(
        "security_group_rules",
        sa.Column("rule_id", sa.String(32), primary_key=True),
        sa.Column(
            "group_id",
            sa.String(32),
            sa.ForeignKey("security_groups.group_id", ondelete="CASCADE"),
            nullable=False,
        ),
        sa.Column("direction", sa.String(8), nullable=False),
        sa.Column("protocol", sa.String(8), nullable=False),
        sa.Column("from_port", sa.Integer, nullable=False),
        sa.Column("to_port", sa.Integer, nullable=False),
        sa.Column("cidr", sa.String(64), nullable=False),
        sa.Column("peer_group_id", sa.String(32), nullable=False),
        sa.UniqueConstraint(
            "group_id", "direction", "protocol", "from_port", "to_port", "cidr", "peer_group_id"
        ),
    )


def downgrade() -> None:
    op.drop_table("security_group_rules")
    op.drop_table("security_groups")
