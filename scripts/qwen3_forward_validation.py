"""The old command, kept for people used to it: builds the Qwen3-1.7B-Base reference.

It now runs the reproducible generator on specs/qwen3-1.7b-base.toml (pinned revision, verified
files, determinism profile, manifest). Extra arguments go to `refgen generate`, e.g. --output-dir.
"""

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from refgen.cli import main  # noqa: E402

if __name__ == "__main__":
    args = sys.argv[1:]
    if "--spec" not in args:
        args = ["--spec", str(ROOT / "specs" / "qwen3-1.7b-base.toml"), *args]
    sys.exit(main(["generate", *args]))
