"""docs/errors.md lists every user-facing error and warning of the code, and nothing else."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _errors_doc():
    spec = importlib.util.spec_from_file_location("errors_doc", ROOT / "scripts" / "errors_doc.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("errors_doc", module)
    spec.loader.exec_module(module)
    return module


def test_every_error_and_warning_is_in_the_catalogue():
    errors_doc = _errors_doc()
    missing, stale = errors_doc.check()
    assert not missing, ("undocumented messages (run `python scripts/errors_doc.py` and fill in the "
                         "TODO entries of docs/errors.md):\n" + "\n".join(
                             f"{m.module}:{m.line} ({m.kind}) {m.template}" for m in missing))
    assert not stale, "docs/errors.md lists messages no longer in the code:\n" + "\n".join(sorted(stale))
    assert not errors_doc.todo_entries(), errors_doc.todo_entries()


def test_every_entry_says_what_causes_it_and_what_to_do():
    lines = [l for l in (ROOT / "docs" / "errors.md").read_text().splitlines() if l.startswith("- ``")]
    assert len(lines) > 100
    for line in lines:
        cause, _, do = line.partition("**Do:**")
        assert len(cause.split("``")[-1]) > 10 and len(do.strip()) > 3, line


def test_collector_sees_raises_warnings_and_wrapped_messages(tmp_path):
    errors_doc = _errors_doc()
    pkg = tmp_path / "lavise"
    pkg.mkdir()
    (pkg / "m.py").write_text(
        "def f(p, n):\n"
        "    if n:\n"
        "        raise ValueError(f'bad {n} in ' + str(p))\n"
        "    logger.warning('skipped %d of %s', n, p)\n"
        "    raise CheckpointError(p, f'version {n} is newer', 'upgrade')\n"
        "    raise RuntimeError('a bug')\n")
    got = {(m.kind, m.template) for m in errors_doc.collect(pkg)}
    assert got == {("ValueError", "bad {...} in {...}"), ("warning", "skipped {...} of {...}"),
                   ("CheckpointError", "version {...} is newer")}
