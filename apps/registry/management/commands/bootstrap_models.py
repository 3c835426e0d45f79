import sys
import time

from django.core.management.base import BaseCommand, CommandError

from apps.registry.catalog import ModelSpec
from apps.registry.services import BootstrapError, base_models_bootstrap


class Command(BaseCommand):
    help = "Build (once) and verify (always) the model artifacts under ATELIER_MODELS_DIR."

    def add_arguments(self, parser):
        parser.add_argument("--rebuild", action="store_true", help="Move existing artifacts aside and rebuild them.")

    def handle(self, *args, rebuild: bool = False, **options):
        started = time.monotonic()
        interactive = sys.stdout.isatty()
        last_line: dict[str, str] = {}

        def progress(spec: ModelSpec, message: str, fraction: float) -> None:
            label = f"{spec.name} ({spec.variant})"
            bar = "#" * int(fraction * 20)
            line = f"  {label:<34} [{bar:<20}] {fraction:4.0%}  {message}"
            if last_line.get(label) == line:
                return
            last_line[label] = line
            self.stdout.write(("\r" + line.ljust(110)) if interactive else line, ending="" if interactive else "\n")
            self.stdout.flush()

        self.stdout.write("Models:")
        try:
            results = base_models_bootstrap(rebuild=rebuild, progress=progress)
        except BootstrapError as error:
            if interactive:
                self.stdout.write("")
            raise CommandError(str(error)) from error
        if interactive:
            self.stdout.write("")
        for result in results:
            self.stdout.write(f"  {result.spec.name} ({result.spec.variant}): {result.action} at {result.path}")
        self.stdout.write(self.style.SUCCESS(f"Models ready in {time.monotonic() - started:.1f} s."))
