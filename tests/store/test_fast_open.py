"""Opening a database whose schema is at head already costs one query and no Alembic import (a
tenth of a second at every start of ``ferryman.OpenAI()`` and every CLI command).

:func:`shipped_head` reads the newest revision off the migration files; Alembic's own answer
(:func:`schema_head`) is the independent check, so a new migration cannot leave the two apart.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from sqlalchemy import text

from ferryman.store.database import make_engine, migrate, schema_head, shipped_head

OPEN_AND_REPORT = """
import sys
from ferryman.store.database import make_engine, migrate
migrate(make_engine(sys.argv[1]))
print("alembic" in sys.modules)
"""


def test_the_shipped_head_is_alembics_head() -> None:
    assert shipped_head() == schema_head()


def test_a_database_at_head_opens_without_alembic(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'ferryman.db'}"

    def open_in_a_new_process() -> str:
        done = subprocess.run([sys.executable, "-c", OPEN_AND_REPORT, url], capture_output=True, text=True, check=True)
        return done.stdout.strip()

    assert open_in_a_new_process() == "True"  # a new database: Alembic makes the schema
    assert open_in_a_new_process() == "False"  # at head: one query, no Alembic
    engine = make_engine(url)
    with engine.connect() as connection:
        assert connection.execute(text("SELECT version_num FROM alembic_version")).scalar_one() == schema_head()
    engine.dispose()


def test_a_database_behind_head_is_still_upgraded(tmp_path: Path) -> None:
    engine = make_engine(f"sqlite:///{tmp_path / 'ferryman.db'}")
    migrate(engine)
    with engine.begin() as connection:
        connection.execute(text("UPDATE alembic_version SET version_num = '0004'"))
        connection.execute(text("DROP TABLE budget_holds"))
        connection.execute(text("DROP TABLE budget_reservations"))
    migrate(engine)
    with engine.connect() as connection:
        assert connection.execute(text("SELECT version_num FROM alembic_version")).scalar_one() == schema_head()
        assert connection.execute(text("SELECT COUNT(*) FROM budget_reservations")).scalar_one() == 0
    engine.dispose()
