#!/usr/bin/env python3
"""Turns callgrind profiles into a linker symbol-ordering file.

    order.py FIRST.cg [MORE.cg ...] > ferrite.order

Each profile's functions go after those of the profiles before it, each
group by the instructions run in the function itself (its self cost),
most first. Reads callgrind's format as `valgrind --tool=callgrind
--demangle=no --dump-line=no --dump-instr=no` writes it: `fn=(id) name`
names a function (later `fn=(id)` refers to it, and `cfn=` shares the
numbering), cost lines follow it, and the cost line after a `calls=` line
is the call's inclusive cost, not the caller's own.
"""

import re
import sys

NAMED = re.compile(r"^(c?fn)=\((\d+)\)(?: (.*))?$")


def self_costs(path):
    names = {}
    costs = {}
    current = None
    after_call = False
    with open(path, encoding="utf-8", errors="replace") as profile:
        for line in profile:
            line = line.rstrip("\n")
            named = NAMED.match(line)
            if named:
                kind, ident, name = named.groups()
                if name is not None:
                    names[ident] = name
                if kind == "fn":
                    current = names.get(ident)
                continue
            if line.startswith("calls="):
                after_call = True
                continue
            if line and (line[0].isdigit() or line[0] in "+-*"):
                if after_call:
                    after_call = False
                    continue
                fields = line.split()
                if current is not None and len(fields) >= 2:
                    costs[current] = costs.get(current, 0) + int(fields[1])
    return costs


def main(paths):
    seen = set()
    for path in paths:
        costs = self_costs(path)
        added = 0
        for name in sorted(costs, key=lambda n: (-costs[n], n)):
            # Only symbols the linker can place: not valgrind's names for
            # code outside any symbol.
            if name in seen or name.startswith("0x") or "'" in name:
                continue
            seen.add(name)
            added += 1
            print(name)
        print(f"{path}: {len(costs)} functions run, {added} new", file=sys.stderr)


if __name__ == "__main__":
    if len(sys.argv) < 2:
        sys.exit(__doc__)
    main(sys.argv[1:])
