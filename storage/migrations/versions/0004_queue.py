"""The job queue: statuses "queued" and "interrupted", leases, and when a job started;
and the image role "control_source" (a ControlNet's image before its preprocessor).

Revision ID: 0004
Revises: 0003
Create Date: 2025-04-01

Written out in full, like 0001 to 0003.

New columns on `generations`: `started_at` (when a worker took the job;
rows older than this revision were started when they were made, so it is
their `created_at`), and the lease, `lease_owner` (the worker's id) and
`lease_expires_at`. Running rows from before this revision had no worker
that could renew a lease, so theirs ends now: the next reader marks them
interrupted (storage/queue.py).

The status CHECK. PostgreSQL drops and adds it. SQLite cannot alter a
constraint, and recreating `generations` would cascade deletes to every
image, tag and board item (see 0002). Allowing more words only loosens the
CHECK, so every stored row still satisfies it, which is the case SQLite's
own procedure for schema changes that "do not affect the on-disk content"
covers: edit the table's CREATE statement in `sqlite_schema` and bump the
schema version, in one transaction (https://www.sqlite.org/lang_altertable.html#otheralter,
the simpler procedure). storage.db runs every SQLite migration in one
BEGIN IMMEDIATE transaction, so the edit and the new columns land together.

The image role CHECK is widened the same way, for "control_source".

Downgrading turns queued jobs into cancelled ones and interrupted ones into
failed ones (0003 has neither word), saying so in `error`, and forgets the
control-source image rows (their files stay; the gallery's own check for
unreferenced files does not run on a downgrade), before the CHECKs are
tightened again.
"""

from __future__ import annotations

from datetime import datetime, timezone

import sqlalchemy as sa
from alembic import op

from storage.migrations.checks import replace_check as _replace_check

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

OLD_STATUSES = "status IN ('running', 'succeeded', 'failed', 'cancelled')"
NEW_STATUSES = "status IN ('queued', 'running', 'succeeded', 'failed', 'cancelled', 'interrupted')"
OLD_ROLES = "role IN ('output', 'input', 'mask', 'control')"
NEW_ROLES = "role IN ('output', 'input', 'mask', 'control', 'control_source')"

generations = sa.table(
    "generations",
    sa.column("status", sa.String()),
    sa.column("error", sa.Text()),
    sa.column("created_at", sa.DateTime(timezone=True)),
    sa.column("finished_at", sa.DateTime(timezone=True)),
    sa.column("started_at", sa.DateTime(timezone=True)),
    sa.column("lease_expires_at", sa.DateTime(timezone=True)),
)


def upgrade() -> None:
    now = datetime.now(timezone.utc)

    # 1. The columns, each a plain ALTER TABLE ADD COLUMN on SQLite (see 0002).
    op.add_column("generations", sa.Column("started_at", sa.DateTime(timezone=True), nullable=True))
    op.add_column("generations", sa.Column("lease_owner", sa.String(length=255), nullable=True))
    op.add_column("generations", sa.Column("lease_expires_at", sa.DateTime(timezone=True), nullable=True))
    # Fairness asks for each user's latest start (storage/queue.py).
    op.create_index("ix_generations_user_started_at", "generations", ["user", "started_at"])

    # 2. What the rows already there mean in the new columns.
    op.execute(generations.update().values(started_at=generations.c.created_at))
    op.execute(generations.update().where(generations.c.status == "running").values(lease_expires_at=now))

    # 3. The CHECKs, last: on SQLite nothing after them in this revision reads the tables' schema.
    _replace_check("generations", "status", OLD_STATUSES, NEW_STATUSES)
    _replace_check("images", "role", OLD_ROLES, NEW_ROLES)


def downgrade() -> None:
    # 1. Words 0003 does not know.
    op.execute(
        generations.update()
        .where(generations.c.status == "queued")
        .values(status="cancelled", error="Still queued when the database was downgraded below revision 0004.")
    )
    op.execute(
        generations.update()
        .where(generations.c.status == "interrupted")
        .values(
            status="failed",
            error=sa.func.coalesce(generations.c.error, "Interrupted.")
            + " (was interrupted before the database was downgraded below revision 0004)",
        )
    )

    # 2. The columns, with plain ALTER TABLE DROP COLUMN (SQLite 3.35+), not batch mode.
    op.drop_index("ix_generations_user_started_at", table_name="generations")
    for column in ("lease_expires_at", "lease_owner", "started_at"):
        op.drop_column("generations", column)

    # 3. The CHECKs again; every row passes them after step 1.
    op.execute(sa.table("images", sa.column("role", sa.String())).delete().where(sa.column("role") == "control_source"))
    _replace_check("images", "role", NEW_ROLES, OLD_ROLES)
    _replace_check("generations", "status", NEW_STATUSES, OLD_STATUSES)
