from django.core.management.base import BaseCommand, CommandError

from apps.accounts.selectors import user_get_by_username
from apps.accounts.services import AccountError, api_key_create


class Command(BaseCommand):
    help = "Create an API key for USERNAME and print it: the key alone on stdout, shown only this once."

    def add_arguments(self, parser):
        parser.add_argument("username")
        parser.add_argument("--name", default="Command line", help="what the key is for (default: %(default)s)")

    def handle(self, *args, username: str, name: str, **options):
        user = user_get_by_username(username=username)
        if user is None:
            raise CommandError(f"No user is named {username!r}.")
        if not user.is_active:
            raise CommandError(f"{username!r} is deactivated: a key for them would be refused.")
        try:
            api_key, raw_key = api_key_create(user=user, name=name)
        except AccountError as error:
            raise CommandError(str(error)) from error
        # The note goes to stderr so that `KEY=$(python manage.py issue_api_key ada)` captures the key alone.
        note = f"Created the key “{api_key.name}” for {user.username}. It is shown only this once:"
        self.stderr.write(note, style_func=self.style.SUCCESS)
        self.stdout.write(raw_key)
