"""The embedded Postgres runs with shared_buffers sized for the knowledge indexes (config/embedded.py)."""

import os

import pytest
from django.db import connection

from config import embedded


def test_shared_buffers_come_from_the_environment_or_the_memory(monkeypatch):
    monkeypatch.setenv("ATELIER_POSTGRES_SHARED_BUFFERS", "2GB")
    assert embedded.postgres_shared_buffers() == "2GB"
    monkeypatch.delenv("ATELIER_POSTGRES_SHARED_BUFFERS")
    for memory, wanted in ((256 * 2**20, "128MB"), (2 * 2**30, "512MB"), (16 * 2**30, "1024MB")):
        pages = {"SC_PAGE_SIZE": 4096, "SC_PHYS_PAGES": memory // 4096}
        monkeypatch.setattr(embedded.os, "sysconf", pages.__getitem__)
        assert embedded.postgres_shared_buffers() == wanted
    for refused in ("1GB'; DROP TABLE x; --", "512"):  # a bare number would be 8kB pages, not bytes
        with pytest.raises(embedded.EmbeddedServiceError, match="must look like 512MB"):
            embedded._sql_literal(refused)


@pytest.mark.django_db
def test_the_embedded_server_runs_with_them():
    if "DATABASE_URL" in os.environ:
        pytest.skip("an external Postgres is configured by its owner")
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT setting::bigint * 8192, pg_size_bytes(%s) FROM pg_settings WHERE name = 'shared_buffers'",
            [embedded.postgres_shared_buffers()],
        )
        running, wanted = cursor.fetchone()
    assert running == wanted
