"""Nightly export: what search serving reads every morning.

Tables (schemas in ``common.schemas``), each under ``<root>/exports/<table>/ds=<ds>/``:

- ``u2q`` (:mod:`export.u2q`, AIGQ-Direct): user -> ranked queries from the registered policy
  (``aigq_direct_grpo``, else ``aigq_direct``); cold-start users get the popularity list.
  The table is a *merged snapshot*: partition ``ds`` holds the lists of that run plus, for every
  user, their earlier lists carried over from the previous published partition, so each user
  keeps their most recent ``export.u2q_keep_runs`` (M) runs, including users not active today.
  Serving reads the newest partition only.
- ``x2q`` (:mod:`export.x2q`, AIGQ-Think): trigger (item id or query) -> ranked queries scored
  ``S = alpha * S_rel + (1 - alpha) * S_eff``.
- ``u2i`` and ``user_interest_embedding`` (:mod:`export.u2i`, KARMA): top-K items per active
  user from the faiss index (history items filtered) and the user interest vectors.

Every table is written batch by batch into a hidden staging sibling of its partition
(``common.publish.PartitionBatch``), checked by the gates of :mod:`export.gates`, and only then
renamed into place with ``_manifest.json`` (model versions, counts, gate results, run id,
content hash) and ``_SUCCESS``. Each entry point publishes its own tables atomically and
independently (``u2i`` and ``user_interest_embedding`` together), so a failing Think export
never holds back the u2q lists. A SIGKILL at any point leaves at most a hidden ``.tmp-*``
folder, removed by the next run. Older partitions beyond ``export.keep_partitions`` are
deleted after a successful publish.

Sharded (``runtime.export_shards`` > 1, or the DAG's ``shards`` Param): ``u2q`` and ``u2i`` run
one process per shard of the active users (``crc32(user_id) mod N``), each staging its part under
``exports/_staging/<table>/ds=<ds>/<run>/``; ``--publish-parts`` then merges exactly N parts, gates
the whole table and publishes it as above — all parts or nothing.
"""

from common.hf_offline import offline_defaults

# Before any module of this package imports transformers (huggingface_hub reads these at import).
offline_defaults()
