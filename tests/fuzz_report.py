"""Summarise a fuzz log (``PYANALYZER_FUZZ_LOG``): cases, exits and escapes per family.

PYANALYZER_FUZZ_EXAMPLES=200 PYANALYZER_FUZZ_LOG=/tmp/fuzz.jsonl python -m pytest tests/test_fuzz.py
python tests/fuzz_report.py /tmp/fuzz.jsonl
"""

from __future__ import annotations

import json
import sys
from collections import Counter


def main(path: str) -> int:
    rows: dict[str, Counter[str]] = {}
    escapes = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            o = json.loads(line)
            row = rows.setdefault(o["family"], Counter())
            row["cases"] += 1
            if o["escape"]:
                row["escapes"] += 1
                escapes.append(o)
            else:
                row[f"exit {o['code']}"] += 1
    print(f"{'family':10} {'cases':>6} {'exit 0':>7} {'exit 2':>7} {'escapes':>8}")
    for fam, row in sorted(rows.items()):
        print(f"{fam:10} {row['cases']:6} {row['exit 0']:7} {row['exit 2']:7} {row['escapes']:8}")
    total = Counter()
    for row in rows.values():
        total.update(row)
    print(
        f"{'all':10} {total['cases']:6} {total['exit 0']:7} {total['exit 2']:7} {total['escapes']:8}"
    )
    for o in escapes[:20]:
        print(f"  ESCAPE [{o['family']}] {o['note']}: {' '.join(o['args'])} -> {o['escape']}")
    return 1 if escapes else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
