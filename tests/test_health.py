"""/healthz and /status report every part, against the real services."""

import pytest
from django.urls import reverse

from apps.accounts.models import User

pytestmark = pytest.mark.django_db(transaction=True)
PARTS = ["database", "pgvector", "redis", "worker", "inference", "models"]


def test_healthz_reports_each_part_green_with_a_worker_and_models(client, celery_worker_process, models_ready):
    response = client.get(reverse("healthz"))
    body = response.json()
    assert list(body) == PARTS
    for part in ("database", "pgvector", "redis", "worker", "models"):
        assert body[part] == "ok", (part, body[part])
    # The inference server arrives with the engine; until it answers, the endpoint says so and is not 200.
    if body["inference"] != "ok":
        assert response.status_code == 503 and "127.0.0.1:8001" in body["inference"]


def test_status_page_renders_every_check(client, celery_worker_process):
    client.force_login(User.objects.create_user(username="viewer", password="x"))
    page = client.get(reverse("status")).content.decode()
    for part in PARTS:
        assert part in page
