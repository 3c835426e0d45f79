"""The line protocol of the benchmark's worker processes: one JSON job per line on stdin, one JSON answer
per line on stdout ({"ok": true, ...} or {"ok": false, "error": ...}) until {"op": "quit"}.

Standard library only: bench/llama_worker.py runs it under the llama-cpp-python venv's interpreter.
"""

import json
import os
import sys
import traceback
from collections.abc import Callable


def serve(handle: Callable[[dict], dict]) -> None:
    # Answers go to a private copy of stdout; anything a native library prints goes to stderr.
    answers = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)
    for line in sys.stdin:
        job = json.loads(line)
        if job["op"] == "quit":
            break
        try:
            answer = {"ok": True, **handle(job)}
        except Exception as error:
            answer = {"ok": False, "error": f"{type(error).__name__}: {error}", "trace": traceback.format_exc()}
        answers.write(json.dumps(answer) + "\n")
        answers.flush()
