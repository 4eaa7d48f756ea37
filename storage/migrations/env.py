"""Alembic environment: runs on the connection that storage.db.upgrade passes in."""

from alembic import context

from storage.models import Base, include_name

connection = context.config.attributes.get("connection")
if connection is None:
    raise RuntimeError("Run migrations through storage.db.upgrade(engine), which passes the connection in.")

context.configure(
    connection=connection,
    target_metadata=Base.metadata,
    # SQLite cannot ALTER most things in place; batch mode copies the table instead.
    render_as_batch=connection.dialect.name == "sqlite",
    compare_type=True,
    include_name=include_name,
)

with context.begin_transaction():
    context.run_migrations()
