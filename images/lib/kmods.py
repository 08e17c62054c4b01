#!/usr/bin/env python3
"""Prints, in load order, the module files (relative to /lib/modules/VERSION) that the
named modules need, dependencies first; built-in and missing optional modules are skipped.
Usage: kmods.py MODULES_DIR NAME... (a NAME ending in '?' may be absent)."""
import os
import sys


def norm(name):
    return name.replace("-", "_")


def main():
    root, names = sys.argv[1], sys.argv[2:]
    deps, by_name = {}, {}
    with open(os.path.join(root, "modules.dep")) as f:
        for line in f:
            path, _, rest = line.partition(":")
            deps[path] = rest.split()
            base = os.path.basename(path).split(".ko")[0]
            by_name[norm(base)] = path
    builtin = set()
    with open(os.path.join(root, "modules.builtin")) as f:
        for line in f:
            builtin.add(norm(os.path.basename(line.strip()).split(".ko")[0]))
    order, seen = [], set()

    def visit(path):
        if path in seen:
            return
        seen.add(path)
        for d in deps.get(path, []):
            visit(d)
        order.append(path)

    for name in names:
        optional = name.endswith("?")
        n = norm(name.rstrip("?"))
        if n in by_name:
            visit(by_name[n])
        elif n in builtin or optional:
            continue
        else:
            sys.exit(f"kmods: no module {n} in {root}")
    print("\n".join(order))


main()
