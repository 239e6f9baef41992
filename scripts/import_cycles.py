#!/usr/bin/env python3
"""File-level import graph of src/: an edge A -> B when file A names a path (`crate::…`,
`super::…`, or a child module of a mod.rs) that resolves to file B. A module's own children
are not its imports: `mod x;` and `pub use x::…` re-exports of a child (a façade) are not
edges, while a child naming its parent's items is. `#[cfg(test)] mod tests` blocks are
ignored; `super::` inside an inline `mod x { … }` block means the file itself. Prints every cycle (strongly connected component of more than one
file) and exits 1 if there is one.

Usage: python3 scripts/import_cycles.py [SRC_DIR]"""
import os, re, sys

src = sys.argv[1] if len(sys.argv) > 1 else os.path.join(os.path.dirname(__file__), "..", "src")
src = os.path.normpath(src)

def module_of(path):
    rel = os.path.relpath(path, src)[:-3].split(os.sep)
    if rel[-1] in ("mod", "lib", "main"):
        rel = rel[:-1]
    return rel

def file_of(mod):
    for cand in (os.path.join(src, *mod) + ".rs", os.path.join(src, *mod, "mod.rs")):
        if os.path.isfile(cand):
            return cand
    if not mod:
        return os.path.join(src, "lib.rs")
    return None

def strip_tests(text):
    out, i = [], 0
    for m in re.finditer(r"#\[cfg\(test\)\]\s*mod\s+\w+\s*\{", text):
        if m.start() < i:
            continue
        out.append(text[i:m.start()])
        depth, j = 1, m.end()
        while j < len(text) and depth:
            depth += {"{": 1, "}": -1}.get(text[j], 0)
            j += 1
        i = j
    out.append(text[i:])
    return "".join(out)

def inline_super(text):
    """Inside inline `mod x { … }` blocks, `super::` names the enclosing file."""
    out, i = [], 0
    for m in re.finditer(r"\bmod\s+\w+\s*\{", text):
        if m.start() < i:
            continue
        depth, j = 1, m.end()
        while j < len(text) and depth:
            depth += {"{": 1, "}": -1}.get(text[j], 0)
            j += 1
        block = text[m.start():j].replace("super::super::", "\0").replace("super::", "self::")
        out.append(text[i:m.start()]); out.append(block.replace("\0", "super::"))
        i = j
    out.append(text[i:])
    return "".join(out)

def strip_comments(text):
    text = re.sub(r"/\*.*?\*/", "", text, flags=re.S)
    return re.sub(r"//[^\n]*", "", text)

files = []
for d, _, fs in os.walk(src):
    files += [os.path.join(d, f) for f in fs if f.endswith(".rs")]

def resolve(segs):
    """Longest module prefix of `segs` that is a file."""
    for k in range(len(segs), -1, -1):
        f = file_of(segs[:k])
        if f:
            return f
    return None

def expand(base, rest):
    """Paths named by a use tree such as `a::{b, c::d}`: yields segment lists."""
    rest = rest.strip()
    m = re.match(r"^([\w:]*?)(::)?\{(.*)\}$", rest, flags=re.S)
    if m:
        head = [s for s in m.group(1).split("::") if s]
        inner, depth, part = m.group(3), 0, ""
        parts = []
        for ch in inner:
            if ch == "," and depth == 0:
                parts.append(part); part = ""
                continue
            depth += {"{": 1, "}": -1}.get(ch, 0)
            part += ch
        parts.append(part)
        for p in parts:
            if p.strip():
                yield from expand(base + head, p)
        return
    segs = [s.split(" as ")[0].strip() for s in rest.split("::") if s.strip()]
    yield base + [s for s in segs if s != "self" and s != "*"]

edges = {}
for f in files:
    me = module_of(f)
    is_mod = os.path.basename(f) in ("mod.rs", "lib.rs", "main.rs")
    here = me if is_mod else me[:-1]  # the module `super` of a child refers to
    text = inline_super(strip_comments(strip_tests(open(f, encoding="utf-8").read())))
    children = set(re.findall(r"^\s*(?:pub(?:\([\w:]+\))?\s+)?mod\s+(\w+)\s*;", text, flags=re.M))
    targets = set()
    paths = [m.group(2) for m in re.finditer(r"\b(pub(?:\([\w:]+\))?\s+)?use\s+([^;]+);", text)
             if not (m.group(1) and m.group(2).split("::")[0].strip() in children)]
    paths += re.findall(r"(?<![\w:])((?:crate|super|self)(?:::\w+)+)", text)
    for p in paths:
        for segs in expand([], p):
            if not segs:
                continue
            if segs[0] == "crate":
                segs = segs[1:]
            elif segs[0] == "self":
                segs = me + segs[1:]
            elif segs[0] == "super":
                base = me[:-1]
                segs = segs[1:]
                while segs and segs[0] == "super":
                    base, segs = base[:-1], segs[1:]
                segs = base + segs
            elif segs[0] in children:
                if p.lstrip().startswith("pub"):
                    continue
                segs = me + segs
            elif not is_mod and file_of(here + segs[:1]) and segs[0] not in ("std", "core"):
                # `use sibling::x` is not valid 2018 Rust from a child file; ignore
                continue
            else:
                continue
            t = resolve(segs)
            if t and t != f:
                targets.add(t)
    edges[f] = targets

# Tarjan's strongly connected components.
index, low, stack, on, sccs, n = {}, {}, [], set(), [], [0]
sys.setrecursionlimit(10000)
def visit(v):
    index[v] = low[v] = n[0]; n[0] += 1
    stack.append(v); on.add(v)
    for w in edges.get(v, ()):
        if w not in index:
            visit(w); low[v] = min(low[v], low[w])
        elif w in on:
            low[v] = min(low[v], index[w])
    if low[v] == index[v]:
        comp = []
        while True:
            w = stack.pop(); on.discard(w); comp.append(w)
            if w == v:
                break
        if len(comp) > 1:
            sccs.append(comp)
for v in files:
    if v not in index:
        visit(v)
rel = lambda p: os.path.relpath(p, src)
for comp in sccs:
    names = sorted(map(rel, comp))
    print("cycle:", " <-> ".join(names))
    for a in comp:
        for b in sorted(edges[a]):
            if b in comp:
                print(f"    {rel(a)} -> {rel(b)}")
print(f"{len(files)} files, {sum(map(len, edges.values()))} edges, {len(sccs)} cycle(s)")
sys.exit(1 if sccs else 0)
