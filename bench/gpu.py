"""CPU vs GPU on a ~100M-parameter Qwen-architecture model: KARMA training tokens/s and u2q
generation users/s, side by side in one run on one machine. Prints one JSON object.

The model is randomly initialised (the benchmark measures speed, not quality), with the
pipeline's own tokenizer trained on generated product text; KARMA samples and AIGQ prompts are
generated in memory (no Spark, no data root), so the script runs on any machine with torch and
transformers. Each device runs the production code paths: ``train_loop`` (bf16 autocast on
CUDA, ``runtime.device``) over ``KarmaDataset`` batches, and ``generate_lists`` (batched,
left-padded, KV-cached greedy decoding; bf16 weights on CUDA, as the export loads them).

    python bench/gpu.py                          # cpu and cuda (when visible)
    python bench/gpu.py --devices cpu --karma-steps 2 --gen-users 16 --layers 2   # a quick CPU check
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import random
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

# after the variables above: huggingface_hub reads HF_HUB_OFFLINE when it is imported
import pyarrow as pa  # noqa: E402
import torch  # noqa: E402
import transformers  # noqa: E402

from aigq_model.generate import Decoding, generate_lists  # noqa: E402
from aigq_model.train_sft import SFTConfig, prepare_model  # noqa: E402
from base_lm.pretrain import BaseLMConfig, build_model, save_base_lm  # noqa: E402
from base_lm.tokenizer import train_tokenizer  # noqa: E402
from common import device as devices  # noqa: E402
from common.schemas import ITEM_CORPUS, KARMA_SAMPLES  # noqa: E402
from common.training import LoopArgs, train_loop  # noqa: E402
from karma_model.config import KarmaConfig  # noqa: E402
from karma_model.data import ItemCatalog, KarmaCollator, KarmaDataset, KarmaEncoder  # noqa: E402
from karma_model.model import KarmaModel  # noqa: E402

BRANDS = ["Voltra", "Pixelon", "Harvesta", "Nordwik", "Cumulo", "Ardent", "Miravel", "Quorra", "Stelline", "Tovik"]
ADJ = ["organic", "silver", "wireless", "premium", "dark", "fast charging", "256gb", "compact", "waterproof",
       "ergonomic", "vintage", "smart", "portable", "heavy duty", "slim"]
NOUNS = ["chocolate", "phone", "tablet", "headphones", "coffee", "backpack", "keyboard", "monitor", "kettle",
         "camera", "jacket", "sneakers", "lamp", "blender", "router", "speaker", "watch", "charger"]
CATS = ["Food > Sweets", "Electronics > Phones", "Electronics > Audio", "Bags > Backpacks", "Home > Kitchen",
        "Fashion > Shoes", "Electronics > Networking", "Home > Lighting"]
BUCKETS = ["lt_1h", "lt_1d", "1d_ago", "2_3d_ago"]
T0 = dt.datetime(2026, 11, 3, 8, tzinfo=dt.UTC)


def texts(rng: random.Random, n: int) -> list[str]:
    out = []
    for _ in range(n):
        b, a, w = rng.choice(BRANDS), rng.choice(ADJ), rng.choice(NOUNS)
        out += [f"{b} {a} {w} | {rng.choice(CATS)} | {b}", f"{a} {w}", f"{b} {w} {rng.choice(ADJ)}"]
    return out


def items(rng: random.Random, n: int) -> list[dict]:
    rows = []
    for i in range(n):
        b, a, w = rng.choice(BRANDS), rng.choice(ADJ), rng.choice(NOUNS)
        title = f"{b} {a} {w} {rng.choice(ADJ)}"
        rows.append({"item_id": f"i{i}", "text": f"{title} | {rng.choice(CATS)} | {b}", "title": title,
                     "leaf_category": None, "brand": b, "image_embedding": None})
    return rows


def history(rng: random.Random, catalog: list[dict], n: int) -> list[dict]:
    out = []
    for j in range(n):
        if j % 3 == 0:
            out.append({"event_time": T0 - dt.timedelta(minutes=n - j), "event_type": "search",
                        "time_bucket": rng.choice(BUCKETS), "text": f"{rng.choice(ADJ)} {rng.choice(NOUNS)}",
                        "item_id": None, "category": None})
        else:
            it = rng.choice(catalog)
            out.append({"event_time": T0 - dt.timedelta(minutes=n - j), "event_type": "click",
                        "time_bucket": rng.choice(BUCKETS), "text": it["title"], "item_id": it["item_id"],
                        "category": None})
    return out


def karma_rows(rng: random.Random, catalog: list[dict], n: int, hist_len: int) -> list[dict]:
    return [{"sample_id": f"s{i}", "user_id": f"u{i}", "event_time": T0,
             "target_item_id": rng.choice(catalog)["item_id"], "target_event_type": "click",
             "history": history(rng, catalog, hist_len),
             "hard_negative_ids": [rng.choice(catalog)["item_id"] for _ in range(2)], "split": "train"}
            for i in range(n)]


def aigq_rows(rng: random.Random, catalog: list[dict], n: int, hist_len: int) -> list[dict]:
    return [{"sample_id": f"a{i}", "user_id": f"u{i}", "request_id": f"r{i}", "event_time": T0,
             "gender": rng.choice(["female", "male"]), "age_bucket": "25-29", "city": "Shanghai",
             "purchase_level": "high", "history": history(rng, catalog, hist_len),
             "target_queries": [rng.choice(NOUNS)], "label_source": "hintq", "split": "test"}
            for i in range(n)]


def build_base(out: Path, args) -> tuple[Path, int]:
    cfg = BaseLMConfig(arch=args.arch, vocab_size=args.vocab, hidden_size=args.hidden, num_hidden_layers=args.layers,
                       num_attention_heads=args.heads, num_key_value_heads=args.kv_heads,
                       intermediate_size=args.intermediate, max_position_embeddings=1024)
    torch.manual_seed(0)
    tok = train_tokenizer(texts(random.Random(0), 3000), vocab_size=cfg.vocab_size)
    model = build_model(tok, cfg)
    n_params = sum(p.numel() for p in model.parameters())
    return save_base_lm(model, tok, out, {"name": "bench-gpu"}), n_params


def sync(device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def karma_speed(base: Path, device_name: str, args) -> dict:
    devices.configure(device_name)
    device = devices.resolve()
    rng = random.Random(1)
    catalog_rows = items(rng, 2000)
    catalog = ItemCatalog.from_table(pa.Table.from_pylist(catalog_rows, schema=ITEM_CORPUS))
    batch = args.batch
    n = batch * (args.karma_steps + args.warmup_steps + 1)
    samples = pa.Table.from_pylist(karma_rows(rng, catalog_rows, n, args.history), schema=KARMA_SAMPLES)
    config = KarmaConfig(batch_size=batch, max_history_tokens=256, max_item_tokens=48, max_target_tokens=32,
                         save_steps=0, warmup_steps=0)
    model, tok = KarmaModel.from_base(base, config)
    encoder = KarmaEncoder(tok, config, catalog)
    collate, dataset = KarmaCollator(encoder), KarmaDataset(samples, encoder)
    # Tokens per optimizer step: every non-padding position the step runs a forward/backward over.
    probe = collate([dataset[i] for i in range(batch)])
    tokens = int(sum(v.sum() for k, v in probe.items() if k.endswith("attention_mask")))
    with tempfile.TemporaryDirectory() as tmp:
        common = dict(per_device_batch_size=batch, learning_rate=1e-4, logging_steps=1000, save_steps=0,
                      bf16=devices.use_bf16())
        train_loop(model, dataset, collate, LoopArgs(output_dir=tmp, max_steps=args.warmup_steps, **common))
        sync(device)
        t0 = time.perf_counter()
        state = train_loop(model, dataset, collate, LoopArgs(output_dir=tmp, max_steps=args.karma_steps, **common))
        sync(device)
        seconds = time.perf_counter() - t0
    peak = torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda" else None
    del model
    return {"device": str(device), "bf16": devices.use_bf16(), "steps": state.global_step, "batch": batch,
            "tokens_per_step": tokens, "seconds": round(seconds, 3), "s_per_step": round(seconds / args.karma_steps, 4),
            "tokens_per_s": round(tokens * args.karma_steps / seconds, 1),
            "last_loss": round(state.log_history[-1]["loss"], 4) if state.log_history else None,
            "peak_gpu_gib": round(peak, 2) if peak is not None else None}


def generation_speed(base: Path, device_name: str, n_users: int, args) -> dict:
    devices.configure(device_name)
    device = devices.resolve()
    model, tok = prepare_model(base, SFTConfig())
    dtype = torch.bfloat16 if devices.use_bf16() else torch.float32
    model.to(device=device, dtype=dtype).eval()
    rng = random.Random(2)
    rows = aigq_rows(rng, items(rng, 500), n_users, args.history)
    decoding = Decoding(max_new_tokens=args.max_new_tokens)
    warm = rows[: min(len(rows), args.gen_batch)]
    generate_lists(model, tok, warm, k=10, batch_size=args.gen_batch, decoding=decoding, cold_start="model")
    sync(device)
    t0 = time.perf_counter()
    out = generate_lists(model, tok, rows, k=10, batch_size=args.gen_batch, decoding=decoding, cold_start="model")
    sync(device)
    seconds = time.perf_counter() - t0
    return {"device": str(device), "dtype": str(dtype).replace("torch.", ""), "users": len(out),
            "batch": args.gen_batch, "max_new_tokens": args.max_new_tokens, "seconds": round(seconds, 3),
            "users_per_s": round(len(out) / seconds, 2)}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--devices", nargs="+", default=None, help="default: cpu, plus cuda when visible")
    parser.add_argument("--arch", default="qwen3", choices=["qwen2", "qwen3"])
    parser.add_argument("--vocab", type=int, default=8000)
    parser.add_argument("--hidden", type=int, default=768)
    parser.add_argument("--layers", type=int, default=12)
    parser.add_argument("--heads", type=int, default=12)
    parser.add_argument("--kv-heads", type=int, default=4)
    parser.add_argument("--intermediate", type=int, default=2816)
    parser.add_argument("--batch", type=int, default=16, help="KARMA samples per step")
    parser.add_argument("--history", type=int, default=20, help="behaviours per history")
    parser.add_argument("--warmup-steps", type=int, default=2)
    parser.add_argument("--karma-steps", type=int, default=None, help="timed steps (default cpu 3, cuda 30)")
    parser.add_argument("--gen-users", type=int, default=None, help="users generated (default cpu 32, cuda 512)")
    parser.add_argument("--gen-batch", type=int, default=None, help="users per generate call (cpu 16, cuda 128)")
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: all cores)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    names = args.devices or (["cpu", "cuda"] if torch.cuda.is_available() else ["cpu"])
    result = {"torch": torch.__version__, "cpu_threads": torch.get_num_threads(),
              "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None}
    result["transformers"] = transformers.__version__
    with tempfile.TemporaryDirectory() as tmp:
        base, n_params = build_base(Path(tmp) / "base", args)
        result["model"] = {"arch": args.arch, "params_m": round(n_params / 1e6, 1), "hidden": args.hidden,
                           "layers": args.layers, "heads": args.heads, "kv_heads": args.kv_heads, "vocab": args.vocab}
        defaults = {"cpu": (3, 32, 16), "cuda": (30, 512, 128)}
        for name in names:
            steps, users, gen_batch = defaults.get(name, defaults["cpu"])
            run = argparse.Namespace(**{**vars(args), "karma_steps": args.karma_steps or steps,
                                        "gen_batch": args.gen_batch or gen_batch})
            result[f"karma_train_{name}"] = karma_speed(base, name, run)
            print(json.dumps({name: result[f"karma_train_{name}"]}), file=sys.stderr, flush=True)
            result[f"u2q_generate_{name}"] = generation_speed(base, name, args.gen_users or users, run)
            print(json.dumps({name: result[f"u2q_generate_{name}"]}), file=sys.stderr, flush=True)
        if {"cpu", "cuda"} <= set(names):
            result["ratio_gpu_over_cpu"] = {
                "karma_tokens_per_s": round(result["karma_train_cuda"]["tokens_per_s"]
                                            / result["karma_train_cpu"]["tokens_per_s"], 1),
                "u2q_users_per_s": round(result["u2q_generate_cuda"]["users_per_s"]
                                         / result["u2q_generate_cpu"]["users_per_s"], 1),
            }
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
