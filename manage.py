#!/usr/bin/env python
"""Django's command-line utility. With no DATABASE_URL/REDIS_URL, it runs the embedded services the
command needs for as long as the command runs (see config/embedded.py)."""

import os
import sys


def main() -> None:
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings.local")
    from django.core.management import execute_from_command_line

    from config import embedded

    try:
        with embedded.running_services():
            execute_from_command_line(sys.argv)
    except embedded.EmbeddedServiceError as error:
        sys.exit(f"error: {error}")


if __name__ == "__main__":
    main()
