"""Alembic's entry: run the migrations against the URL ``mallee.clc.db.migrate`` gives."""

from alembic import context
from sqlalchemy import create_engine

from mallee.clc.db import Base

url = context.config.get_main_option("sqlalchemy.url")
assert url is not None
with create_engine(url).connect() as connection:
    context.configure(connection=connection, target_metadata=Base.metadata)
    with context.begin_transaction():
        context.run_migrations()
