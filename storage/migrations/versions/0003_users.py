"""Accounts: a name, an argon2 password hash and an admin flag.

Revision ID: 0003
Revises: 0002
Create Date: 2025-03-01

Written out in full, like 0001 and 0002. A new table only, so the same
CREATE TABLE serves SQLite and PostgreSQL; `generations.user` stays a plain
name (no foreign key), because generations made before accounts existed name
people who have none.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "users",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("name", sa.String(length=64), nullable=False),
        sa.Column("password_hash", sa.String(length=255), nullable=False),
        sa.Column("is_admin", sa.Boolean(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_users")),
        sa.UniqueConstraint("name", name=op.f("uq_users_name")),
    )


def downgrade() -> None:
    op.drop_table("users")
