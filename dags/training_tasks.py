"""Launch helpers shared by the training DAGs (wiring only): the Airflow pool of the training
tasks, the process count (``torchrun`` for DDP entry points), and the base LM a run trains from.

Parsing a DAG file must stay light: nothing here imports torch.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

from common.config import load_config
from dags import runner


def training_pool() -> tuple[str, int]:
    """``(pool, slots)`` of the training tasks: ``runtime.training_pool`` (default Airflow's
    ``default_pool``) and ``runtime.nproc_per_node`` slots, read when a DAG file is parsed."""
    try:
        runtime = load_config().get("runtime") or {}
        pool = str(runtime.get("training_pool") or "default_pool")
        return pool, max(1, int(runtime.get("nproc_per_node") or 1))
    except Exception:  # a broken config must not hide the DAG: the tasks report it when they run
        return "default_pool", 1


def nproc_per_node(params: Mapping) -> int:
    """Training processes: the ``nproc_per_node`` Param when > 0, else ``runtime.nproc_per_node``
    of the run's config/profile."""
    if int(params.get("nproc_per_node") or 0) > 0:
        return int(params["nproc_per_node"])
    cfg, _root = runner.settings(params)
    return max(1, int((cfg.get("runtime") or {}).get("nproc_per_node") or 1))


def step_nproc(module: str, params: dict, ddp_modules: tuple[str, ...]) -> int:
    """Processes for one step: :func:`nproc_per_node` for the DAG's DDP entry points
    (``ddp_modules``, run under torchrun when > 1), 1 for every other step."""
    return nproc_per_node(params) if module in ddp_modules else 1


def base_model(day: str, params: Mapping, section: str, run: Callable[[str, list[str], Mapping], dict]) -> str:
    """Path of the base LM a training run starts from: the ``base_model`` Param, else
    ``<section>.base_model`` of the config (any local HF checkpoint), else the newest published
    base LM at or before ``day``; pre-trains one (``run("base_lm.pretrain", ...)``) when there is none."""
    from base_lm.release import ensure_base_model  # lazy: the DAG parse path must not import torch

    cfg, root = runner.settings(params)
    configured = params.get("base_model") or (cfg.get(section) or {}).get("base_model")
    if configured:
        return str(configured)
    args = ["--ds", day, *runner.common_args(params)]
    if params.get("base_max_steps"):
        args += ["--max-steps", str(params["base_max_steps"])]
    return str(ensure_base_model(root, day, lambda: run("base_lm.pretrain", args, params)))
