"""Launch helpers shared by the training DAGs (wiring only): the Airflow pool of the training
tasks, the process count, and the command line (``torchrun`` for DDP entry points).

Parsing a DAG file must stay light: nothing here imports torch.
"""

from __future__ import annotations


def training_pool() -> tuple[str, int]:
    """``(pool, slots)`` of the training tasks: ``runtime.training_pool`` (default Airflow's
    ``default_pool``) and ``runtime.nproc_per_node`` slots, read when a DAG file is parsed."""
    try:
        from common.config import load_config

        runtime = load_config().get("runtime") or {}
        pool = str(runtime.get("training_pool") or "default_pool")
        return pool, max(1, int(runtime.get("nproc_per_node") or 1))
    except Exception:  # a broken config must not hide the DAG: the tasks report it when they run
        return "default_pool", 1


def nproc_per_node(params: dict) -> int:
    """Training processes: the ``nproc_per_node`` Param when > 0, else ``runtime.nproc_per_node``
    of the run's config/profile."""
    from common.config import load_config

    if int(params.get("nproc_per_node") or 0) > 0:
        return int(params["nproc_per_node"])
    cfg = load_config(params.get("config") or None, params.get("profile") or None)
    return max(1, int((cfg.get("runtime") or {}).get("nproc_per_node") or 1))


def step_nproc(module: str, params: dict, ddp_modules: tuple[str, ...]) -> int:
    """Processes for one step: :func:`nproc_per_node` for the DAG's DDP entry points
    (``ddp_modules``, run under torchrun when > 1), 1 for every other step."""
    return nproc_per_node(params) if module in ddp_modules else 1
