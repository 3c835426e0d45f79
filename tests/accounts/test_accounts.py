"""Sign up, log in and out, change and reset a password: the flows a new user walks through first."""

import re

import pytest
from django.core import mail
from django.urls import reverse

from apps.accounts.models import Role, User
from apps.accounts.services import admin_ensure

pytestmark = pytest.mark.django_db
PASSWORD = "a-long-unusual-passphrase-42"


def test_signup_creates_a_member_and_logs_in(client):
    response = client.post(
        reverse("signup"),
        {
            "username": "ada",
            "email": "ada@example.com",
            "password1": PASSWORD,
            "password2": PASSWORD,
        },
    )
    assert response.status_code == 302 and response.url == reverse("dashboard")
    user = User.objects.get(username="ada")
    assert user.role == Role.MEMBER and not user.is_staff
    assert client.get(reverse("dashboard")).status_code == 200


def test_signup_rejects_mismatched_passwords_and_creates_nothing(client):
    response = client.post(
        reverse("signup"),
        {
            "username": "bob",
            "email": "bob@example.com",
            "password1": PASSWORD,
            "password2": PASSWORD + "x",
        },
    )
    assert response.status_code == 200
    assert b"didn" in response.content  # "The two password fields didn’t match."
    assert not User.objects.filter(username="bob").exists()


def test_login_and_logout(client):
    User.objects.create_user(username="cy", password=PASSWORD)
    response = client.post(reverse("login"), {"username": "cy", "password": PASSWORD})
    assert response.status_code == 302
    assert client.get(reverse("dashboard")).status_code == 200
    assert client.post(reverse("logout")).status_code == 302
    assert client.get(reverse("dashboard")).status_code == 302  # back to the login page


def test_wrong_password_is_refused(client):
    User.objects.create_user(username="cy", password=PASSWORD)
    response = client.post(reverse("login"), {"username": "cy", "password": "nope"})
    assert response.status_code == 200 and "_auth_user_id" not in client.session


def test_password_change(client):
    user = User.objects.create_user(username="di", password=PASSWORD)
    client.force_login(user)
    response = client.post(
        reverse("password_change"),
        {
            "old_password": PASSWORD,
            "new_password1": PASSWORD + "-new",
            "new_password2": PASSWORD + "-new",
        },
    )
    assert response.status_code == 302
    user.refresh_from_db()
    assert user.check_password(PASSWORD + "-new")


def test_password_reset_by_email(client):
    user = User.objects.create_user(username="ed", email="ed@example.com", password=PASSWORD)
    client.post(reverse("password_reset"), {"email": "ed@example.com"})
    assert len(mail.outbox) == 1
    link = re.search(r"https?://[^/\s]+(/accounts/reset/\S+/)", mail.outbox[0].body).group(1)
    form_page = client.get(link, follow=True)
    assert form_page.status_code == 200
    set_url = form_page.redirect_chain[-1][0]
    new = "brand-new-passphrase-7"
    response = client.post(set_url, {"new_password1": new, "new_password2": new})
    assert response.status_code == 302
    user.refresh_from_db()
    assert user.check_password(new)


def test_admin_ensure_generates_once_and_env_password_wins():
    user, generated = admin_ensure(username="admin", password=None)
    assert generated and user.check_password(generated) and user.is_superuser and user.role == Role.ADMIN
    again, generated_again = admin_ensure(username="admin", password=None)
    assert again.pk == user.pk and generated_again is None  # shown only once
    admin_ensure(username="admin", password="from-the-environment-9")
    user.refresh_from_db()
    assert user.check_password("from-the-environment-9")


def test_the_admin_role_and_the_staff_flag_cannot_diverge():
    user = User.objects.create_user(username="fay", password=PASSWORD)
    user.role = Role.ADMIN
    user.save()
    assert User.objects.get(pk=user.pk).is_staff
    from django.db import IntegrityError, transaction

    with pytest.raises(IntegrityError), transaction.atomic():
        User.objects.filter(pk=user.pk).update(is_staff=False)  # bypasses save(): the constraint holds


def test_forms_refuse_a_post_without_a_csrf_token():
    from django.test import Client

    browser = Client(enforce_csrf_checks=True)
    signup = {"username": "eve", "email": "eve@example.com", "password1": PASSWORD, "password2": PASSWORD}
    assert browser.post(reverse("signup"), signup).status_code == 403
    assert browser.post(reverse("login"), {"username": "eve", "password": PASSWORD}).status_code == 403
    assert not User.objects.filter(username="eve").exists()
