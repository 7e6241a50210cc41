"""Alembic environment: the database URL comes from the file JOBS_DATABASE_URL_FILE names
(set by Colorgate), else from JOBS_DATABASE_URL."""

import os

from alembic import context
from sqlalchemy import create_engine

url_file = os.environ.get("JOBS_DATABASE_URL_FILE")
engine = create_engine(open(url_file).read().strip() if url_file else os.environ["JOBS_DATABASE_URL"])
with engine.connect() as connection:
    context.configure(connection=connection, target_metadata=None, transaction_per_migration=True)
    with context.begin_transaction():
        context.run_migrations()
