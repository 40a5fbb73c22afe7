"""The private addresses live instances hold.

Revision ID: 0006
Revises: 0005
"""

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"


def upgrade() -> None:
    op.create_table(
        "private_addresses",
        sa.Column("address", sa.String(45), primary_key=True),
        sa.Column(
            "instance_id",
            sa.String(32),
            sa.ForeignKey("instances.instance_id", ondelete="CASCADE"),
            nullable=False,
            unique=True,
        ),
    )


def downgrade() -> None:
    op.drop_table("private_addresses")
