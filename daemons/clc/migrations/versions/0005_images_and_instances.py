"""Images, reservations and instances.

Revision ID: 0005
Revises: 0004
"""

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"


def _owner() -> sa.Column:  # type: ignore[type-arg]
    return sa.Column(
        "owner", sa.String(64), sa.ForeignKey("users.name", ondelete="CASCADE"), nullable=False
    )


def upgrade() -> None:
    op.create_table(
        "images",
        sa.Column("image_id", sa.String(32), primary_key=True),
        sa.Column("owner", sa.String(64), nullable=False),
        sa.Column("kind", sa.String(8), nullable=False),
        sa.Column("name", sa.String(128), nullable=False),
        sa.Column("description", sa.String(255), nullable=False),
        sa.Column("digest", sa.String(71), nullable=False),
        sa.Column("size", sa.BigInteger, nullable=False),
        sa.Column("disk_format", sa.String(8), nullable=False),
        sa.Column("kernel_id", sa.String(32)),
        sa.Column("ramdisk_id", sa.String(32)),
        sa.Column("public", sa.Boolean, nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_table(
        "reservations",
        sa.Column("reservation_id", sa.String(32), primary_key=True),
        _owner(),
        sa.Column("client_token", sa.String(64)),
        sa.Column("request_digest", sa.String(64), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.UniqueConstraint("owner", "client_token"),
    )
    op.create_table(
        "instances",
        sa.Column("instance_id", sa.String(32), primary_key=True),
        sa.Column(
            "reservation_id",
            sa.String(32),
            sa.ForeignKey("reservations.reservation_id", ondelete="CASCADE"),
            nullable=False,
        ),
        _owner(),
        sa.Column("launch_index", sa.Integer, nullable=False),
        sa.Column("image_id", sa.String(32), nullable=False),
        sa.Column("kernel_id", sa.String(32)),
        sa.Column("ramdisk_id", sa.String(32)),
        sa.Column("instance_type", sa.String(64), nullable=False),
        sa.Column("zone", sa.String(64), nullable=False),
        sa.Column("key_name", sa.String(255)),
        sa.Column("public_key", sa.Text),
        sa.Column("user_data", sa.Text),
        sa.Column("group_ids", sa.JSON, nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("state_reason", sa.String(512), nullable=False),
        sa.Column("dispatch", sa.String(8), nullable=False),
        sa.Column("node", sa.String(64), nullable=False),
        sa.Column("missing_polls", sa.Integer, nullable=False),
        sa.Column("private_ip", sa.String(45), nullable=False),
        sa.Column("public_ip", sa.String(45), nullable=False),
        sa.Column("launch_time", sa.DateTime(timezone=True), nullable=False),
        sa.Column("lease_ends_at", sa.DateTime(timezone=True)),
        sa.Column("terminated_at", sa.DateTime(timezone=True)),
    )
    op.create_index("instances_by_owner_state", "instances", ["owner", "state"])
    op.create_index("instances_by_zone_state", "instances", ["zone", "state"])


def downgrade() -> None:
    op.drop_table("instances")
    op.drop_table("reservations")
    op.drop_table("images")
