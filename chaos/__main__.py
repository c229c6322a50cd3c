"""``python -m chaos report FILE``: the table of the tallies a `make chaos` run recorded."""

from __future__ import annotations

import sys
from pathlib import Path

from chaos.tally import report

if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "report":
        print(report(Path(sys.argv[2])))
    else:
        print("usage: python -m chaos report FILE", file=sys.stderr)
        sys.exit(2)
