"""Where Ferryman keeps state: SQLAlchemy (SQLite in WAL mode by default, PostgreSQL by URL),
with the schema under Alembic, and Redis when several processes share limits and budgets."""

from ferryman.store.database import Store, open_store

__all__ = ["Store", "open_store"]
