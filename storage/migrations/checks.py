"""Widening a CHECK constraint in place, for migrations.

PostgreSQL drops and adds the constraint. SQLite cannot alter one, and
recreating a table would cascade deletes to every row that refers to it, so
a CHECK that only allows more words is edited in the table's CREATE
statement in `sqlite_schema` with the schema version bumped, in one
transaction: SQLite's documented procedure for changes that do not affect
the on-disk content (https://www.sqlite.org/lang_altertable.html#otheralter).
Narrowing a CHECK this way is only safe once every row passes the narrower
one; downgrades make sure of that first.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op


def replace_check(table: str, column: str, old: str, new: str) -> None:
    bind = op.get_bind()
    name = f"ck_{table}_{column}"
    if bind.dialect.name != "sqlite":
        op.drop_constraint(op.f(name), table, type_="check")
        op.create_check_constraint(op.f(name), table, new)
        return
    # SQLite's procedure, steps 2 and 4 to 7; step 1 (the transaction) is storage.db's.
    constraint = f"CONSTRAINT {name} CHECK ({{}})"
    version = bind.exec_driver_sql("PRAGMA schema_version").scalar_one()
    bind.exec_driver_sql("PRAGMA writable_schema=ON")
    try:
        changed = bind.execute(
            sa.text(
                "UPDATE sqlite_schema SET sql = replace(sql, :old, :new) "
                "WHERE type = 'table' AND name = :table AND instr(sql, :old) > 0"
            ),
            {"old": constraint.format(old), "new": constraint.format(new), "table": table},
        ).rowcount
        if changed != 1:
            # Refuse rather than guess: the table was not made by these migrations.
            raise RuntimeError(f"The {table} table has no CHECK ({old}); its schema was changed by hand.")
        bind.exec_driver_sql(f"PRAGMA schema_version={int(version) + 1}")
    finally:
        bind.exec_driver_sql("PRAGMA writable_schema=OFF")
