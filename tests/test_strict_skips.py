"""`make test` fails loudly when a test is skipped: a skipped real-service test would hide a missing service."""

import os
import subprocess
import sys

from tests.conftest import REPO_ROOT


def test_a_skipped_test_fails_the_run(tmp_path):
    (tmp_path / "conftest.py").write_text("from tests.conftest import pytest_sessionfinish  # noqa: F401\n")
    (tmp_path / "test_needs_a_service.py").write_text(
        "import pytest\n\ndef test_ok():\n    pass\n\ndef test_service():\n    pytest.skip('no service')\n"
    )
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "no:django", "-p", "no:cacheprovider", str(tmp_path)],
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(REPO_ROOT)},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 1, result.stdout
    assert "1 test(s) were skipped" in result.stdout
