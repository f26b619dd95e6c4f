"""Logging for entry points (libraries only call ``logging.getLogger(__name__)``)."""

from __future__ import annotations

import logging
import os

FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
NOISY = ("py4j", "pyspark", "urllib3", "filelock", "fsspec")


def setup_logging(level: str | int | None = None) -> None:
    level = level or os.environ.get("PIPELINE_LOG_LEVEL", "INFO")
    logging.basicConfig(level=level, format=FORMAT, force=True)
    for name in NOISY:
        logging.getLogger(name).setLevel(logging.WARNING)
