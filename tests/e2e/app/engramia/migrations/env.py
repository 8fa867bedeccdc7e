"""Alembic environment of the Engramia test double.

The URL is ENGRAMIA_DATABASE_URL (postgresql+psycopg2://...). Every pending revision of one
`upgrade` runs in one transaction: PostgreSQL's DDL is transactional, so a revision that fails
leaves the schema and `alembic_version` exactly as they were before the command.
"""

import os
import sys
from logging.config import fileConfig

from alembic import context
from sqlalchemy import create_engine, pool

# The real image has psycopg2 only (see engramia.py): another driver in the URL fails here too.
sys.modules["psycopg"] = None

config = context.config
if config.config_file_name is not None:
    fileConfig(config.config_file_name)


def database_url():
    url = os.environ.get("ENGRAMIA_DATABASE_URL", "").strip()
    if not url:
        raise SystemExit("ENGRAMIA_DATABASE_URL is not set: nothing to migrate")
    return url


if context.is_offline_mode():
    context.configure(url=database_url(), literal_binds=True)
    with context.begin_transaction():
        context.run_migrations()
else:
    engine = create_engine(database_url(), poolclass=pool.NullPool)
    with engine.connect() as connection:
        context.configure(connection=connection, transactional_ddl=True)
        with context.begin_transaction():
            context.run_migrations()
