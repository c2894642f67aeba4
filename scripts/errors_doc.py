"""Keeps docs/errors.md in step with the code: every user-facing error and warning.

Collects the message template of every ``raise SomethingError(...)`` and every
``logger.warning(...)`` under ``src/lavise`` (f-string fields and ``%s`` arguments
become ``{...}``) and checks each appears in ``docs/errors.md``. Run it to add the
messages the catalogue lacks (as ``TODO`` entries, under their module) and to list
entries whose message is gone from the code::

    python scripts/errors_doc.py          # update docs/errors.md in place
    python scripts/errors_doc.py --check  # exit 1 if the catalogue and the code disagree

``tests/test_errors_doc.py`` runs the check.
"""

from __future__ import annotations

import argparse
import ast
import re
import sys
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "src" / "lavise"
DOC = ROOT / "docs" / "errors.md"
FIELD = "{...}"
# Exceptions whose message is not their first argument: (index of the message argument).
_MESSAGE_ARG = {"CheckpointError": 1, "CacheDamaged": 1}
# Internal errors that signal a bug in lavise, not a user's mistake.
_INTERNAL = {"RuntimeError", "AssertionError", "NotImplementedError", "StopIteration", "TypeError"}


@dataclass(frozen=True)
class Message:
    module: str
    kind: str  # exception class name, or "warning"
    template: str
    line: int


def _template(node: ast.AST) -> str | None:
    """The text of a message expression, with every computed part as ``{...}``."""
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return node.value
    if isinstance(node, ast.JoinedStr):
        return "".join(v.value if isinstance(v, ast.Constant) else FIELD for v in node.values)
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Add):
        left, right = _template(node.left), _template(node.right)
        return (left if left is not None else FIELD) + (right if right is not None else FIELD)
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Mod):  # "..." % args
        left = _template(node.left)
        return None if left is None else _percent(left)
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "unknown_choice":
        return "unknown {...} {...} (closest: {...})"
    return None


def _percent(text: str) -> str:
    return re.sub(r"%(?:\([^)]*\))?[-+ #0]*\d*(?:\.\d+)?[sdrfgixXe]", FIELD, text)


def _name(func: ast.AST) -> str:
    if isinstance(func, ast.Name):
        return func.id
    if isinstance(func, ast.Attribute):
        return func.attr
    return ""


def collect(src: Path = SRC) -> list[Message]:
    """Every user-facing error and warning message template under ``src``."""
    out: list[Message] = []
    for path in sorted(src.rglob("*.py")):
        module = "lavise." + ".".join(path.relative_to(src).with_suffix("").parts)
        module = module.removesuffix(".__init__")
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            call, kind = None, None
            if isinstance(node, ast.Raise) and isinstance(node.exc, ast.Call):
                call, kind = node.exc, _name(node.exc.func)
                if kind in _INTERNAL or not (kind.endswith(("Error", "Exception")) or kind in _MESSAGE_ARG):
                    continue
            elif (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                  and node.func.attr == "warning" and _name(node.func.value) in ("logger", "logging")):
                call, kind = node, "warning"
            if call is None:
                continue
            index = _MESSAGE_ARG.get(kind, 0)
            if len(call.args) <= index:
                continue
            text = _template(call.args[index])
            if text is None or not text.strip(FIELD + " ."):
                continue
            if kind == "warning":
                text = _percent(text)
            out.append(Message(module, kind, text, node.lineno))
    return sorted(out, key=lambda m: (m.module, m.line))


_ENTRY = re.compile(r"^- ``(.+?)``")


def documented(doc: Path = DOC) -> set[str]:
    """Message templates the catalogue documents (the ``- ``template`` ...`` entries)."""
    if not doc.is_file():
        return set()
    return {m.group(1) for line in doc.read_text(encoding="utf-8").splitlines() if (m := _ENTRY.match(line))}


def todo_entries(doc: Path = DOC) -> list[str]:
    """Entries still marked TODO."""
    if not doc.is_file():
        return []
    return [m.group(1) for line in doc.read_text(encoding="utf-8").splitlines()
            if (m := _ENTRY.match(line)) and "TODO" in line]


def check(src: Path = SRC, doc: Path = DOC) -> tuple[list[Message], set[str]]:
    """(messages missing from the catalogue, catalogue entries no longer in the code)."""
    msgs = collect(src)
    have = documented(doc)
    missing = [m for m in msgs if m.template not in have]
    stale = have - {m.template for m in msgs}
    return missing, stale


def update(src: Path = SRC, doc: Path = DOC) -> int:
    """Adds TODO entries for undocumented messages under their module's heading."""
    missing, stale = check(src, doc)
    lines = doc.read_text(encoding="utf-8").splitlines() if doc.is_file() else ["# Errors and warnings", ""]
    seen: set[str] = set()
    for m in missing:
        if m.template in seen:
            continue
        seen.add(m.template)
        heading = f"## `{m.module}`"
        if heading not in lines:
            lines += ["", heading, ""]
        at = lines.index(heading) + 1
        while at < len(lines) and not lines[at].startswith("## "):
            at += 1
        while lines[at - 1] == "":
            at -= 1
        lines.insert(at, f"- ``{m.template}`` ({m.kind}) TODO: cause. **Do:** remedy.")
    doc.write_text("\n".join(lines) + "\n", encoding="utf-8")
    for s in sorted(stale):
        print(f"no longer in the code: {s}")
    print(f"added {len(seen)} entries to {doc}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="only check; exit 1 on any difference")
    args = parser.parse_args(argv)
    if not args.check:
        return update()
    missing, stale = check()
    for m in missing:
        print(f"undocumented: {m.module}:{m.line}: ({m.kind}) {m.template}")
    for s in sorted(stale):
        print(f"no longer in the code: {s}")
    for t in todo_entries():
        print(f"TODO: {t}")
    return 1 if missing or stale or todo_entries() else 0


if __name__ == "__main__":
    sys.exit(main())
