"""README.md and docs/*.md: every command's --flags exist in its parser, every relative link
resolves, and the README stays short. Parsing only: nothing trains."""

import ast
import functools
import importlib
import re
import shlex

import pytest
from conftest import REPO

DOCS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
SCRIPTS = dict(re.findall(r'^(charlm-[\w-]+) = "([\w.]+):\w+"', (REPO / "pyproject.toml").read_text(), re.M))
FILES = {"train.py": "charlm.cli", "sample.py": "charlm.sample"}
COMMAND = re.compile(r"^\s*(\w+=\S*\s+)*(python3?|charlm-[\w-]+)\s")  # a line that runs something


def code_lines(text):
    """The lines of indented and fenced code blocks (```python fences skipped), `\\` continuations joined."""
    lines, fence = [], None
    for line in text.splitlines():
        if line.lstrip().startswith("```"):
            fence = line.strip()[3:].strip() if fence is None else None
        elif (fence is not None and fence != "python") or (fence is None and line.startswith("    ")):
            if lines and lines[-1].endswith("\\"):
                lines[-1] = lines[-1][:-1] + " " + line.strip()
            else:
                lines.append(line.strip())
    return lines


def commands(doc):
    """(line, module, args) for each charlm or bench command, split as a shell would (comments, &&, |)."""
    for line in filter(COMMAND.match, code_lines(doc.read_text(encoding="utf-8"))):
        lexer = shlex.shlex(line, posix=True, punctuation_chars=True)
        lexer.whitespace_split = True
        try:
            tokens = list(lexer)
        except ValueError as e:  # an unclosed quote
            pytest.fail(f"{doc.relative_to(REPO)}: cannot split `{line}`: {e}")
        segment = []
        for token in [*tokens, ";"]:
            if token not in ("&&", "||", "|", ";", "&"):
                segment.append(token)
                continue
            while segment and re.match(r"\w+=", segment[0]):  # VAR=value before the command
                segment.pop(0)
            (program, first), rest = (segment + ["", ""])[:2], segment[2:]
            python = program in ("python", "python3")
            if program in SCRIPTS:
                yield line, SCRIPTS[program], segment[1:]
            elif python and first in FILES:
                yield line, FILES[first], rest
            elif python and first == "-m" and rest and rest[0].startswith(("charlm.", "bench.")):
                yield line, rest[0], rest[1:]
            segment = []


@functools.lru_cache(maxsize=None)
def option_strings(module):
    """Every option string a module's parser accepts: from its parser() (or train_parser()) when
    it has one, else read statically from its add_argument calls (a parser built inside main())."""
    source = REPO.joinpath(*module.split(".")).with_suffix(".py")
    assert source.is_file(), f"no module {module} ({source})"
    text = source.read_text(encoding="utf-8")
    for name in ("parser", "train_parser"):
        if f"\ndef {name}(" in text:
            return {s for action in getattr(importlib.import_module(module), name)()._actions
                    for s in action.option_strings}
    calls = [n for n in ast.walk(ast.parse(text)) if isinstance(n, ast.Call)
             and getattr(n.func, "attr", None) == "add_argument"]
    return {"-h", "--help"} | {a.value for c in calls for a in c.args
                               if isinstance(a, ast.Constant) and str(a.value).startswith("-")}


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: p.relative_to(REPO).as_posix())
def test_every_command_flag_exists(doc):
    unknown = [f"{doc.relative_to(REPO)}: `{line}`: {module} has no {flag}"
               for line, module, args in commands(doc)
               for flag in (a.split("=")[0] for a in args if a.startswith("--") and len(a) > 2)
               if flag not in option_strings(module)]
    assert not unknown, "\n".join(unknown)


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: p.relative_to(REPO).as_posix())
def test_every_relative_link_resolves(doc):
    targets = re.findall(r"\]\(([^)\s]+)\)", doc.read_text(encoding="utf-8"))
    broken = [t for t in targets if not re.match(r"[a-z]+:|#", t) and not (doc.parent / t.split("#")[0]).exists()]
    assert not broken, f"{doc.relative_to(REPO)}: broken links {broken}"


def test_readme_is_short_and_keeps_the_ci_test_command():
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    assert len(readme.splitlines()) <= 200, "README.md is over 200 lines: move the detail to docs/"
    ci = (REPO / ".ci" / "run").read_text(encoding="utf-8").splitlines()
    marker = next(i for i, line in enumerate(ci) if "README's test command, verbatim" in line)
    test_command = ci[marker + 1]
    assert f"\n    {test_command}\n" in readme, f".ci/run runs `{test_command}`, which README.md no longer shows"
    assert len(list(commands(REPO / "README.md"))) >= 8, "the README's command list was not found"
