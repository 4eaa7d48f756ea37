"""Review state (stars, approve/reject, notes, tags, boards) and full-text search of prompts.

Revision ID: 0002
Revises: 0001
Create Date: 2025-02-01

Written out in full, like 0001, so it never changes when the models do.

SQLite: every change to `generations` is an in-place ALTER TABLE ADD COLUMN,
never batch mode's copy-and-rename. With foreign keys on (storage.db turns
them on for every connection), SQLite's DROP TABLE first deletes every row,
and ON DELETE CASCADE would take every image, tag and board item with them.
A later migration that must recreate `generations` has to turn foreign keys
off first, and recreate the search triggers below afterwards.

Search: on SQLite an FTS5 table over prompt and negative prompt that reads its
text from `generations` (external content, https://sqlite.org/fts5.html#external_content_tables),
kept in step by triggers; on PostgreSQL a GIN index over a tsvector
expression. Both use no stemming and no stop words ('simple' on PostgreSQL),
so the same words find the same generations on either backend.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

REVIEW_CHECK = "review IN ('none', 'approved', 'rejected')"

# storage/gallery.py repeats this expression in its queries: PostgreSQL uses
# an expression index only for the same expression.
PG_SEARCH_VECTOR = (
    "(setweight(to_tsvector('simple'::regconfig, prompt), 'A') || "
    "setweight(to_tsvector('simple'::regconfig, negative_prompt), 'B'))"
)

SQLITE_SEARCH = [
    """
    CREATE VIRTUAL TABLE generations_fts USING fts5(
        prompt, negative_prompt,
        content='generations', content_rowid='id',
        tokenize='unicode61 remove_diacritics 2'
    )
    """,
    """
    CREATE TRIGGER generations_fts_insert AFTER INSERT ON generations BEGIN
        INSERT INTO generations_fts (rowid, prompt, negative_prompt)
        VALUES (new.id, new.prompt, new.negative_prompt);
    END
    """,
    """
    CREATE TRIGGER generations_fts_delete AFTER DELETE ON generations BEGIN
        INSERT INTO generations_fts (generations_fts, rowid, prompt, negative_prompt)
        VALUES ('delete', old.id, old.prompt, old.negative_prompt);
    END
    """,
    # Only when the text changes: starring or reviewing must not rewrite the index.
    """
    CREATE TRIGGER generations_fts_update AFTER UPDATE OF prompt, negative_prompt ON generations BEGIN
        INSERT INTO generations_fts (generations_fts, rowid, prompt, negative_prompt)
        VALUES ('delete', old.id, old.prompt, old.negative_prompt);
        INSERT INTO generations_fts (rowid, prompt, negative_prompt)
        VALUES (new.id, new.prompt, new.negative_prompt);
    END
    """,
    # Index the generations that are already there.
    "INSERT INTO generations_fts (generations_fts) VALUES ('rebuild')",
]


def upgrade() -> None:
    sqlite = op.get_bind().dialect.name == "sqlite"

    # 1. Review columns on generations.
    with op.batch_alter_table("generations") as batch:
        # A plain '0' default, not sa.false(): an SQL expression default would
        # make batch mode recreate the table on SQLite (see the docstring).
        batch.add_column(sa.Column("starred", sa.Boolean(), server_default="0", nullable=False))
        if not sqlite:
            batch.add_column(sa.Column("review", sa.String(length=16), server_default="none", nullable=False))
        batch.add_column(sa.Column("review_note", sa.Text(), nullable=True))
        batch.add_column(sa.Column("reviewed_by", sa.String(length=255), nullable=True))
        batch.add_column(sa.Column("reviewed_at", sa.DateTime(timezone=True), nullable=True))
    if sqlite:
        # SQLite cannot add a CHECK to an existing table, but it can add a
        # column that carries one, and tests it against the existing rows.
        op.execute(
            "ALTER TABLE generations ADD COLUMN review VARCHAR(16) DEFAULT 'none' NOT NULL "
            f"CONSTRAINT ck_generations_review CHECK ({REVIEW_CHECK})"
        )
    else:
        op.create_check_constraint(op.f("ck_generations_review"), "generations", REVIEW_CHECK)
    with op.batch_alter_table("generations") as batch:
        batch.create_index(op.f("ix_generations_starred"), ["starred"])
        batch.create_index(op.f("ix_generations_review"), ["review"])

    # 2. Tags, boards and what is on them.
    op.create_table(
        "tags",
        sa.Column("generation_id", sa.Integer(), nullable=False),
        sa.Column("tag", sa.String(length=64), nullable=False),
        sa.PrimaryKeyConstraint("generation_id", "tag", name=op.f("pk_tags")),
        sa.ForeignKeyConstraint(
            ["generation_id"],
            ["generations.id"],
            name=op.f("fk_tags_generation_id_generations"),
            ondelete="CASCADE",
        ),
    )
    op.create_index(op.f("ix_tags_tag"), "tags", ["tag", "generation_id"])

    op.create_table(
        "boards",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("name", sa.String(length=100), nullable=False),
        sa.Column("created_by", sa.String(length=255), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_boards")),
        sa.UniqueConstraint("name", name=op.f("uq_boards_name")),
    )
    op.create_table(
        "board_items",
        sa.Column("board_id", sa.Integer(), nullable=False),
        sa.Column("generation_id", sa.Integer(), nullable=False),
        sa.Column("added_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("board_id", "generation_id", name=op.f("pk_board_items")),
        sa.ForeignKeyConstraint(
            ["board_id"], ["boards.id"], name=op.f("fk_board_items_board_id_boards"), ondelete="CASCADE"
        ),
        sa.ForeignKeyConstraint(
            ["generation_id"],
            ["generations.id"],
            name=op.f("fk_board_items_generation_id_generations"),
            ondelete="CASCADE",
        ),
    )
    op.create_index(op.f("ix_board_items_generation_id"), "board_items", ["generation_id"])

    # 3. Full-text search over prompt and negative prompt.
    if sqlite:
        for statement in SQLITE_SEARCH:
            op.execute(statement)
    else:
        op.execute(f"CREATE INDEX ix_generations_search ON generations USING gin ({PG_SEARCH_VECTOR})")


def downgrade() -> None:
    sqlite = op.get_bind().dialect.name == "sqlite"
    if sqlite:
        for trigger in ("insert", "delete", "update"):
            op.execute(f"DROP TRIGGER generations_fts_{trigger}")
        op.execute("DROP TABLE generations_fts")
    else:
        op.execute("DROP INDEX ix_generations_search")
    op.drop_table("board_items")
    op.drop_table("boards")
    op.drop_table("tags")
    op.drop_index(op.f("ix_generations_review"), table_name="generations")
    op.drop_index(op.f("ix_generations_starred"), table_name="generations")
    if not sqlite:
        op.drop_constraint(op.f("ck_generations_review"), "generations", type_="check")
    # Plain ALTER TABLE DROP COLUMN (SQLite 3.35+), not batch mode, for the
    # reason in the docstring; the review column's CHECK goes with it.
    for column in ("reviewed_at", "reviewed_by", "review_note", "review", "starred"):
        op.drop_column("generations", column)
