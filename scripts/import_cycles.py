"""Fail if the modules of a crate import each other in a circle.

    python3 scripts/import_cycles.py src storage/src

A module is a file DIR/NAME.rs; it imports every `crate::OTHER` it names
before its `#[cfg(test)]` unit tests (which may look at anything).
Prints each circle found (a -> b -> a) and exits 1 if there is one.
"""

import re
import sys
from pathlib import Path


def imports(src):
    mods = {p.stem: p.read_text().split("#[cfg(test)]")[0] for p in Path(src).glob("*.rs")}
    return {m: set(re.findall(r"crate::(\w+)", text)) & set(mods) - {m} for m, text in mods.items()}


def circles(edges):
    found = []

    def walk(path):
        for d in sorted(edges[path[-1]]):
            if d == path[0]:
                found.append(path + [d])
            elif d not in path and d > path[0]:  # each circle once, from its least module
                walk(path + [d])

    for m in sorted(edges):
        walk([m])
    return found


def main(dirs):
    bad = 0
    for src in dirs:
        for c in circles(imports(src)):
            print(f"{src}: import circle: {' -> '.join(c)}")
            bad += 1
    if not bad:
        print(f"no import circles in {', '.join(dirs)}")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:] or ["src", "storage/src"]))
