"""/healthz and /status report every part, against the real services."""

import pytest
from django.urls import reverse

from apps.accounts.models import User

pytestmark = pytest.mark.django_db(transaction=True)
PARTS = ["database", "pgvector", "redis", "worker", "inference", "models"]


def test_healthz_reports_each_part_and_503_when_inference_is_down(
    client, celery_worker_process, models_ready, settings
):
    settings.INFERENCE_URL = "http://127.0.0.1:9"  # nothing listens there (test_stack checks the green case)
    response = client.get(reverse("healthz"))
    body = response.json()
    assert list(body) == PARTS
    for part in ("database", "pgvector", "redis", "worker", "models"):
        assert body[part] == "ok", (part, body[part])
    assert response.status_code == 503 and "not reachable at http://127.0.0.1:9" in body["inference"]


def test_status_page_renders_every_check(client, celery_worker_process):
    client.force_login(User.objects.create_user(username="viewer", password="x"))
    page = client.get(reverse("status")).content.decode()
    for part in PARTS:
        assert part in page
