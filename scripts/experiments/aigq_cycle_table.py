"""The table of ``scripts/experiments/aigq_hindsight_grpo.sh``: Query HR@10/@30 and Category HR@30
of every ``<OUT>/<name>.json`` (run_eval metrics), the policy-free baselines once. Prints Markdown.

    python scripts/experiments/aigq_cycle_table.py OUT
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def main(argv: list[str]) -> int:
    out = Path(argv[0])
    rows, baselines = [], {}
    for path in sorted(out.glob("*.json")):
        payload = json.loads(path.read_text())
        results = payload["results"]
        name = payload["model"]
        for method, groups in results.items():
            g = groups.get("all", groups)
            cells = [g.get("query_hr@10"), g.get("query_hr@30"), g.get("cate_hr@30")]
            if method == name:
                rows.append((path.stem, cells, payload.get("info", {}).get("n_samples")))
            elif method == "hybrid":  # the exported list merges this run's policy: not a baseline
                continue
            else:
                baselines.setdefault(method, (cells, payload.get("info", {}).get("n_samples")))
    fmt = lambda x: "" if x is None else f"{x:.4f}"  # noqa: E731
    print("| run | Query HR@10 | Query HR@30 | Cate HR@30 | samples |")
    print("|---|---|---|---|---|")
    for name, cells, n in rows + [(f"baseline: {m}", c, n) for m, (c, n) in baselines.items()]:
        print(f"| {name} | " + " | ".join(fmt(c) for c in cells) + f" | {n} |")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
