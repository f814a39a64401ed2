"""CONTRIBUTING's "Write a strategy plugin" section as files: each block introduced by a line
"File `PATH`:" is that file of the guide's package, whole."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "tomeplug-example-strategy"
FILE_BLOCK = re.compile(
    r"^ *File `(?P<path>[^`]+)`:\n\n(?P<indent> *)```\w*\n(?P<body>.*?)^(?P=indent)```$", re.M | re.S
)


def section() -> str:
    """The text of the strategy guide, up to the next second-level heading."""
    text = (ROOT / "CONTRIBUTING.md").read_text()
    start = text.index("## Write a strategy plugin")
    return text[start : text.index("\n## ", start + 1)]


def guide_files() -> dict[str, str]:
    """{relative path: content} of every file the guide shows, in order."""
    files = {}
    for match in FILE_BLOCK.finditer(section()):
        indent = len(match["indent"])
        lines = match["body"].splitlines(keepends=True)
        files[match["path"]] = "".join(line[indent:] if line.strip() else "\n" for line in lines)
    return files


def assemble(dest: Path) -> Path:
    """Write the guide's package into ``dest`` exactly as the guide shows it; returns ``dest``."""
    for path, text in guide_files().items():
        (dest / path).parent.mkdir(parents=True, exist_ok=True)
        (dest / path).write_text(text)
    return dest
