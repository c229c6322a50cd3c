"""The docs name only what exists: every file, module, class attribute, function, ``LVM_*``
setting, ``make`` target and ``lvmq`` command that README.md and docs/*.md name, and every file
path a source file's docstrings or comments cite. `make lint` runs it (``python -m lvmq.docrefs``);
tests/test_docs.py checks that it passes and that it catches each kind of stale name.

What counts as a name, in a page's code spans (`like this`):
- a path with a slash or a known suffix (``worker/loop.py``, ``wire/scripts/``, ``claim.lua``);
- a dotted name under one of the project's packages (``worker.loop.BatchLoop.retry_redis``),
  imported and looked up attribute by attribute;
- ``Class.attribute`` for a class defined in the project (found by reading the source, not by
  importing it), and ``function()`` for a function or method defined in it;
- ``make target`` and ``lvmq command [subcommand]``.
Anywhere in a page: ``LVM_NAME``, a setting or a variable the project's own files read.
"""

from __future__ import annotations

import ast
import importlib
import os
import re
import sys
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("config", "wire", "lvm", "training", "producer", "harness", "worker", "gateway", "bench", "chaos", "lvmq")
SUFFIXES = ("py", "lua", "md", "toml", "yml", "yaml", "sh", "json", "html", "txt", "js", "css", "cfg", "ini")
# Never descended into: what the project does not write by hand (a virtual environment, fetched
# tools of tens of MB in .cache/, artifacts of hundreds): walking and reading them took the
# check from about a second to over a minute.
SKIPPED_DIRS = {
    ".venv", ".git", "node_modules", "__pycache__", "artifacts", ".pytest_cache", ".ruff_cache", ".cache",
    ".import_linter_cache", ".devicebundle", "build", "dist",
}  # fmt: skip
# Paths a page may name that the project makes, or that live outside it.
MADE = ("artifacts/", ".venv/", ".env", "docker/.env", "/", "~", "http", ".devicebundle/", "rq:", "lvm:", "$", "<")

SELF_TEST = Path("tests/test_docs.py")  # names stale things on purpose, to see them caught
CODE = re.compile(r"`([^`\n]+)`")
PATH = re.compile(rf"^[\w.-]*(?:/[\w.-]+)*/?(?:\.(?:{'|'.join(SUFFIXES)}))?$")
SETTING = re.compile(r"\bLVM_[A-Z0-9_]*[A-Z0-9]\b(?:__)?")
CITED_PATH = re.compile(
    rf"(?<![\w./:-])((?:{'|'.join(PACKAGES)}|tests|docs|docker|\.ci)/(?:[\w.-]+/)*(?:[\w-]+\.(?:{'|'.join(SUFFIXES)})\b|(?=[\s`)]))?)"
)
# Names in code spans that look like the project's but are not Python names: span names of traces.
NOT_PYTHON = {"lvmq.batch"}


def project_files(root: Path = ROOT) -> Iterator[Path]:
    for folder, dirs, files in os.walk(root):
        dirs[:] = sorted(d for d in dirs if d not in SKIPPED_DIRS and not d.endswith(".egg-info"))
        for name in sorted(files):
            yield Path(folder) / name


class Index:
    """What the project defines, read from its source: classes with their attributes, functions,
    Makefile targets, lvmq commands and the LVM_* names its files read."""

    def __init__(self, root: Path = ROOT):
        self.root = root
        self.files = list(project_files(root))
        self.names = {p.name for p in self.files} | {d.name for p in self.files for d in p.relative_to(root).parents}
        self.text = {p: p.read_text(errors="replace") for p in self.files}  # each file read once, here
        self.classes: dict[str, set[str]] = {}
        self.functions: set[str] = set()
        env_parts = []
        for path in self.files:
            rel = path.relative_to(root)
            if path.suffix == ".py":
                self._read_python(self.text[path])
            if rel.parts[0] != "docs" and path.suffix != ".md" and rel != SELF_TEST:
                env_parts.append(self.text[path])
        from config.settings import Settings

        env_parts.append(" ".join(f"LVM_{name.upper()}" for name in Settings.model_fields))
        self.env_text = "\n".join(env_parts)
        makefile = (root / "Makefile").read_text() if (root / "Makefile").exists() else ""
        self.targets = set(re.findall(r"^([\w-]+):", makefile, re.M))

    def _read_python(self, source: str) -> None:
        try:
            tree = ast.parse(source)
        except SyntaxError:
            return
        for node in ast.walk(tree):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                self.functions.add(node.name)
            elif isinstance(node, ast.ClassDef):
                attrs = self.classes.setdefault(node.name, set())
                for item in ast.walk(node):
                    if isinstance(item, ast.FunctionDef | ast.AsyncFunctionDef):
                        attrs.add(item.name)
                    elif isinstance(item, ast.Name) and isinstance(item.ctx, ast.Store):
                        attrs.add(item.id)
                    elif isinstance(item, ast.Attribute) and isinstance(item.ctx, ast.Store):
                        attrs.add(item.attr)

    def lvmq_commands(self) -> dict[str, set[str]]:
        from lvmq.cli import build_parser

        commands: dict[str, set[str]] = {}
        for action in build_parser()._subparsers._group_actions:  # type: ignore[union-attr]
            for name, parser in action.choices.items():
                subs = (
                    {n for a in parser._subparsers._group_actions for n in a.choices} if parser._subparsers else set()
                )
                commands[name] = subs
        return commands


def _exists(path: str, folder: Path, index: Index) -> bool:
    path = path.rstrip("/") or path
    if "/" not in path:
        return path in index.names or (index.root / path).exists()
    return (index.root / path).exists() or (folder / path).exists()


def _resolve(dotted: str) -> bool:
    parts = dotted.split(".")
    for cut in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:cut]))
        except ImportError:
            continue
        for attr in parts[cut:]:
            if not hasattr(obj, attr):  # a pydantic model's fields are not class attributes
                return attr in getattr(obj, "model_fields", {})
            obj = getattr(obj, attr)
        return True
    return False


def check_span(span: str, folder: Path, index: Index, commands: dict[str, set[str]]) -> str | None:
    """Why ``span`` (a code span of a page in ``folder``) names something that does not exist, or None."""
    span = span.strip()
    if span.startswith("make "):
        target = span.split()[1]
        return None if target in index.targets else f"make target {target!r} is not in the Makefile"
    if span.startswith("lvmq "):
        words = [w for w in span.split()[1:3] if re.fullmatch(r"[a-z][a-z-]*", w)]
        if not words:
            return None
        if words[0] not in commands:
            return f"`lvmq {words[0]}` is not a command"
        if len(words) > 1 and commands[words[0]] and words[1] not in commands[words[0]]:
            return f"`lvmq {words[0]} {words[1]}` is not a command"
        return None
    if span.startswith(MADE) or "://" in span or " " in span:
        return None
    if span in NOT_PYTHON or re.fullmatch(r"\.\w+", span):
        return None  # a span name, or a file extension alone
    suffixed = re.search(rf"\.({'|'.join(SUFFIXES)})/?$", span) is not None
    top = span.split("/")[0]
    if PATH.fullmatch(span) and (suffixed or ("/" in span and (index.root / top).is_dir())):
        return None if _exists(span, folder, index) else f"file {span} does not exist"
    call = re.fullmatch(r"([A-Za-z_]\w*)\(\)", span)
    if call:
        return None if call[1] in index.functions or call[1] in index.classes else f"no function {call[1]}()"
    if re.fullmatch(r"[a-z_]\w*(\.[A-Za-z_]\w*)+", span) and span.split(".")[0] in PACKAGES:
        return None if _resolve(span) else f"{span} does not import"
    attr = re.fullmatch(r"([A-Z]\w*)\.([a-z_]\w*)(\(\))?", span)
    if attr and attr[1] in index.classes:
        return None if attr[2] in index.classes[attr[1]] else f"{attr[1]} has no attribute {attr[2]}"
    return None


def check_page(page: Path, index: Index, commands: dict[str, set[str]], root_of: Path | None = None) -> list[str]:
    """The stale names of ``page``; its relative links resolve from ``root_of`` (default: its folder)."""
    text = page.read_text()
    folder = root_of or page.parent
    name = page.relative_to(index.root) if page.is_relative_to(index.root) else page.name
    problems = []
    fenced = re.sub(r"```.*?```", "", text, flags=re.S)
    for span in CODE.findall(fenced):
        why = check_span(span, folder, index, commands)
        if why:
            problems.append(f"{name}: `{span}`: {why}")
    for setting in sorted(set(SETTING.findall(text))):
        nested = setting.split("__")[0] if "__" in setting else None  # LVM_MODELS__LSTM: a key of LVM_MODELS
        if setting not in index.env_text and not (nested and nested in index.env_text):
            problems.append(f"{name}: {setting} is read by nothing in the project")
    for target in re.findall(r"(?m)^\s*make ([\w-]+)", text):
        if target not in index.targets:
            problems.append(f"{name}: make target {target!r} is not in the Makefile")
    return problems


def check_sources(index: Index) -> list[str]:
    """File paths cited in the source (docstrings and comments of Python files, the Makefile,
    pyproject.toml, compose and CI files) exist; tests/test_docs.py cites stale ones on purpose,
    to see them caught."""
    problems = []
    for path in index.files:
        rel = path.relative_to(index.root)
        cites = path.suffix in (".py", ".toml", ".sh", ".yml", ".yaml") or path.name in (
            "Makefile",
            "Dockerfile",
            "run",
        )
        if not cites or rel == SELF_TEST:
            continue
        for cited in set(CITED_PATH.findall(index.text[path])):
            if not (index.root / cited.rstrip("/")).exists() and not any(ch in cited for ch in "<{*"):
                problems.append(f"{path.relative_to(index.root)}: cites {cited}, which does not exist")
    return problems


def check(root: Path = ROOT, index: Index | None = None) -> list[str]:
    index = index or Index(root)
    commands = index.lvmq_commands()
    pages = [root / "README.md", *sorted((root / "docs").glob("*.md"))]
    problems = [p for page in pages if page.exists() for p in check_page(page, index, commands)]
    return problems + check_sources(index)


def main(argv: list[str] | None = None) -> int:
    problems = check()
    for problem in problems:
        print(problem, file=sys.stderr)
    if problems:
        print(f"{len(problems)} stale name(s) in the docs: fix the page, or the code it describes", file=sys.stderr)
        return 1
    print("docs name only what exists")
    return 0


if __name__ == "__main__":
    sys.exit(main())
