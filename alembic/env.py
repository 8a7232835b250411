"""Alembic environment for keyd's schema (keyd.store.models).

Used two ways:
- from keyd (``keyd db upgrade``, keyd.store.migrate): the caller passes its
  own connection in ``config.attributes["connection"]`` and owns the
  transaction and the logging configuration; nothing here touches either.
- from the plain ``alembic -c migrations.ini`` command in a checkout: the
  URL comes from ``-x url=…``, ``$KEYD_DATABASE_URL`` or ``sqlalchemy.url``
  and the engine from keyd.store.engine.make_engine (same pragmas, UTC).

SQLite cannot ALTER most things in place, so operations are rendered and run
in batch mode there (copy-and-move); the metadata's naming convention gives
every constraint a stable name so batch mode and later migrations can find it.
"""

from __future__ import annotations

import os
from logging.config import fileConfig
from typing import Any, Literal

from alembic import context
from alembic.autogenerate.api import AutogenContext
from sqlalchemy.engine import Connection
from sqlalchemy.types import TypeDecorator

from keyd.config import DEFAULT_DB_URL
from keyd.store.engine import make_engine
from keyd.store.models import Base

config = context.config
target_metadata = Base.metadata


def _url() -> str:
    return (
        context.get_x_argument(as_dictionary=True).get("url")
        or os.environ.get("KEYD_DATABASE_URL")
        or config.get_main_option("sqlalchemy.url")
        or DEFAULT_DB_URL
    )


def _render_item(kind: str, obj: Any, _autogen: AutogenContext) -> str | Literal[False]:
    """Render keyd's column types (UTCDateTime) as their plain SQLAlchemy
    implementation, so migrations never import application code that may
    change after them."""
    if kind == "type" and isinstance(obj, TypeDecorator):
        return f"sa.{obj.impl!r}"
    return False


def _configure(connection: Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        render_as_batch=connection.dialect.name == "sqlite",
        compare_type=True,
        render_item=_render_item,
    )


def run_offline() -> None:
    """``alembic upgrade --sql``: print the DDL instead of running it."""
    context.configure(
        url=_url(),
        target_metadata=target_metadata,
        literal_binds=True,
        render_as_batch=_url().startswith("sqlite"),
        dialect_opts={"paramstyle": "named"},
    )
    with context.begin_transaction():
        context.run_migrations()


def run_online() -> None:
    connection = config.attributes.get("connection")
    if connection is not None:
        # keyd's connection, already inside keyd's transaction.
        _configure(connection)
        with context.begin_transaction():
            context.run_migrations()
        return
    engine = make_engine(_url())
    try:
        with engine.begin() as own:
            _configure(own)
            with context.begin_transaction():
                context.run_migrations()
    finally:
        engine.dispose()


if config.config_file_name is not None and not config.attributes.get("keyd"):
    fileConfig(config.config_file_name, disable_existing_loggers=False)

if context.is_offline_mode():
    run_offline()
else:
    run_online()
