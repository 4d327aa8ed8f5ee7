"""PostgreSQL for integration tests: the production registry is `mlflow server` on PostgreSQL.

`.ci/run` starts a throwaway PostgreSQL cluster and exports PLASTER_TEST_POSTGRES
(postgresql://user:pass@127.0.0.1:PORT/db, a role that may CREATE DATABASE); without it the
tests that use these fixtures skip with the reason. Each test module gets a database of its
own, dropped afterwards, and an `mlflow server` on 127.0.0.1 backed by it.

    from postgres import mlflow_on_postgres, postgres_db  # noqa: F401  (fixtures)
"""

from __future__ import annotations

import contextlib
import os
import urllib.parse
import uuid

import pytest
from servers import mlflow_server_at

ENV = "PLASTER_TEST_POSTGRES"
SKIP_REASON = (f"PostgreSQL not configured: run .ci/run, or set {ENV}=postgresql://user:pass@127.0.0.1:5432/db "
               "(a role that may CREATE DATABASE)")


def postgres_url() -> str:
    """The server from PLASTER_TEST_POSTGRES as a libpq URL (postgresql://...), or skip the test."""
    url = os.environ.get(ENV, "").strip()
    if not url:
        pytest.skip(SKIP_REASON)
    parts = urllib.parse.urlsplit(url)
    if parts.scheme.split("+")[0] not in ("postgresql", "postgres"):
        pytest.fail(f"{ENV} must be a postgresql:// URL, got {url!r}")
    return urllib.parse.urlunsplit(parts._replace(scheme="postgresql"))


def sqlalchemy_url(url: str) -> str:
    """`url` for MLflow's --backend-store-uri, naming the driver: SQLAlchemy 2.1 maps a bare
    postgresql:// to psycopg 3, which is not installed; psycopg2-binary is what plaster declares."""
    return urllib.parse.urlunsplit(urllib.parse.urlsplit(url)._replace(scheme="postgresql+psycopg2"))


def with_database(url: str, dbname: str) -> str:
    """`url` naming another database on the same server."""
    parts = urllib.parse.urlsplit(url)
    return urllib.parse.urlunsplit(parts._replace(path="/" + dbname))


def connect(url: str):
    import psycopg2

    con = psycopg2.connect(url, connect_timeout=10)
    con.autocommit = True
    return con


@contextlib.contextmanager
def fresh_database(url: str, prefix: str = "plaster_test"):
    """A new, empty database on the server of `url`; yields its URL and drops it afterwards."""
    from psycopg2 import sql

    name = f"{prefix}_{uuid.uuid4().hex[:12]}"
    try:
        con = connect(url)
    except Exception as e:  # a set but wrong PLASTER_TEST_POSTGRES is an error, not a skip
        pytest.fail(f"cannot connect to {ENV}={url}: {e}".strip())
    try:
        with con.cursor() as cur:
            cur.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        try:
            yield with_database(url, name)
        finally:
            with con.cursor() as cur:  # FORCE: ends sessions a killed server may have left
                cur.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))
    finally:
        con.close()


@pytest.fixture(scope="module")
def postgres_db():
    """The URL of a fresh PostgreSQL database for this test module (skips without PLASTER_TEST_POSTGRES)."""
    with fresh_database(postgres_url()) as url:
        yield url


@pytest.fixture(scope="module")
def mlflow_on_postgres(postgres_db, tmp_path_factory):
    """An `mlflow server` on 127.0.0.1 backed by this module's PostgreSQL database (the first
    start on it runs every migration), artifacts under a temp folder: its URL."""
    with mlflow_server_at(tmp_path_factory.mktemp("mlflow-postgres"), sqlalchemy_url(postgres_db)) as url:
        yield url
