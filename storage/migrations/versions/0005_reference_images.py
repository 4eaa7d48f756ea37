"""The image role "reference": an IP-Adapter's style or composition reference.

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-27

Only the role CHECK on `images` widens (storage/migrations/checks.py says
how, on SQLite and PostgreSQL). Downgrading forgets the reference image rows
(their files stay; the gallery's check for unreferenced files does not run on
a downgrade) before the CHECK narrows again.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from storage.migrations.checks import replace_check

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

OLD_ROLES = "role IN ('output', 'input', 'mask', 'control', 'control_source')"
NEW_ROLES = "role IN ('output', 'input', 'mask', 'control', 'control_source', 'reference')"


def upgrade() -> None:
    replace_check("images", "role", OLD_ROLES, NEW_ROLES)


def downgrade() -> None:
    images = sa.table("images", sa.column("role", sa.String()))
    op.execute(images.delete().where(images.c.role == "reference"))
    replace_check("images", "role", NEW_ROLES, OLD_ROLES)
