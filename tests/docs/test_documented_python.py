"""The ```python snippets of README.md and docs/*.md stay true to the code, without running them.

Most snippets are fragments (``reference_array``, ``plan_model`` are the reader's), so they are not
executed (docs/python_api.md is, by test_python_api_doc.py). What can rot is checked statically:
each snippet is valid Python, every ``import liverseg...`` / ``from liverseg... import name`` in it
resolves, and a call of an imported liverseg function or class (``name(...)``,
``name.attribute(...)``) passes only keyword arguments that its signature accepts. A document is
read in order: a snippet may call what an earlier snippet of the same document imported.
"""
from __future__ import annotations

import ast
import importlib
import inspect
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
DOCUMENTS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]


def python_snippets() -> list[tuple[str, int, str, str]]:
    """(document, line of the opening fence, code, code of the document's earlier blocks) of every ```python block."""
    found = []
    for path in DOCUMENTS:
        lines = path.read_text(encoding="utf-8").splitlines()
        start, earlier = None, ""
        for number, line in enumerate(lines, start=1):
            if start is None and line.strip() == "```python":
                start, code = number, []
            elif start is not None and line.strip() == "```":
                found.append((path.relative_to(REPO).as_posix(), start, "\n".join(code) + "\n", earlier))
                earlier += found[-1][2]
                start = None
            elif start is not None:
                code.append(line)
    return found


def imported_names(tree: ast.AST) -> dict[str, object]:
    """Name bound in the snippet -> the liverseg object it is bound to; raises if an import does not resolve."""
    names: dict[str, object] = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] == "liverseg":
            module = importlib.import_module(node.module)
            for alias in node.names:
                if not hasattr(module, alias.name):
                    raise ImportError(f"cannot import name {alias.name!r} from {node.module}")
                names[alias.asname or alias.name] = getattr(module, alias.name)
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] == "liverseg":
                    module = importlib.import_module(alias.name)
                    names[alias.asname or alias.name.split(".")[0]] = (
                        module if alias.asname else importlib.import_module("liverseg"))
    return names


def keyword_problems(tree: ast.AST, names: dict[str, object]) -> list[str]:
    """Keyword arguments of calls to imported liverseg callables that their signatures do not accept."""
    problems = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call):
            continue
        target, text = None, ast.unparse(node.func)
        if isinstance(node.func, ast.Name) and node.func.id in names:
            target = names[node.func.id]
        elif (isinstance(node.func, ast.Attribute) and isinstance(node.func.value, ast.Name)
              and node.func.value.id in names):
            target = getattr(names[node.func.value.id], node.func.attr, None)
            if target is None:
                problems.append(f"{text} does not exist")
                continue
        if target is None or not callable(target):
            continue
        try:
            parameters = inspect.signature(target).parameters
        except (TypeError, ValueError):
            continue
        if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values()):
            continue
        problems += [f"{text}() takes no keyword {k.arg!r}" for k in node.keywords
                     if k.arg is not None and k.arg not in parameters]
    return problems


SNIPPETS = python_snippets()


@pytest.mark.parametrize("document, line, code, earlier", SNIPPETS, ids=[f"{d}:{n}" for d, n, _, _ in SNIPPETS])
def test_python_snippet_imports_and_keywords_are_real(document, line, code, earlier):
    tree = ast.parse(code, filename=f"{document}:{line}")
    names = {**imported_names(ast.parse(earlier)), **imported_names(tree)}
    assert keyword_problems(tree, names) == [], f"{document}:{line}"


def test_snippets_are_found_and_the_checks_catch_rot():
    assert len(SNIPPETS) >= 10 and {d for d, _, _, _ in SNIPPETS} >= {"docs/training.md", "docs/python_api.md"}
    good = ast.parse("from liverseg.evaluation.evaluate import evaluate_folders\n"
                     "import liverseg\n"
                     "evaluate_folders('a', 'b', profile='atlas')\nliverseg.evaluate('a', 'b', output='s.json')\n")
    assert keyword_problems(good, imported_names(good)) == []
    wrong = ast.parse("from liverseg.evaluation.evaluate import evaluate_folders\nimport liverseg\n"
                      "evaluate_folders('a', 'b', profle='atlas')\nliverseg.evaluat('a', 'b')\n")
    assert keyword_problems(wrong, imported_names(wrong)) == [
        "evaluate_folders() takes no keyword 'profle'", "liverseg.evaluat does not exist"]
    with pytest.raises(ImportError, match="evaluate_folder"):
        imported_names(ast.parse("from liverseg.evaluation.evaluate import evaluate_folder\n"))
    with pytest.raises(ImportError):
        imported_names(ast.parse("import liverseg.no_such_module\n"))
