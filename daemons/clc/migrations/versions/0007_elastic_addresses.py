"""Elastic (public) addresses.

Revision ID: 0007
Revises: 0006
"""

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"


def upgrade() -> None:
    op.create_table(
        "elastic_addresses",
        sa.Column("public_ip", sa.String(45), primary_key=True),
        sa.Column("allocation_id", sa.String(32), nullable=False, unique=True),
        sa.Column(
            "owner",
            sa.String(64),
            sa.ForeignKey("users.name", ondelete="CASCADE"),
            nullable=False,
        ),
        sa.Column(
            "instance_id",
            sa.String(32),
            sa.ForeignKey("instances.instance_id", ondelete="SET NULL"),
            unique=True,
        ),
        sa.Column("association_id", sa.String(32)),
    )


def downgrade() -> None:
    op.drop_table("elastic_addresses")
