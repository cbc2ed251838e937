"""Generated parts of the README, kept in step by a test.

``python -m final_problem.readme`` rewrites each generated block of README.md (between
``<!-- NAME:begin -->`` and ``<!-- NAME:end -->``) from its source.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path
from typing import Callable

from final_problem import settings


def blocks() -> dict[str, Callable[[], str]]:
    """Generated block name to the function that writes it."""
    return {"settings": settings.reference_markdown}


def render(text: str) -> str:
    """``text`` with every generated block written anew."""
    for name, make in blocks().items():
        pattern = re.compile(rf"(<!-- {name}:begin -->\n).*?(<!-- {name}:end -->)", re.S)
        if not pattern.search(text):
            raise ValueError(f"README has no <!-- {name}:begin --> ... <!-- {name}:end --> block")
        body = make()
        text = pattern.sub(lambda m, body=body: m.group(1) + body + m.group(2), text)
    return text


def main(argv: list[str] | None = None) -> int:
    path = Path(argv[0] if argv else "README.md")
    path.write_text(render(path.read_text()))
    print(f"{path}: generated blocks rewritten")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
