"""The public address a zone's DHCP leases each instance (public_mode managed, static).

Revision ID: 0008
Revises: 0007
"""

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"


def upgrade() -> None:
    op.add_column(
        "instances", sa.Column("leased_ip", sa.String(45), nullable=False, server_default="")
    )
    op.create_index("instances_by_leased_ip", "instances", ["leased_ip"])


def downgrade() -> None:
    op.drop_index("instances_by_leased_ip", "instances")
    op.drop_column("instances", "leased_ip")
