"""Prints the installed versions of lungseg's direct dependencies (setup.cfg's lists).

Run by ``.ci/run`` after the install, so that a CI log shows what a newcomer's fresh install
resolved that day; ``docs/results.md`` keeps the set of the last green run.
"""

from __future__ import annotations

import configparser
import re
from importlib import metadata
from pathlib import Path


def direct_requirements(setup_cfg: Path) -> list[str]:
    """Distribution names of ``install_requires`` and every extra, in setup.cfg's order."""
    parser = configparser.ConfigParser()
    parser.read(setup_cfg)
    lines = parser.get("options", "install_requires").splitlines()
    for extra in parser.options("options.extras_require"):
        lines += parser.get("options.extras_require", extra).splitlines()
    names: list[str] = []
    for line in lines:
        match = re.match(r"\s*([A-Za-z0-9_.-]+)", line)
        if match and match.group(1) not in names:
            names.append(match.group(1))
    return names


def main() -> None:
    root = Path(__file__).resolve().parents[1]
    print("Resolved versions of the direct dependencies:")
    for name in direct_requirements(root / "setup.cfg"):
        try:
            version = metadata.version(name)
        except metadata.PackageNotFoundError:
            version = "(not installed)"
        print(f"  {name}=={version}")
    for name in ("opencv-python-headless", "albucore"):  # what albumentations pulls in
        try:
            print(f"  {name}=={metadata.version(name)} (indirect)")
        except metadata.PackageNotFoundError:
            pass


if __name__ == "__main__":
    main()
