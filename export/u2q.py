"""u2q (AIGQ-Direct): every active user's ranked query list, published behind the gates.

For the users with clean behaviour in the ``export.window_days`` days ending at ``ds``, the
AIGQ-Direct prompt (profile from the clean ``users`` snapshot, history = the user's last
``export.max_history`` behaviours before the end of ``ds``, see :mod:`export.data`) goes
through the registered policy (``aigq_direct_grpo``, else ``aigq_direct``: the manifest records
which) in batches of ``export.batch_users`` users, greedy by default, so a rerun repeats.
Lists are cleaned and block-listed (``aigq_model.generate.generate_lists``) and topped up to
``export.u2q_k`` with the block-list-filtered popularity list; cold-start users (no
behaviour before the cut-off in the history window) get that list without a model call. Rows:
one per (user, rank), ``source`` = ``model`` or ``fallback``.

Retention (the "most recent M runs" of each user): partition ``ds`` is a merged snapshot of
this run's lists plus every user's earlier runs carried from the newest published partition
before ``ds``, keeping each user's ``export.u2q_keep_runs`` newest runs (by their ``ds``;
earlier runs' queries blocked by today's block-list are dropped and their ranks renumbered).
Serving reads the newest partition only; older partitions beyond ``export.keep_partitions``
are deleted. Re-running a ds rebuilds it from the same predecessor, so it repeats exactly;
backfilling dates in order rebuilds the chain.

Gates (on this run's rows and on the merged table): coverage of the active users, null rates,
duplicate (user, ds, rank) and (user, ds, query), ranks in [1, k], zero block-listed queries,
list lengths in [``min_list_len``, k], at most M runs per user.

Usage::

    python -m export.u2q --ds 2026-11-03 [--data-root R] [--config F] [--profile P] [--run-id ID]
        [--batch-users N] [--min-coverage X] [--max-new-tokens N]
"""

from __future__ import annotations

import dataclasses
import logging
import sys
import time

import pyarrow as pa

logger = logging.getLogger(__name__)

TABLE = "u2q"
POLICIES = ("aigq_direct_grpo", "aigq_direct")
KEYS = ["user_id", "ds", "rank"]


def u2q_rows(user_ids, gens, ds: str, run_id: str, model_name: str, model_version: str, generated_at) -> list[dict]:
    """One row per (user, rank) of the generated lists; ``source`` says who filled the slot."""
    rows = []
    for uid, g in zip(user_ids, gens, strict=True):
        for r, q in enumerate(g.queries):
            rows.append({"user_id": uid, "ds": ds, "run_id": run_id, "rank": r + 1, "query": q,
                         "source": "model" if r < g.n_model else "fallback", "model_name": model_name,
                         "model_version": model_version, "generated_at": generated_at})
    return rows


def carry_previous_runs(previous: pa.Table | None, ds: str, active: set[str], keep_runs: int,
                        blocked=None) -> pa.Table:
    """Earlier runs to keep beside today's: each user's newest runs before ``ds`` (``keep_runs - 1``
    for users in today's run, ``keep_runs`` for the others), block-listed queries dropped and
    ranks renumbered within each (user, ds).

    >>> import datetime as dt
    >>> from common.schemas import U2Q
    >>> t = dt.datetime(2026, 11, 2, tzinfo=dt.UTC)
    >>> prev = pa.Table.from_pylist([dict(user_id=u, ds=d, run_id="r", rank=1, query="q", source="model",
    ...     model_name="m", model_version="v", generated_at=t) for u in ("a", "b") for d in ("2026-10-30",
    ...     "2026-10-31", "2026-11-01")], schema=U2Q)
    >>> out = carry_previous_runs(prev, "2026-11-01", {"a"}, 2)
    >>> sorted((r["user_id"], r["ds"]) for r in out.to_pylist())
    [('a', '2026-10-31'), ('b', '2026-10-30'), ('b', '2026-10-31')]
    """
    from common.schemas import U2Q

    if previous is None or previous.num_rows == 0:
        return U2Q.empty_table()
    df = previous.to_pandas()
    df = df[df["ds"] < ds]
    if blocked is not None and blocked:
        df = df[[not blocked.blocks(q) for q in df["query"]]]
    if df.empty:
        return U2Q.empty_table()
    runs = df[["user_id", "ds"]].drop_duplicates().sort_values(["user_id", "ds"], ascending=[True, False])
    runs["age"] = runs.groupby("user_id").cumcount()
    runs["limit"] = [keep_runs - 1 if u in active else keep_runs for u in runs["user_id"]]
    runs = runs[runs["age"] < runs["limit"]][["user_id", "ds"]]
    df = df.merge(runs, on=["user_id", "ds"], how="inner").sort_values(["user_id", "ds", "rank"], kind="stable")
    df["rank"] = (df.groupby(["user_id", "ds"]).cumcount() + 1).astype("int32")
    return pa.Table.from_pandas(df.reset_index(drop=True), schema=U2Q, preserve_index=False)


def previous_snapshot(root, ds: str) -> tuple[pa.Table | None, str | None]:
    """The newest published u2q partition strictly before ``ds``."""
    from common.arrow_io import read_partition
    from common.paths import published_ds
    from common.schemas import U2Q
    from export.publish import AREA

    before = [d for d in published_ds(root, AREA, TABLE) if d < ds]
    if not before:
        return None, None
    return read_partition(root, AREA, TABLE, before[-1], schema=U2Q), before[-1]


def gate_u2q(table: pa.Table, today: pa.Table, active, ex, blocked) -> dict:
    from export import gates

    return gates.run_gates({
        "coverage": gates.check_coverage(today, active, ex.min_coverage),
        "null_rates": gates.check_null_rates(table, ex.max_null_rate),
        "duplicate_keys": gates.check_duplicates(table, KEYS) + gates.check_duplicates(
            table, ["user_id", "ds", "query"]),
        "rank_range": gates.check_range(table, "rank", 1, ex.u2q_k),
        "blocklist": gates.check_blocklist(table, blocked),
        "list_lengths": gates.check_list_lengths(today, ["user_id"], ex.min_list_len, ex.u2q_k),
        "runs_per_user": gates.check_list_lengths(
            table.group_by(["user_id", "ds"]).aggregate([]), ["user_id"], 1, ex.u2q_keep_runs),
    })


def export_u2q(cfg: dict, root: str, ds: str, run_id: str, batch_users: int | None = None,
               min_coverage: float | None = None, max_new_tokens: int | None = None) -> dict:
    """Generate, gate and publish ``exports/u2q/ds=<ds>``; returns the manifest summary."""
    from aigq_model.generate import generate_lists
    from common.publish import staged_partitions
    from export import gates, models
    from export.data import ExportConfig, anchor_time, build_samples, chunks, load_inputs
    from export.publish import StagedTable, apply_retention, content_hash, fault_hook

    ex = ExportConfig.from_config(cfg, batch_users=batch_users, min_coverage=min_coverage)
    reg = models.require_registered(root, POLICIES, "AIGQ-Direct policy")
    if reg.fallback_used:
        logger.warning("no registered %s: using %s/%s", reg.preferred, reg.name, reg.version)
    style, max_history = models.policy_settings(reg)
    model, tok = models.load_policy(reg)
    decoding, gen_batch = models.decoding(cfg, ex.generate, max_new_tokens)
    blocked = models.blocklist(cfg, ex.blocklist)
    inputs = load_inputs(root, ds, ex)
    popular = models.popular_queries(inputs.events, ds, ex.u2q_k, blocked)
    generated_at = anchor_time(ds)
    manifest = {"run_id": run_id, "model": {"name": reg.name, "version": reg.version, "path": str(reg.path),
                                            "preferred": reg.preferred, "fallback_used": reg.fallback_used},
                "decoding": dataclasses.asdict(decoding), "window_days": ex.window_days, "event_days": inputs.event_days,
                "users_ds": inputs.users_ds, "items_ds": inputs.items_ds, "keep_runs": ex.u2q_keep_runs}
    counts = {"active_users": len(inputs.active), "model_rows": 0, "fallback_rows": 0, "cold_start_users": 0,
              "malformed": 0}
    n_batches = (len(inputs.active) + ex.batch_users - 1) // ex.batch_users
    t0 = time.perf_counter()
    with staged_partitions() as batch:
        staged = StagedTable(batch, root, TABLE, ds, manifest)
        for i, users in enumerate(chunks(inputs.active, ex.batch_users)):
            samples = build_samples(inputs.log, users, inputs.profile, ds, ex.max_history)
            gens = generate_lists(model, tok, samples, kind="direct", k=ex.u2q_k, batch_size=gen_batch,
                                  decoding=decoding, fallback=popular, blocklist=blocked, style=style,
                                  max_history=max_history)
            rows = u2q_rows(users, gens, ds, run_id, reg.name, reg.version, generated_at)
            staged.write(rows)
            counts["model_rows"] += sum(r["source"] == "model" for r in rows)
            counts["fallback_rows"] += sum(r["source"] == "fallback" for r in rows)
            counts["cold_start_users"] += sum(not g.model_called for g in gens)
            counts["malformed"] += sum(g.malformed for g in gens if g.model_called)
            done = min((i + 1) * ex.batch_users, len(inputs.active))
            logger.info("u2q batch %d/%d: %d users (%d/%d, %.1f users/s)", i + 1, n_batches, len(users), done,
                        len(inputs.active), done / max(time.perf_counter() - t0, 1e-9))
            fault_hook(i)
        today = staged.read()
        previous, previous_ds = previous_snapshot(root, ds)
        carried = carry_previous_runs(previous, ds, set(inputs.active), ex.u2q_keep_runs, blocked)
        staged.write(carried)
        table = staged.read()
        results = gate_u2q(table, today, inputs.active, ex, blocked)
        manifest.update(counts=counts, rows=table.num_rows, rows_today=today.num_rows,
                        rows_carried=carried.num_rows, previous_ds=previous_ds, gates=results,
                        content_hash=content_hash(table, KEYS), generation_seconds=round(time.perf_counter() - t0, 2))
        gates.enforce(TABLE, results)
    deleted = apply_retention(root, TABLE, ex.keep_partitions, protect=ds)
    logger.info("published %s (%d rows, %d today)", staged.final, table.num_rows, today.num_rows)
    return {"table": TABLE, "path": str(staged.final), "rows": table.num_rows, "rows_today": today.num_rows,
            "model": f"{reg.name}/{reg.version}", "fallback_policy": reg.fallback_used, "counts": counts,
            "retention_deleted": deleted, "content_hash": manifest["content_hash"]}


def main(argv: list[str] | None = None) -> int:
    from export.publish import arg_parser, run_main, settings

    parser = arg_parser(__doc__.splitlines()[0])
    parser.add_argument("--max-new-tokens", type=int, default=None, help="override the decoding budget")

    def body(args):
        cfg, root, ds, run_id = settings(args)
        return export_u2q(cfg, root, ds, run_id, args.batch_users, args.min_coverage, args.max_new_tokens)

    return run_main("u2q", body, parser, argv)


if __name__ == "__main__":
    sys.exit(main())

