"""Alembic environment: migrations run in-process on the connection Ferryman hands over."""

from alembic import context

from ferryman.store.tables import metadata

connection = context.config.attributes.get("connection")
if connection is None:  # `alembic` run by hand: use the URL from alembic's own config
    from sqlalchemy import create_engine

    connection = create_engine(context.config.get_main_option("sqlalchemy.url") or "sqlite://").connect()

context.configure(connection=connection, target_metadata=metadata, render_as_batch=True)
with context.begin_transaction():
    context.run_migrations()
