"""Built-in corpora, made from the running interpreter's standard library.

Nothing can be downloaded at run time, but every Python install carries ~14 MB of real,
varied, well-written text: its standard library's source and docstrings.

* ``builtin:stdlib`` (language modelling): every ``.py`` file under ``sysconfig``'s
  ``stdlib`` path, sorted by path, excluding ``site-packages`` and the test suites
  (``test/``, ``tests/``, ``idlelib/idle_test``). One document per file.
* ``builtin:stdlib-cls`` (classification): every function or method of at least three
  lines in the stdlib's top-level *packages* (folders with ``__init__.py``; test suites,
  ``idlelib``, ``lib2to3``, ``distutils`` and the near-identical ``encodings`` codecs
  excluded), labelled with its top-level
  package. The ten packages with most functions become the classes, each capped at
  ``per_class`` samples chosen by a seeded shuffle, so the set is balanced. The text is
  the function's source (first 1,500 characters). The task: which part of the standard
  library does this code come from?
"""

from __future__ import annotations

import ast
import random
import sysconfig
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path

LM_CORPUS = "builtin:stdlib"
CLS_CORPUS = "builtin:stdlib-cls"
_SKIP_PARTS = {"site-packages", "dist-packages", "test", "tests", "idle_test", "__pycache__"}
_SKIP_PACKAGES = {
    "idlelib",
    "lib2to3",
    "distutils",
    "turtledemo",
    "pydoc_data",
    "ensurepip",
    "encodings",
}


def stdlib_root() -> Path:
    return Path(sysconfig.get_paths()["stdlib"])


def stdlib_files() -> list[Path]:
    root = stdlib_root()
    return sorted(
        p
        for p in root.rglob("*.py")
        if not _SKIP_PARTS.intersection(p.relative_to(root).parts) and p.is_file()
    )


def stdlib_documents() -> Iterator[tuple[str, str]]:
    """(doc_id, text) for each stdlib source file."""
    root = stdlib_root()
    for path in stdlib_files():
        text = path.read_text(encoding="utf-8", errors="replace")
        if text.strip():
            yield str(path.relative_to(root)), text


def stdlib_functions(
    n_classes: int = 10, per_class: int = 300, seed: int = 0
) -> list[tuple[str, str]]:
    """(source, package) pairs: a balanced, labelled set with ``n_classes`` classes."""
    root = stdlib_root()
    by_package: dict[str, list[str]] = defaultdict(list)
    for path in stdlib_files():
        rel = path.relative_to(root).parts
        if len(rel) < 2 or rel[0] in _SKIP_PACKAGES:
            continue
        source = path.read_text(encoding="utf-8", errors="replace")
        lines = source.splitlines(keepends=True)
        try:
            tree = ast.parse(source)
        except (SyntaxError, ValueError):
            continue
        for node in ast.walk(tree):
            if (
                isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)
                and node.end_lineno - node.lineno >= 2
            ):
                segment = "".join(lines[node.lineno - 1 : node.end_lineno])
                by_package[rel[0]].append(segment[:1500])
    ranked = sorted(by_package, key=lambda k: (-len(by_package[k]), k))[:n_classes]
    rng = random.Random(seed)
    samples = []
    for package in sorted(ranked):
        items = by_package[package]
        rng.shuffle(items)
        samples.extend((text, package) for text in items[:per_class])
    return samples
