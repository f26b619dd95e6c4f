"""u2q (AIGQ-Direct): every active user's ranked query list, published behind the gates.

For the users with clean behaviour in the ``export.window_days`` days ending at ``ds``, u2q serves
one of two lists (:mod:`export.u2q_serving`; the manifest's ``lists`` says which and why):

- ``hybrid`` (a policy is registered: ``aigq_direct_grpo``, else ``aigq_direct``, the manifest
  records which): the AIGQ-Direct prompt (profile from the clean ``users`` snapshot, history =
  the user's last ``export.max_history`` behaviours before the end of ``ds``, see
  :mod:`export.data`) goes through the policy in batches of ``export.batch_users`` users, greedy by
  default, so a rerun repeats; lists are cleaned and block-listed
  (``aigq_model.generate.generate_lists``), topped up to ``export.u2q_k`` with the
  block-list-filtered popularity list (cold-start users get that list without a model call), then
  merged with the user's own recent searches (and a heuristic list) by the merge policy fitted
  on valid (:mod:`aigq_model.hybrid`).
- ``heuristic`` (no policy registered: the gate found none whose exported list beat the best
  heuristic): every user gets the best heuristic list of the newest evaluation, no model call.

Rows: one per (user, rank), ``source`` = ``model``, ``history`` (the user's own search),
``heuristic`` or ``fallback`` (popularity top-up); ``model_name`` = the policy, or
``heuristic:<name>`` in heuristic mode.

Retention (the "most recent M runs" of each user): partition ``ds`` is a merged snapshot of
this run's lists plus every user's earlier runs carried from the newest published partition
before ``ds``, keeping each user's ``export.u2q_keep_runs`` newest runs (by their ``run_ds``, the
column naming the run's date: the Hive partition column ``ds`` is never a column in the files;
earlier runs' queries blocked by today's block-list are dropped and their ranks renumbered).
Serving reads the newest partition only; older partitions beyond ``export.keep_partitions``
are deleted. Re-running a ds rebuilds it from the same predecessor, so it repeats exactly;
backfilling dates in order rebuilds the chain.

Gates (on this run's rows and on the merged table): coverage of the active users, null rates,
duplicate (user, run_ds, rank) and (user, run_ds, query), ranks in [1, k], zero block-listed queries,
list lengths in [``min_list_len``, k], at most M runs per user.

Shards (``nightly_export`` maps one task per shard): ``--shard I --num-shards N --stage-only``
generates the lists of shard I's active users (``crc32(user_id) mod N``, :mod:`export.data`) into
its part under ``exports/_staging/u2q/ds=<ds>/<run>/`` (:mod:`export.staging`); then
``--publish-parts --num-shards N`` merges the N parts, carries the previous runs and runs the
same gates on the whole table as above before publishing. Every user's list depends on their own
history only (greedy decoding; the generation batches differ with N but left-padded greedy
decoding gave the same tokens in the tests), so the published rows and ``content_hash`` match an
unsharded run's.

Usage::

    python -m export.u2q --ds 2026-11-03 [--data-root R] [--config F] [--profile P] [--run-id ID]
        [--batch-users N] [--min-coverage X] [--max-new-tokens N]
        [--shard I --num-shards N --stage-only | --publish-parts --num-shards N]
"""

from __future__ import annotations

import dataclasses
import logging
import sys
import time

import pyarrow as pa

from aigq_model.generate import generate_lists
from common.arrow_io import read_partition
from common.paths import published_ds
from common.publish import staged_partitions
from common.schemas import U2Q, UNIQUE_KEYS
from export import gates, models
from export.data import (
    ExportConfig,
    anchor_time,
    build_samples,
    check_shard,
    chunks,
    load_inputs,
    users_digest,
)
from export.publish import (
    add_shard_args,
    apply_retention,
    arg_parser,
    content_hash,
    fault_hook,
    run_main,
    settings,
    shard_fault_hook,
    shard_mode,
)
from export.staging import (
    AREA,
    StagedTable,
    merged_parts,
    remove_staging,
    shard_summary,
    staged_part,
    sum_counts,
)
from export.u2q_serving import HeuristicLists, heuristic_lists, hybrid_lists, needed_heuristics, plan_serving

logger = logging.getLogger(__name__)

TABLE = "u2q"
POLICIES = ("aigq_direct_grpo", "aigq_direct")
KEYS = list(UNIQUE_KEYS[TABLE])  # user_id, run_ds, rank


def u2q_rows(user_ids, lists, sources, ds: str, run_id: str, model_name: str, model_version: str,
             generated_at) -> list[dict]:
    """One row per (user, rank) of the lists; ``source`` says who filled the slot."""
    rows = []
    for uid, queries, srcs in zip(user_ids, lists, sources, strict=True):
        for r, (q, src) in enumerate(zip(queries, srcs, strict=True)):
            rows.append({"user_id": uid, "run_ds": ds, "run_id": run_id, "rank": r + 1, "query": q,
                         "source": src, "model_name": model_name, "model_version": model_version,
                         "generated_at": generated_at})
    return rows


def carry_previous_runs(previous: pa.Table | None, ds: str, active: set[str], keep_runs: int,
                        blocked=None) -> pa.Table:
    """Earlier runs to keep beside today's: each user's newest runs before ``ds`` (``keep_runs - 1``
    for users in today's run, ``keep_runs`` for the others), block-listed queries dropped and
    ranks renumbered within each (user, run_ds).

    >>> import datetime as dt
    >>> from common.schemas import U2Q
    >>> t = dt.datetime(2026, 11, 2, tzinfo=dt.UTC)
    >>> prev = pa.Table.from_pylist([dict(user_id=u, run_ds=d, run_id="r", rank=1, query="q", source="model",
    ...     model_name="m", model_version="v", generated_at=t) for u in ("a", "b") for d in ("2026-10-30",
    ...     "2026-10-31", "2026-11-01")], schema=U2Q)
    >>> out = carry_previous_runs(prev, "2026-11-01", {"a"}, 2)
    >>> sorted((r["user_id"], r["run_ds"]) for r in out.to_pylist())
    [('a', '2026-10-31'), ('b', '2026-10-30'), ('b', '2026-10-31')]
    """
    if previous is None or previous.num_rows == 0:
        return U2Q.empty_table()
    df = previous.to_pandas()
    df = df[df["run_ds"] < ds]
    if blocked is not None and blocked:
        df = df[[not blocked.blocks(q) for q in df["query"]]]
    if df.empty:
        return U2Q.empty_table()
    runs = df[["user_id", "run_ds"]].drop_duplicates().sort_values(["user_id", "run_ds"], ascending=[True, False])
    runs["age"] = runs.groupby("user_id").cumcount()
    runs["limit"] = [keep_runs - 1 if u in active else keep_runs for u in runs["user_id"]]
    runs = runs[runs["age"] < runs["limit"]][["user_id", "run_ds"]]
    df = df.merge(runs, on=["user_id", "run_ds"], how="inner")
    df = df.sort_values(["user_id", "run_ds", "rank"], kind="stable")
    df["rank"] = (df.groupby(["user_id", "run_ds"]).cumcount() + 1).astype("int32")
    return pa.Table.from_pandas(df.reset_index(drop=True), schema=U2Q, preserve_index=False)


def previous_snapshot(root, ds: str) -> tuple[pa.Table | None, str | None]:
    """The newest published u2q partition strictly before ``ds``.

    A partition written before the run's date was renamed ``run_ds`` holds it as ``ds`` (which
    clashed with the Hive partition column): it is read as ``run_ds``, so the first run after the
    upgrade carries the earlier runs as before.
    """
    before = [d for d in published_ds(root, AREA, TABLE) if d < ds]
    if not before:
        return None, None
    table = read_partition(root, AREA, TABLE, before[-1])
    if "run_ds" not in table.column_names and "ds" in table.column_names:
        table = table.rename_columns(["run_ds" if c == "ds" else c for c in table.column_names])
    return table.select(U2Q.names).cast(U2Q), before[-1]


def gate_u2q(table: pa.Table, today: pa.Table, active, ex, blocked) -> dict:
    return gates.run_gates({
        "coverage": gates.check_coverage(today, active, ex.min_coverage),
        "null_rates": gates.check_null_rates(table, ex.max_null_rate),
        "duplicate_keys": gates.check_duplicates(table, KEYS) + gates.check_duplicates(
            table, ["user_id", "run_ds", "query"]),
        "rank_range": gates.check_range(table, "rank", 1, ex.u2q_k),
        "blocklist": gates.check_blocklist(table, blocked),
        "list_lengths": gates.check_list_lengths(today, ["user_id"], ex.min_list_len, ex.u2q_k),
        "runs_per_user": gates.check_list_lengths(
            table.group_by(["user_id", "run_ds"]).aggregate([]), ["user_id"], 1, ex.u2q_keep_runs),
    })


class U2QGeneration:
    """The policy, decoding settings and inputs of one run (or one shard of it), and the loop that
    writes the lists of the run's active users batch by batch."""

    def __init__(self, cfg: dict, root: str, ds: str, run_id: str, ex, max_new_tokens: int | None = None,
                 shard: tuple[int, int] | None = None):
        self.ds, self.run_id, self.ex = ds, run_id, ex
        self.reg = reg = models.resolve_registered(root, POLICIES, ds)
        self.plan = plan_serving(cfg, root, reg, POLICIES, ds)
        logger.info("u2q serves %s: %s", self.plan.mode, self.plan.reason)
        if reg is not None:
            if reg.fallback_used:
                logger.warning("no registered %s: using %s/%s", reg.preferred, reg.name, reg.version)
            self.style, self.max_history = models.policy_settings(reg)
            self.model, self.tok = models.load_policy(reg)
        self.decoding, self.gen_batch = models.decoding(cfg, ex.generate, max_new_tokens)
        self.blocked = models.blocklist(cfg, ex.blocklist)
        self.inputs = inputs = load_inputs(root, ds, ex, shard=shard)
        self.popular = models.popular_queries(inputs.events, ds, ex.u2q_k, self.blocked)
        # the window's searched queries, when aigq.generate.known_queries constrains decoding
        self.known = models.known_queries(self.decoding, inputs, ds, root) if reg is not None else None
        self.heuristics = {name: HeuristicLists(name, inputs.events, ex.u2q_k, self.popular, self.blocked)
                           for name in needed_heuristics(self.plan)}
        self.generated_at = anchor_time(ds)
        self.model_name, self.model_version = (reg.name, reg.version) if reg is not None else \
            (f"heuristic:{self.plan.heuristic}", ds)
        self.manifest = {"run_id": run_id, "lists": self.plan.to_dict(),
                         "model": {"name": reg.name, "version": reg.version, "path": str(reg.path),
                                   "preferred": reg.preferred, "fallback_used": reg.fallback_used} if reg else
                         {"name": None, "version": None, "path": None, "preferred": POLICIES[0], "fallback_used": False},
                         "decoding": dataclasses.asdict(self.decoding), "window_days": ex.window_days,
                         "event_days": inputs.event_days, "users_ds": inputs.users_ds, "items_ds": inputs.items_ds,
                         "keep_runs": ex.u2q_keep_runs}
        self.counts = {"active_users": len(inputs.active), "model_rows": 0, "history_rows": 0, "heuristic_rows": 0,
                       "fallback_rows": 0, "cold_start_users": 0, "malformed": 0}

    def run(self, write, after_batch=None) -> dict:
        """Generate every active user's list, ``write(rows)`` per batch; returns the counts."""
        ex, inputs, counts = self.ex, self.inputs, self.counts
        n_batches = (len(inputs.active) + ex.batch_users - 1) // ex.batch_users
        t0 = time.perf_counter()
        for i, users in enumerate(chunks(inputs.active, ex.batch_users)):
            samples = build_samples(inputs.log, users, inputs.profile, self.ds, ex.max_history)
            heuristic = {name: h.lists(samples) for name, h in self.heuristics.items()}
            if self.reg is None:  # mode heuristic: the best heuristic list, no model call
                served = heuristic_lists(self.plan, samples, heuristic, ex.u2q_k, self.popular, self.blocked)
                rows = u2q_rows(users, served, [["heuristic"] * len(h) for h in served], self.ds, self.run_id,
                                self.model_name, self.model_version, self.generated_at)
                self._write(rows, write, [])
                self._progress(i, n_batches, users, t0, after_batch)
                continue
            gens = generate_lists(self.model, self.tok, samples, kind="direct", k=ex.u2q_k,
                                  batch_size=self.gen_batch, decoding=self.decoding, fallback=self.popular,
                                  blocklist=self.blocked, style=self.style, max_history=self.max_history,
                                  known_queries=self.known)
            lists, sources = hybrid_lists(gens, samples, heuristic, ex.u2q_k, self.plan.merge, self.blocked)
            rows = u2q_rows(users, lists, sources, self.ds, self.run_id, self.model_name, self.model_version,
                            self.generated_at)
            self._write(rows, write, gens)
            self._progress(i, n_batches, users, t0, after_batch)
        return counts

    def _write(self, rows: list[dict], write, gens) -> None:
        write(rows)
        for source in ("model", "history", "heuristic", "fallback"):
            self.counts[f"{source}_rows"] += sum(r["source"] == source for r in rows)
        self.counts["cold_start_users"] += sum(not g.model_called for g in gens)
        self.counts["malformed"] += sum(g.malformed for g in gens if g.model_called)

    def _progress(self, i: int, n_batches: int, users, t0: float, after_batch) -> None:
        done = min((i + 1) * self.ex.batch_users, len(self.inputs.active))
        logger.info("u2q batch %d/%d: %d users (%d/%d, %.1f users/s)", i + 1, n_batches, len(users), done,
                    len(self.inputs.active), done / max(time.perf_counter() - t0, 1e-9))
        fault_hook(i)
        if after_batch is not None:
            after_batch(i)


def _carry_gate_publish(staged, root: str, ds: str, today: pa.Table, active, ex, blocked, manifest: dict,
                        counts: dict, t0: float) -> tuple[pa.Table, pa.Table]:
    """Inside ``staged_partitions``: add the previous runs to today's staged rows, run the gates on
    the merged table, complete the manifest and raise :class:`export.gates.GateFailed` on a failed
    gate (nothing published). Returns ``(table, carried)``."""
    previous, previous_ds = previous_snapshot(root, ds)
    carried = carry_previous_runs(previous, ds, set(active), ex.u2q_keep_runs, blocked)
    staged.write(carried)
    table = staged.read()
    results = gate_u2q(table, today, active, ex, blocked)
    manifest.update(counts=counts, rows=table.num_rows, rows_today=today.num_rows,
                    rows_carried=carried.num_rows, previous_ds=previous_ds, gates=results,
                    content_hash=content_hash(table, KEYS), generation_seconds=round(time.perf_counter() - t0, 2))
    gates.enforce(TABLE, results)
    return table, carried


def _result(staged, table: pa.Table, today: pa.Table, manifest: dict, deleted, **extra) -> dict:
    model, serving = manifest["model"], manifest["lists"]
    return {"table": TABLE, "path": str(staged.final), "rows": table.num_rows, "rows_today": today.num_rows,
            "model": f"{model['name']}/{model['version']}" if model["name"] else f"heuristic:{serving['heuristic']}",
            "mode": serving["mode"], "fallback_policy": model["fallback_used"],
            "counts": manifest["counts"], "retention_deleted": deleted, "content_hash": manifest["content_hash"],
            **extra}


def export_u2q(cfg: dict, root: str, ds: str, run_id: str, batch_users: int | None = None,
               min_coverage: float | None = None, max_new_tokens: int | None = None) -> dict:
    """Generate, gate and publish ``exports/u2q/ds=<ds>``; returns the manifest summary."""
    ex = ExportConfig.from_config(cfg, batch_users=batch_users, min_coverage=min_coverage)
    gen = U2QGeneration(cfg, root, ds, run_id, ex, max_new_tokens)
    manifest = gen.manifest
    t0 = time.perf_counter()
    with staged_partitions() as batch:
        staged = StagedTable(batch, root, TABLE, ds, manifest)
        counts = gen.run(staged.write)
        today = staged.read()
        table, _ = _carry_gate_publish(staged, root, ds, today, gen.inputs.active, ex, gen.blocked, manifest, counts,
                                       t0)
    deleted = apply_retention(root, TABLE, ex.keep_partitions, protect=ds)
    logger.info("published %s (%d rows, %d today)", staged.final, table.num_rows, today.num_rows)
    return _result(staged, table, today, manifest, deleted)


def stage_u2q_shard(cfg: dict, root: str, ds: str, run_id: str, shard: int, num_shards: int,
                    batch_users: int | None = None, max_new_tokens: int | None = None) -> dict:
    """Generate the lists of shard ``shard`` of ``num_shards``'s active users into its staging part
    (no gates, nothing published); returns the part's summary."""
    shard, num_shards = check_shard(shard, num_shards)
    ex = ExportConfig.from_config(cfg, batch_users=batch_users)
    gen = U2QGeneration(cfg, root, ds, run_id, ex, max_new_tokens, shard=(shard, num_shards))
    manifest = {**gen.manifest, "users": len(gen.inputs.active), "users_sha256": users_digest(gen.inputs.active),
                "active_total": gen.inputs.active_total}
    t0 = time.perf_counter()
    with staged_part(root, TABLE, ds, run_id, shard, num_shards, manifest) as part:
        counts = gen.run(lambda rows: part.write(TABLE, rows),
                         after_batch=lambda i: shard_fault_hook(TABLE, shard) if i == 0 else None)
        manifest.update(counts=counts, generation_seconds=round(time.perf_counter() - t0, 2))
    return {"table": TABLE, "part": str(part.final), "shard": shard, "num_shards": num_shards,
            "users": manifest["users"], "rows": part.rows.get(TABLE, 0), "counts": counts,
            "model": f"{gen.model_name}/{gen.model_version}", "mode": gen.plan.mode}


#: Part manifest keys every part of a run must share (same policy, decoding and inputs).
PART_SAME = ("model", "lists", "decoding", "window_days", "event_days", "users_ds", "items_ds", "active_total")


def publish_u2q_parts(cfg: dict, root: str, ds: str, run_id: str, num_shards: int,
                      min_coverage: float | None = None) -> dict:
    """Merge the run's ``num_shards`` complete parts, carry the previous runs, run the gates of
    :func:`export_u2q` on the whole table and publish ``exports/u2q/ds=<ds>`` (all parts or
    nothing); then remove the run's staging folder. Loads no model."""
    t0 = time.perf_counter()
    ex, parts, active, first = merged_parts(cfg, root, TABLE, ds, run_id, num_shards, PART_SAME, min_coverage)
    blocked = models.blocklist(cfg, ex.blocklist)
    manifest = {"run_id": run_id, **{k: first.get(k) for k in ("model", "lists", "decoding", "window_days", "event_days",
                                                                "users_ds", "items_ds")},
                "keep_runs": ex.u2q_keep_runs, "shards": shard_summary(parts)}
    counts = sum_counts(parts)
    with staged_partitions() as batch:
        staged = StagedTable(batch, root, TABLE, ds, manifest)
        for part in parts:
            staged.write(part.read(TABLE))
        today = staged.read()
        table, _ = _carry_gate_publish(staged, root, ds, today, active, ex, blocked, manifest, counts, t0)
        manifest["publish_seconds"] = manifest["generation_seconds"]  # merge + carry + gates
        manifest["generation_seconds"] = round(sum(p.manifest.get("generation_seconds") or 0 for p in parts), 2)
    deleted = apply_retention(root, TABLE, ex.keep_partitions, protect=ds)
    remove_staging(root, TABLE, ds, run_id)
    logger.info("published %s from %d parts (%d rows, %d today)", staged.final, len(parts), table.num_rows,
                today.num_rows)
    return _result(staged, table, today, manifest, deleted, shards=len(parts))


def main(argv: list[str] | None = None) -> int:
    parser = add_shard_args(arg_parser(__doc__.splitlines()[0]))
    parser.add_argument("--max-new-tokens", type=int, default=None, help="override the decoding budget")

    def body(args):
        mode = shard_mode(args, parser)
        cfg, root, ds, run_id = settings(args)
        if mode == "stage":
            return stage_u2q_shard(cfg, root, ds, run_id, args.shard, args.num_shards, args.batch_users,
                                   args.max_new_tokens)
        if mode == "publish":
            return publish_u2q_parts(cfg, root, ds, run_id, args.num_shards, args.min_coverage)
        return export_u2q(cfg, root, ds, run_id, args.batch_users, args.min_coverage, args.max_new_tokens)

    return run_main("u2q", body, parser, argv)


if __name__ == "__main__":
    sys.exit(main())

