import os

from django.core.management.base import BaseCommand

from apps.accounts.services import admin_ensure


class Command(BaseCommand):
    help = "Create the admin account if missing. Password: ATELIER_ADMIN_PASSWORD, or generated and printed once."

    def handle(self, *args, **options):
        username = os.environ.get("ATELIER_ADMIN_USERNAME", "admin")
        user, generated = admin_ensure(username=username, password=os.environ.get("ATELIER_ADMIN_PASSWORD") or None)
        if generated:
            banner = "=" * 64
            self.stdout.write(
                self.style.WARNING(
                    f"{banner}\n  Admin account created.\n  username: {user.username}\n  password: {generated}\n"
                    f"  This password is shown only once. Set ATELIER_ADMIN_PASSWORD to choose your own.\n{banner}"
                )
            )
        else:
            self.stdout.write(f"Admin account: {user.username}")
