"""The table of ``scripts/experiments/aigq_update_candidates.sh``: per candidate and seed, the
start policy's and the update's Query HR@10 (95 % user-bootstrap interval) and Category HR@30 on
the same held-out samples, and the difference. Prints Markdown.

    python scripts/experiments/aigq_update_table.py OUT
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path


def _own(path: Path) -> dict:
    payload = json.loads(path.read_text())
    return {**payload["results"][payload["model"]]["all"], "n": payload.get("info", {}).get("n_samples")}


def _hr(m: dict) -> str:
    return f"{m['query_hr@10']:.3f} [{m['query_hr@10_lo']:.3f}, {m['query_hr@10_hi']:.3f}]"


def main(argv: list[str]) -> int:
    out = Path(argv[0])
    print("| candidate | seed | start Query HR@10 [95 %] | update Query HR@10 [95 %] | difference | "
          "Cate HR@30 start / update | samples |")
    print("|---|---|---|---|---|---|---|")
    for path in sorted(out.glob("*-seed*.json")):
        name, seed = re.fullmatch(r"(.+)-seed(\d+)", path.stem).groups()
        start_file = out / f"sft-seed{seed}.json"
        if name == "sft" or not start_file.is_file():
            continue
        start, upd = _own(start_file), _own(path)
        print(f"| {name} | {seed} | {_hr(start)} | {_hr(upd)} | {upd['query_hr@10'] - start['query_hr@10']:+.3f} | "
              f"{start['cate_hr@30']:.3f} / {upd['cate_hr@30']:.3f} | {upd['n']} |")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
