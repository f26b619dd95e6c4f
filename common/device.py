"""Where torch work runs: the config's ``runtime.device`` (``auto`` | ``cpu`` | ``cuda``).

One setting per process. Entry points call :func:`configure` with their loaded config; library
code asks :func:`resolve` for the device (``cuda:<LOCAL_RANK>`` under torchrun) and
:func:`use_bf16` whether to autocast. ``auto`` picks CUDA when a device is visible. Asking for
``cuda`` on a machine without one is an error, never a silent fall back to the CPU.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Mapping

import torch

SETTINGS = ("auto", "cpu", "cuda")
_setting: str | None = None


def configure(cfg: Mapping | str | None) -> str:
    """Fix this process's device setting from a config dict (``runtime.device``) or a string."""
    global _setting
    value = cfg if isinstance(cfg, str) or cfg is None else ((cfg.get("runtime") or {}).get("device"))
    value = str(value or "auto").strip().lower()
    if value not in SETTINGS:
        raise ValueError(f"runtime.device must be one of {SETTINGS}, got {value!r}")
    _setting = value
    return value


def setting() -> str:
    """The configured setting; before :func:`configure`, ``PIPELINE__RUNTIME__DEVICE`` or auto."""
    if _setting is not None:
        return _setting
    return configure(os.environ.get("PIPELINE__RUNTIME__DEVICE") or "auto")


def resolve():
    """The ``torch.device`` of this process (``cuda:<LOCAL_RANK>`` on GPU)."""
    value = setting()
    cuda = torch.cuda.is_available()
    if value == "cuda" and not cuda:
        raise RuntimeError("runtime.device is 'cuda' but torch sees no CUDA device "
                           f"(torch {torch.__version__}, CUDA build {torch.version.cuda}); use cpu or auto")
    if value == "cpu" or not cuda:
        return torch.device("cpu")
    return torch.device(f"cuda:{int(os.environ.get('LOCAL_RANK', '0'))}")


def use_bf16() -> bool:
    """bf16 autocast: on a CUDA device that supports it; never on the CPU (slow there)."""
    return resolve().type == "cuda" and torch.cuda.is_bf16_supported()


def autocast(device=None):
    """bf16 autocast on CUDA, a no-op context elsewhere."""
    device = device or resolve()
    if getattr(device, "type", str(device)) == "cuda" and torch.cuda.is_bf16_supported():
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()
