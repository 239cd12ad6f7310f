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
* ``builtin:stdlib-doc`` (sequence to sequence, ``stdlib_docstring_pairs``): every
  function or method in the same files as ``builtin:stdlib`` (minus the packages
  ``builtin:stdlib-cls`` leaves out) whose docstring's first line, stripped, is 8 to 120
  characters and whose body has a statement besides the docstring. The source is the
  function's code from its ``def`` line to its last line, with the docstring's lines
  removed, dedented and cut to 1,500 characters; the target is that first docstring line.
  Its id is ``path:line:name``, which the train/validation split hashes. The task:
  summarise what this code does, in the words its author chose.
"""

from __future__ import annotations

import ast
import random
import sysconfig
import textwrap
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path

LM_CORPUS = "builtin:stdlib"
CLS_CORPUS = "builtin:stdlib-cls"
S2S_CORPUS = "builtin:stdlib-doc"
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


def stdlib_docstring_pairs() -> list[tuple[str, str, str]]:
    """(id, code without its docstring, first docstring line) for each documented function."""
    root = stdlib_root()
    pairs = []
    for path in stdlib_files():
        rel = path.relative_to(root)
        if rel.parts[0] in _SKIP_PACKAGES:
            continue
        source = path.read_text(encoding="utf-8", errors="replace")
        try:
            tree = ast.parse(source)
        except (SyntaxError, ValueError):
            continue
        lines = source.splitlines(keepends=True)
        for node in ast.walk(tree):
            pair = _code_and_summary(node, lines) if _documented(node) else None
            if pair is not None:
                pairs.append((f"{rel.as_posix()}:{node.lineno}:{node.name}", *pair))
    return pairs


def _documented(node: ast.AST) -> bool:
    return isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and bool(
        ast.get_docstring(node)
    )


def _code_and_summary(node: ast.FunctionDef, lines: list[str]) -> tuple[str, str] | None:
    summary = ast.get_docstring(node).strip().splitlines()[0].strip()
    doc = node.body[0]
    if not 8 <= len(summary) <= 120 or len(node.body) < 2 or doc.lineno == node.lineno:
        return None
    kept = lines[node.lineno - 1 : doc.lineno - 1] + lines[doc.end_lineno : node.end_lineno]
    return textwrap.dedent("".join(kept))[:1500], summary
