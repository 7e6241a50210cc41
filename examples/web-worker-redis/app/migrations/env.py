"""Alembic environment: the database URL comes from JOBS_DATABASE_URL (set by Colorgate)."""

import os

from alembic import context
from sqlalchemy import create_engine

engine = create_engine(os.environ["JOBS_DATABASE_URL"])
with engine.connect() as connection:
    context.configure(connection=connection, target_metadata=None, transaction_per_migration=True)
    with context.begin_transaction():
        context.run_migrations()
