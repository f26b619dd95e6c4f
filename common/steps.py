"""The step protocol every heavy entry point follows, and the launcher that enforces it.

A pipeline step is ``python -m <module> <args>`` (or a PySpark job under ``spark-submit``). The
DAGs start every step through this launcher, ``python -m common.steps <module> <args>``
(``spark-submit common/steps.py jobs.<job> <args>``, ``torchrun -m common.steps ...``), which
calls ``<module>.main(args)`` and turns its outcome into one exit status:

====  ==========================================================  =========
exit  meaning                                                     retried
====  ==========================================================  =========
0     success; the result is in ``$PIPELINE_RESULT_FILE``          -
2     bad input data, bad arguments or bad configuration          no
3     a validation gate refused the output (nothing published)    no
4     a model, index or input partition is missing or corrupt     no
1     anything else (a crash, a lost worker, out of memory, ...)  yes
====  ==========================================================  =========

An entry point reports its result with :func:`emit_result`: one JSON line on stdout for a
human, and the same object written atomically to the file named by ``PIPELINE_RESULT_FILE``
for the runner (``dags/runner.py``), which never scrapes stdout.

This module imports nothing heavy: failures are classified by the exception's class name along
its MRO (:data:`EXIT_BY_EXCEPTION`), so the launcher does not import Spark, torch or the export
code to know their exception types.
"""

from __future__ import annotations

import importlib
import json
import logging
import os
import sys
import traceback
import uuid
from pathlib import Path

logger = logging.getLogger(__name__)

RESULT_FILE_ENV = "PIPELINE_RESULT_FILE"

EXIT_OK = 0
EXIT_RETRY = 1
EXIT_BAD_INPUT = 2
EXIT_GATE = 3
EXIT_MISSING = 4

#: Exit statuses that a retry cannot fix, with what they mean (the runner fails such tasks at once).
NO_RETRY_EXITS = {
    EXIT_BAD_INPUT: "bad input data, arguments or configuration",
    EXIT_GATE: "a validation gate refused the output",
    EXIT_MISSING: "a model, index or input is missing or corrupt",
}

#: ``module.QualName`` of an exception class (or one of its bases) -> exit status.
EXIT_BY_EXCEPTION = {
    "common.config.ConfigError": EXIT_BAD_INPUT,
    "jobs.spark.InputContractError": EXIT_BAD_INPUT,
    "common.registry.GateRejected": EXIT_GATE,
    "export.gates.GateFailed": EXIT_GATE,
    "common.registry.RegistryError": EXIT_MISSING,
    "export.data.ExportInputError": EXIT_MISSING,
    "builtins.FileNotFoundError": EXIT_MISSING,
}


def write_json_atomic(path: str | Path, payload: object, default=str) -> Path:
    """Write ``payload`` as JSON to ``path`` through a hidden temporary sibling and a rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".{path.name}.{uuid.uuid4().hex[:8]}"
    tmp.write_text(json.dumps(payload, indent=2, sort_keys=True, default=default))
    os.replace(tmp, path)
    return path


def emit_result(result: dict, default=str) -> dict:
    """Report a step's result: one JSON line on stdout, and ``$PIPELINE_RESULT_FILE`` when set
    (``default`` serialises what JSON cannot, as in :func:`json.dumps`)."""
    print(json.dumps(result, sort_keys=True, default=default), flush=True)
    write_result(result, default)
    return result


def write_result(result: dict, default=str) -> None:
    """Write ``result`` to ``$PIPELINE_RESULT_FILE`` when the runner set it (no stdout line)."""
    target = os.environ.get(RESULT_FILE_ENV)
    if target:
        write_json_atomic(target, result, default)


def exit_status(exc: BaseException) -> int:
    """The exit status of a step that raised ``exc`` (:data:`EXIT_BY_EXCEPTION`, else retry).

    >>> exit_status(FileNotFoundError("x"))
    4
    >>> exit_status(RuntimeError("x"))
    1
    """
    for cls in type(exc).__mro__:
        status = EXIT_BY_EXCEPTION.get(f"{cls.__module__}.{cls.__qualname__}")
        if status is not None:
            return status
    return EXIT_RETRY


def run(module: str, argv: list[str]) -> int:
    """Call ``module.main(argv)``; map its return value or exception to an exit status."""
    try:
        entry = importlib.import_module(module)
        code = entry.main(argv)
    except SystemExit as exc:  # argparse: 2 for bad arguments
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else EXIT_BAD_INPUT)
    except BaseException as exc:  # noqa: BLE001 - every failure becomes an exit status
        code = exit_status(exc)
        traceback.print_exc()
        reason = NO_RETRY_EXITS.get(code, "retryable failure")
        print(f"STEP FAILED ({reason}, exit {code}): {type(exc).__name__}: {exc}", file=sys.stderr, flush=True)
    return int(code or 0)


def main(argv: list[str] | None = None) -> int:
    """``python -m common.steps <module> [args...]``."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0].startswith("-"):
        print("usage: python -m common.steps <module> [args...]", file=sys.stderr)
        return EXIT_BAD_INPUT
    return run(argv[0], argv[1:])


if __name__ == "__main__":
    # Under spark-submit the launcher runs as a file: the repository, not common/, is the import root.
    here = str(Path(__file__).resolve().parent)
    sys.path[:] = [p for p in sys.path if p and str(Path(p).resolve()) != here]
    sys.path.insert(0, str(Path(here).parent))
    sys.exit(main())
