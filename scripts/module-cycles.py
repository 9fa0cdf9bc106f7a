#!/usr/bin/env python3
"""Fails when a module of a crate imports (`crate::x`) a module that imports
it back, directly or through others. Test modules are not counted.

    scripts/module-cycles.py agent/src gate/src ...
"""
import glob
import os
import re
import sys


def graph(src):
    mods = {}
    for f in glob.glob(os.path.join(src, "**", "*.rs"), recursive=True):
        rel = os.path.relpath(f, src)
        if rel in ("lib.rs", "main.rs") or rel.startswith("bin" + os.sep):
            continue
        m = rel.split(os.sep)[0].removesuffix(".rs")
        text = re.split(r"#\[cfg\(test\)\]", open(f, encoding="utf-8").read())[0]
        # Code only: doc and line comments may name any module.
        code = "\n".join(l.split("//")[0] for l in text.splitlines())
        deps = set(re.findall(r"crate::([a-z_][a-z0-9_]*)", code)) - {m}
        mods.setdefault(m, set()).update(deps)
    return mods


def cycles(mods):
    found, state = [], {}

    def dfs(n, path):
        state[n] = 1
        for d in sorted(mods.get(n, ())):
            if state.get(d) == 1:
                found.append(path[path.index(d):] + [d])
            elif d not in state:
                dfs(d, path + [d])
        state[n] = 2

    for m in sorted(mods):
        if m not in state:
            dfs(m, [m])
    return found


bad = False
for src in sys.argv[1:]:
    for c in cycles(graph(src)):
        print(f"error: {src}: modules import each other: {' -> '.join(c)}", file=sys.stderr)
        bad = True
sys.exit(1 if bad else 0)
