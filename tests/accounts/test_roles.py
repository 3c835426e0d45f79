"""Each area checks the role server-side; hiding a link is not access control."""

import pytest
from django.urls import reverse

from apps.accounts.models import Role, User

pytestmark = pytest.mark.django_db


def _client_as(client, role: Role | None):
    if role is not None:
        client.force_login(User.objects.create_user(username=f"u-{role}", password="x", role=role))
    return client


@pytest.mark.parametrize(
    ("role", "labeling", "admin", "assistants"),
    [
        (Role.MEMBER, 403, 302, 200),
        (Role.LABELER, 200, 302, 200),
        (Role.ADMIN, 200, 200, 200),
    ],
)
def test_area_access_by_role(client, role, labeling, admin, assistants):
    client = _client_as(client, role)
    assert client.get(reverse("labeling:home")).status_code == labeling
    assert client.get(reverse("knowledge:collections")).status_code == assistants
    assert client.get(reverse("assistants:list")).status_code == assistants
    response = client.get(reverse("admin:index"))
    assert response.status_code == admin
    if admin == 302:
        assert reverse("admin:login") in response.url


def test_anonymous_visitors_are_sent_to_log_in(client):
    for url in (reverse("dashboard"), reverse("status"), reverse("labeling:home")):
        response = client.get(url)
        assert response.status_code == 302 and response.url.startswith(reverse("login")), url


def test_navigation_shows_only_what_the_role_opens(client):
    client = _client_as(client, Role.MEMBER)
    page = client.get(reverse("dashboard")).content.decode()
    assert reverse("labeling:home") not in page
    assert reverse("admin:index") not in page


def test_a_member_cannot_promote_themselves_through_the_admin(client):
    member = User.objects.create_user(username="mallory", password="x")
    client.force_login(member)
    response = client.post(reverse("admin:accounts_user_change", args=[member.pk]), {"role": "admin"})
    assert response.status_code == 302 and reverse("admin:login") in response.url
    member.refresh_from_db()
    assert member.role == Role.MEMBER and not member.is_staff
