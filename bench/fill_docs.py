#!/usr/bin/env python3
"""Put bench/report.py's tables for a result file between the markers in docs/BENCHMARKS.md.

    .venv/bin/python bench/fill_docs.py bench/results/latest-full.json
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import report

DOC = Path(__file__).resolve().parent.parent / "docs" / "BENCHMARKS.md"


def main() -> None:
    lines = report.tables(json.loads(Path(sys.argv[1]).read_text())).split("\n")
    i = next(n for n, line in enumerate(lines) if line.startswith("| XDP program cost"))
    results = "\n".join(lines[:i]).strip()
    hot = "\n".join(lines[i:]).strip()
    doc = DOC.read_text()
    for tag, text in (("results", results), ("hotpath", hot)):
        doc = re.sub(rf"(<!-- {tag}:begin[^>]*-->\n).*?(\n<!-- {tag}:end -->)",
                     lambda m, t=text: m.group(1) + t + m.group(2), doc, flags=re.S)
    DOC.write_text(doc)


if __name__ == "__main__":
    main()
