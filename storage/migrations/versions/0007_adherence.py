"""Prompt adherence: each generation's score and how it was made (issue 15).

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-02

Two nullable columns on `generations`, added in place (ALTER TABLE ADD
COLUMN, as 0002 explains, never batch mode's copy on SQLite): `adherence`, the
score in [0, 1] the gallery sorts and filters by (indexed), and
`adherence_detail`, what the scorer matched or why it gave no score. Older
generations keep NULL in both: they were never scored, and no number is made
up for them. Downgrading drops both.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("generations", sa.Column("adherence", sa.Float(), nullable=True))
    op.add_column("generations", sa.Column("adherence_detail", sa.JSON(), nullable=True))
    op.create_index(op.f("ix_generations_adherence"), "generations", ["adherence"])


def downgrade() -> None:
    op.drop_index(op.f("ix_generations_adherence"), table_name="generations")
    op.drop_column("generations", "adherence_detail")
    op.drop_column("generations", "adherence")
