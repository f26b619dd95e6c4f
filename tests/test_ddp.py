"""DDP under torchrun (gloo, 2 CPU processes) equals one process with the same global batch.

Base-LM pre-training, KARMA and AIGQ IL-SFT train for a few steps through their entry points twice on the same tiny
data and seed: once in one process with batch ``B``, once under ``torchrun --standalone
--nproc-per-node 2`` with ``B/2`` per rank (the union of the ranks' batches is the single batch,
``common.training.epoch_batches``). Every logged per-step loss term must agree within
``REL_TOL`` (relative): KARMA's InfoNCE sees every rank's candidates (gathered with gradient,
deduplicated by item) and its token / image terms, like the AIGQ token loss, are normalised by
the global count across ranks — without that the per-rank means would differ by far more (the
ranks hold different numbers of target tokens). Then: rank 0 alone wrote (one JSON result line,
each checkpoint saved once, nothing left beside the published folder, one ``trainer_state.json``
of ``max_steps`` entries), the DDP model reloads in a single process and reproduces the
validation loss rank 0 measured on its in-memory weights, and its embeddings / logits match the
single-process model's within ``WEIGHT_TOL``.

The training runs are timed out at ``TIMEOUT`` seconds each; the two ``slow`` tests take about
75 s together on 2 cores. The last test checks, without running anything, the commands the
training DAGs build from ``runtime.nproc_per_node`` and their ``nproc_per_node`` param.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pytest
import torch

from tests.test_base_lm import make_tiny_base

REPO = Path(__file__).resolve().parents[1]
DS = "2026-11-03"
STEPS = 4
GLOBAL_BATCH = 4  # single process; 2 per rank under DDP
REL_TOL = 1e-4  # per-step loss terms, DDP vs single process (measured: ~1e-6)
WEIGHT_TOL = 1e-3  # reloaded outputs after STEPS AdamW steps, DDP vs single process (abs)
TIMEOUT = 240

KARMA_ENV = {
    "PIPELINE__KARMA__PROJ_DIM": "16",
    "PIPELINE__KARMA__IMAGE_DIM": "4",
    "PIPELINE__KARMA__MAX_HISTORY_TOKENS": "96",
    "PIPELINE__KARMA__MAX_ITEM_TOKENS": "24",
    "PIPELINE__KARMA__MAX_TARGET_TOKENS": "12",
    "PIPELINE__KARMA__WARMUP_STEPS": "0",
    "PIPELINE__KARMA__LEARNING_RATE": "0.001",
    "PIPELINE__KARMA__EVAL_BATCHES": "1",
    "PIPELINE__KARMA__SAVE_STEPS": "2",
}
AIGQ_ENV = {
    "PIPELINE__AIGQ__SFT__MAX_LEN": "256",
    "PIPELINE__AIGQ__SFT__WARMUP_STEPS": "0",
    "PIPELINE__AIGQ__SFT__LEARNING_RATE": "0.001",
    "PIPELINE__AIGQ__SFT__EVAL_BATCHES": "1",
    "PIPELINE__AIGQ__SFT__SAVE_STEPS": "2",
}


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A tiny base LM and one day of KARMA and AIGQ samples (8 train rows each, 2 valid)."""
    from common.arrow_io import write_partition
    from tests.test_aigq_sft import make_rows
    from tests.test_karma_model import item_rows, sample_rows

    tmp = tmp_path_factory.mktemp("ddp")
    base = make_tiny_base(tmp / "base", max_position_embeddings=512)
    root = tmp / "data"
    write_partition(root, "samples", "item_corpus", DS, item_rows())
    write_partition(root, "samples", "karma_samples", DS, sample_rows(9))  # 8 train + 1 valid
    write_partition(root, "samples", "aigq_direct_sft", DS, make_rows(8) + make_rows(2, 1, "valid"))
    return base, root


def _env(extra: dict[str, str]) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PIPELINE__")}
    return {
        **env,
        **extra,
        "PIPELINE__RUNTIME__DEVICE": "cpu",
        "OMP_NUM_THREADS": "1",
        "HF_HUB_OFFLINE": "1",
        "TOKENIZERS_PARALLELISM": "false",
        "PYTHONPATH": os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH", "")) if p),
    }


def _train(cmd: list[str], env: dict[str, str]) -> tuple[dict, subprocess.CompletedProcess]:
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=TIMEOUT)
    assert proc.returncode == 0, proc.stderr[-4000:]
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    assert len(lines) == 1, proc.stdout[-2000:]  # one result line: rank 0's
    return json.loads(lines[0]), proc


def _history(model_dir: Path) -> list[dict]:
    return json.loads((Path(model_dir) / "trainer_state.json").read_text())["log_history"]


def _assert_same_losses(single: list[dict], ddp: list[dict]) -> float:
    """Every step's ``loss*`` terms agree within REL_TOL; returns the largest relative difference."""
    assert [e["step"] for e in single] == [e["step"] for e in ddp] == list(range(1, STEPS + 1))
    worst = 0.0
    for a, b in zip(single, ddp, strict=True):
        terms = sorted(k for k in a if k.startswith("loss"))
        assert terms == sorted(k for k in b if k.startswith("loss"))
        assert "loss" in terms
        for k in terms:
            rel = abs(a[k] - b[k]) / max(abs(a[k]), 1e-8)
            worst = max(worst, rel)
            assert rel <= REL_TOL, f"step {a['step']} {k}: single {a[k]} vs DDP {b[k]}"
    print(f"largest relative per-step loss difference, DDP vs single: {worst:.2e}")
    return worst


def _assert_rank0_wrote(proc: subprocess.CompletedProcess, model_dir: Path) -> None:
    """One writer: each checkpoint saved once, no temporaries or checkpoints left beside the
    published folder, one trainer_state.json with one entry per step."""
    for step in (2, 4):
        assert proc.stderr.count(f"checkpoint-{step}\n") == 1, proc.stderr[-3000:]  # "saved .../checkpoint-N"
    assert [p.name for p in model_dir.parent.iterdir()] == [model_dir.name]
    assert len(list(model_dir.rglob("trainer_state.json"))) == 1
    assert len(_history(model_dir)) == STEPS


def _torchrun(module: str, args: list[str]) -> list[str]:
    """The command the training DAGs build for ``runtime.nproc_per_node: 2``."""
    from dags.runner import python_command

    cmd = python_command(module, args, 2)
    assert cmd[:6] == [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"]
    return cmd


@pytest.mark.slow
def test_karma_ddp_equals_one_process_with_the_global_batch(world, tmp_path):
    from common.schemas import ITEM_CORPUS, KARMA_SAMPLES
    from common.training import evaluate_loss
    from karma_model.data import ItemCatalog, KarmaDataset, KarmaEncoder, collate_histories, collate_items
    from karma_model.load import load_karma
    from karma_model.train import TrainCollator
    from tests.test_karma_model import item_rows, sample_rows

    base, root = world
    args = ["--ds", DS, "--data-root", str(root), "--base-model", str(base), "--max-steps", str(STEPS),
            "--variant", "act+gen+rec", "--images", "--seed", "0"]
    single_out, ddp_out = tmp_path / "single" / "karma" / DS, tmp_path / "ddp" / "karma" / DS
    batch = {"PIPELINE__KARMA__BATCH_SIZE": str(GLOBAL_BATCH)}
    single, _ = _train([sys.executable, "-m", "karma_model.train", *args, "--out", str(single_out)],
                       _env({**KARMA_ENV, **batch}))
    batch = {"PIPELINE__KARMA__BATCH_SIZE": str(GLOBAL_BATCH // 2)}
    ddp, proc = _train(_torchrun("karma_model.train", [*args, "--out", str(ddp_out)]),
                       _env({**KARMA_ENV, **batch}))
    assert Path(ddp["model_dir"]) == ddp_out
    assert ddp["metrics"]["steps"] == STEPS

    _assert_same_losses(_history(single_out), _history(ddp_out))
    _assert_rank0_wrote(proc, ddp_out)

    # the DDP model reloads in one process: rank 0's valid loss on its in-memory weights again
    torch.set_num_threads(1)
    model, tok = load_karma(ddp_out)
    cfg = model.config
    catalog = ItemCatalog.from_table(pa.Table.from_pylist(item_rows(), schema=ITEM_CORPUS))
    encoder = KarmaEncoder(tok, cfg, catalog)
    valid = pa.Table.from_pylist([r for r in sample_rows(9) if r["split"] == "valid"], schema=KARMA_SAMPLES)
    again = evaluate_loss(model, KarmaDataset(valid, encoder), TrainCollator(encoder), cfg.batch_size,
                          cfg.eval_batches)
    for k, v in ddp["metrics"]["valid"].items():
        assert again[k] == pytest.approx(v, rel=1e-5, abs=1e-6), k

    # ... and its embeddings match the single-process model's
    ref, ref_tok = load_karma(single_out)
    assert ref_tok.get_vocab() == tok.get_vocab()
    with torch.no_grad():
        hist = collate_histories(encoder, [sample_rows(9)[i]["history"] for i in range(4)])
        items = collate_items(encoder, list(range(len(catalog))))
        for name, fn, inputs in (("e_u", "encode_history", hist), ("e_i", "encode_items", items)):
            diff = (getattr(model, fn)(**inputs) - getattr(ref, fn)(**inputs)).abs().max().item()
            print(f"{name}: largest |DDP - single| after {STEPS} steps = {diff:.2e}")
            assert diff < WEIGHT_TOL, name


@pytest.mark.slow
def test_aigq_sft_ddp_equals_one_process_with_the_global_batch(world, tmp_path):
    from aigq_model.load import load_aigq
    from aigq_model.train_sft import SFTCollator, SFTConfig, SFTDataset
    from common.training import evaluate_loss
    from tests.test_aigq_sft import make_rows

    base, root = world
    args = ["--ds", DS, "--data-root", str(root), "--base-model", str(base), "--max-steps", str(STEPS),
            "--kind", "direct", "--seed", "0"]
    single_out, ddp_out = tmp_path / "single" / "aigq" / DS, tmp_path / "ddp" / "aigq" / DS
    batch = {"PIPELINE__AIGQ__SFT__BATCH_SIZE": str(GLOBAL_BATCH)}
    _train([sys.executable, "-m", "aigq_model.train_sft", *args, "--out", str(single_out)],
           _env({**AIGQ_ENV, **batch}))
    batch = {"PIPELINE__AIGQ__SFT__BATCH_SIZE": str(GLOBAL_BATCH // 2)}
    ddp, proc = _train(_torchrun("aigq_model.train_sft", [*args, "--out", str(ddp_out)]),
                       _env({**AIGQ_ENV, **batch}))
    assert Path(ddp["model_dir"]) == ddp_out
    assert ddp["metrics"]["steps"] == STEPS

    _assert_same_losses(_history(single_out), _history(ddp_out))
    _assert_rank0_wrote(proc, ddp_out)

    # reloaded in one process: rank 0's valid loss again, and the single-process model's logits
    torch.set_num_threads(1)
    model, tok = load_aigq(ddp_out)
    manifest = json.loads((ddp_out / "manifest.json").read_text())
    config = SFTConfig(**manifest["config"])
    valid = SFTDataset(make_rows(2, 1, "valid"), tok, config)
    collate = SFTCollator(tok.pad_token_id)
    again = evaluate_loss(model, valid, collate, config.batch_size, config.eval_batches, config.seed)["loss"]
    assert again == pytest.approx(ddp["metrics"]["valid_loss"], rel=1e-5)
    ref, _ = load_aigq(single_out)
    inputs = collate([valid[0], valid[1]])
    with torch.no_grad():
        diff = (model(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"]).logits
                - ref(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"]).logits)
    print(f"logits: largest |DDP - single| after {STEPS} steps = {diff.abs().max().item():.2e}")
    assert diff.abs().max().item() < WEIGHT_TOL



BASE_ENV = {
    "PIPELINE__BASE_LM__VOCAB_SIZE": "400",
    "PIPELINE__BASE_LM__HIDDEN_SIZE": "32",
    "PIPELINE__BASE_LM__NUM_HIDDEN_LAYERS": "2",
    "PIPELINE__BASE_LM__NUM_ATTENTION_HEADS": "4",
    "PIPELINE__BASE_LM__NUM_KEY_VALUE_HEADS": "2",
    "PIPELINE__BASE_LM__INTERMEDIATE_SIZE": "64",
    "PIPELINE__BASE_LM__MAX_POSITION_EMBEDDINGS": "128",
    "PIPELINE__BASE_LM__BLOCK_SIZE": "32",
    "PIPELINE__BASE_LM__WARMUP_STEPS": "0",
    "PIPELINE__BASE_LM__LEARNING_RATE": "0.001",
    "PIPELINE__BASE_LM__SAVE_STEPS": "2",
}


@pytest.mark.slow
def test_base_lm_pretraining_ddp_equals_one_process_with_the_global_batch(world, tmp_path):
    """The base LM stage too: every rank trains the same tokenizer and packs the same full blocks,
    so the ranks' mean losses average to the global mean; rank 0 alone publishes."""
    from base_lm.load import load_base_lm

    _base, root = world
    args = ["--ds", DS, "--data-root", str(root), "--max-steps", str(STEPS), "--seed", "0"]
    single_out, ddp_out = tmp_path / "single" / "base_lm" / DS, tmp_path / "ddp" / "base_lm" / DS
    _train([sys.executable, "-m", "base_lm.pretrain", *args, "--out", str(single_out)],
           _env({**BASE_ENV, "PIPELINE__BASE_LM__BATCH_SIZE": str(GLOBAL_BATCH)}))
    ddp, proc = _train(_torchrun("base_lm.pretrain", [*args, "--out", str(ddp_out)]),
                       _env({**BASE_ENV, "PIPELINE__BASE_LM__BATCH_SIZE": str(GLOBAL_BATCH // 2)}))
    assert Path(ddp["model_dir"]) == ddp_out
    assert ddp["metrics"]["steps"] == STEPS

    _assert_same_losses(_history(single_out), _history(ddp_out))
    _assert_rank0_wrote(proc, ddp_out)

    torch.set_num_threads(1)
    model, tok = load_base_lm(ddp_out)
    ref, ref_tok = load_base_lm(single_out)
    assert tok.get_vocab() == ref_tok.get_vocab()  # the ranks' tokenizers were the same
    ids = torch.tensor([tok("organic chocolate phone", add_special_tokens=False)["input_ids"]])
    with torch.no_grad():
        diff = (model(input_ids=ids).logits - ref(input_ids=ids).logits).abs().max().item()
    print(f"base LM logits: largest |DDP - single| after {STEPS} steps = {diff:.2e}")
    assert diff < WEIGHT_TOL


def test_dags_launch_training_under_torchrun_only_when_asked(monkeypatch):
    """N = 1: ``python -m common.steps module`` (the step launcher); N > 1 (env override of the
    config, or the param, which wins): ``python -m torch.distributed.run --standalone
    --nproc-per-node N -m common.steps module``, for the DAG's training entry points only."""
    from dags import runner, training_tasks
    from dags.aigq_training import DDP_MODULES as AIGQ_DDP
    from dags.karma_training import DDP_MODULES as KARMA_DDP

    def command(module: str, params: dict, ddp: tuple[str, ...]) -> list[str]:
        return runner.python_command(module, ["--ds", DS], training_tasks.step_nproc(module, params, ddp))

    monkeypatch.delenv("PIPELINE__RUNTIME__NPROC_PER_NODE", raising=False)
    params = {"omp_threads": 1, "nproc_per_node": 0}
    launcher = [sys.executable, "-m", "common.steps"]
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node"]
    assert command("karma_model.train", params, KARMA_DDP) == [*launcher, "karma_model.train", "--ds", DS]
    assert command("aigq_model.train_sft", params, AIGQ_DDP) == [*launcher, "aigq_model.train_sft", "--ds", DS]

    monkeypatch.setenv("PIPELINE__RUNTIME__NPROC_PER_NODE", "2")
    assert command("karma_model.train", params, KARMA_DDP) == [*torchrun, "2", "-m", "common.steps",
                                                               "karma_model.train", "--ds", DS]
    assert command("karma_model.evaluate", params, KARMA_DDP) == [*launcher, "karma_model.evaluate", "--ds", DS]
    assert command("aigq_model.train_sft", params, AIGQ_DDP) == [*torchrun, "2", "-m", "common.steps",
                                                                 "aigq_model.train_sft", "--ds", DS]
    assert command("aigq_model.run_eval", params, AIGQ_DDP) == [*launcher, "aigq_model.run_eval", "--ds", DS]
    three = {**params, "nproc_per_node": 3}  # the param wins
    assert command("karma_model.train", three, KARMA_DDP) == [*torchrun, "3", "-m", "common.steps",
                                                              "karma_model.train", "--ds", DS]
    assert command("base_lm.pretrain", params, AIGQ_DDP) == [*torchrun, "2", "-m", "common.steps",
                                                             "base_lm.pretrain", "--ds", DS]

    # the training tasks' Airflow pool: Airflow's default_pool unless runtime.training_pool names one
    monkeypatch.delenv("PIPELINE__RUNTIME__TRAINING_POOL", raising=False)
    assert training_tasks.training_pool() == ("default_pool", 2)
    monkeypatch.setenv("PIPELINE__RUNTIME__TRAINING_POOL", "gpu")
    assert training_tasks.training_pool() == ("gpu", 2)
