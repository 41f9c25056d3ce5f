"""Every liverseg command line in README.md and docs/*.md parses with that command's real parser.

Found: lines of fenced shell blocks (```, ```bash, ```sh, ```shell, ```console) and inline `code`
that start with a liverseg command: ``liverseg_<name>`` (also with a path, ``.venv/bin/liverseg_demo``)
or ``-m liverseg.cli.<name>`` after a launcher (``python``, ``torchrun ...``, ``srun torchrun ...``).
A fenced line is split into simple commands at ``;``, ``&&``, ``||`` and ``|`` (so
``for f in ...; do liverseg_train ... -f $f; done`` yields the train command); a backslash continues
a line. Each command is parsed by ``build_parser()`` of the module its console
script names in setup.cfg, with abbreviations turned off: an unknown flag, a wrong choice, a missing
required argument or a value of the wrong type fails.

Doc notation, normalised before parsing (and nothing else):

- ``[...]`` is optional: the command is parsed once without every bracketed part and once with all of
  them (brackets may nest: ``[-d NAME -c PIPELINE -f 0 1]``);
- ``a|b`` in inline code (``\\|`` in tables) is a choice: each alternative is parsed. In fenced blocks
  ``|`` is a shell pipe;
- ``<anything>`` and the words of :data:`PLACEHOLDERS` stand for a value and become ``1``, which
  every string, int and float option accepts (a placeholder where a choice is expected fails: write
  the choices);
- ``$VAR`` / ``${VAR}`` in a liverseg command's arguments take the values of :data:`SHELL_VARIABLES`;
  an unknown variable fails;
- ``...`` stands for "the other arguments": the token is dropped and required arguments are not
  asked for. Inline code in prose (not in a table) names an option of a command rather than a whole
  command line (``liverseg_predict --lesion-maps``), so it is parsed the same way.

The getting-started workflow itself is executed on tiny data by test_getting_started.py.
"""
from __future__ import annotations

import argparse
import configparser
import contextlib
import importlib
import io
import itertools
import re
import shlex
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
DOCUMENTS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
SHELL_FENCES = {"", "bash", "sh", "shell", "console"}

#: Placeholder words that stand for a number in the docs (other words such as NAME or PIPELINE are
#: valid strings as they are).
PLACEHOLDERS = {"N": "1", "MIN": "1"}
#: Shell variables the documented commands use, with a value of the kind the command expects.
SHELL_VARIABLES = {
    "f": "0",  # for f in 0 1 2 3 4; do liverseg_train ... -f $f; done
    "LIVERSEG_RAW": "/data/raw",
    "LIVERSEG_PREPROCESSED": "/data/preprocessed",
    "LIVERSEG_RESULTS": "/data/results",
    "SLURM_ARRAY_TASK_ID": "0",
    "SLURM_ARRAY_TASK_COUNT": "10",
}
#: Lines deliberately not parsed: (document, text of the command as written) -> why. Keep this short.
SKIPPED: dict[tuple[str, str], str] = {}
#: Documented command lines that are wrong, in documents another engineer is editing (issue #7
#: report); each is expected to fail until its document is corrected, then the entry must go
#: (the test is a strict xfail).
KNOWN_BROKEN: dict[tuple[str, str], str] = {}

_COMMAND_WORD = re.compile(r"(?:[\w.~/-]*/)?(liverseg_[a-z_]+)")
_INLINE_CODE = re.compile(r"`([^`]+)`")
_PLACEHOLDER = re.compile(r"<[^<>]*>")
_VARIABLE = re.compile(r"\$(?:\{(\w+)\}|(\w+))")
_SHELL_KEYWORDS = {"do", "then", "else", "time", "!", "{", "("}


@dataclass(frozen=True)
class Snippet:
    """A piece of a document that may hold a command: a fenced line, or inline code in a table or prose."""

    document: str
    line: int
    text: str
    kind: str  # "fenced", "table" or "prose"


@dataclass(frozen=True)
class DocCommand:
    """One command to parse: where it is written, the program, its argv, and whether it may be partial."""

    document: str
    line: int
    written: str
    program: str
    argv: tuple[str, ...]
    partial: bool
    problem: str | None = None  # the notation could not be read (the test reports it)

    @property
    def id(self) -> str:
        return f"{self.document}:{self.line}:{self.program} {' '.join(self.argv)}"


def console_scripts() -> dict[str, str]:
    """Console script name -> module, from setup.cfg (what ``pip install`` puts on the PATH)."""
    config = configparser.ConfigParser()
    config.read(REPO / "setup.cfg")
    entries = config["options.entry_points"]["console_scripts"].strip().splitlines()
    return {name.strip(): target.split(":")[0].strip() for name, target in (e.split("=") for e in entries)}


def snippets(path: Path, name: str) -> list[Snippet]:
    """Fenced shell lines (continuations joined) and inline code spans of the markdown file ``path``, called ``name``.

    Inline code may wrap across the lines of a paragraph; a table row is a paragraph of its own.
    """
    found: list[Snippet] = []
    fence: str | None = None
    pending: tuple[int, str] | None = None
    paragraph: list[tuple[int, str]] = []

    def flush() -> None:
        if paragraph:
            start, text = paragraph[0][0], "\n".join(line for _, line in paragraph)
            kind = "table" if text.lstrip().startswith("|") else "prose"
            for match in _INLINE_CODE.finditer(text):
                line = start + text.count("\n", 0, match.start())
                found.append(Snippet(name, line, " ".join(match.group(1).split()), kind))
            paragraph.clear()

    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        stripped = line.strip()
        if stripped.startswith("```"):
            flush()
            fence = None if fence is not None else stripped[3:].strip().lower()
        elif fence is None:
            if not stripped or stripped.startswith("|"):
                flush()
            paragraph.append((number, line))
            if stripped.startswith("|"):
                flush()
        elif fence in SHELL_FENCES:
            start, text = pending if pending else (number, "")
            text += re.sub(r"^\$ ", "", stripped) if not text else " " + stripped
            if text.endswith("\\"):
                pending = (start, text[:-1].rstrip())
            else:
                pending = None
                found.append(Snippet(name, start, text, "fenced"))
    flush()
    return found


def expand_optional(text: str) -> list[str]:
    """The text without any ``[...]`` part and with all of them (brackets removed); one text if none."""
    if "[" not in text:
        return [text]
    without, depth = [], 0
    for char in text:
        depth += char == "["
        if depth == 0:
            without.append(char)
        depth -= char == "]"
    if depth != 0:
        raise ValueError(f"unbalanced brackets in {text!r}")
    return [" ".join("".join(without).split()), " ".join(text.replace("[", " ").replace("]", " ").split())]


def expand_alternatives(text: str) -> list[str]:
    """One text per combination of the ``a|b|c`` alternatives in its words."""
    choices = []
    for word in text.split():
        opening, core, closing = re.fullmatch(r"(\[*)(.*?)(\]*)", word).groups()
        choices.append([opening + alternative + closing for alternative in core.split("|")])
    return [" ".join(combination) for combination in itertools.product(*choices)]


def substitute_variables(text: str, variables: dict[str, str]) -> str:
    """``$VAR`` and ``${VAR}`` replaced from ``variables``; a KeyError names an unknown one."""
    def value(match: re.Match) -> str:
        name = match.group(1) or match.group(2)
        if name not in variables:
            raise KeyError(f"shell variable ${name} has no value in the test; add it to SHELL_VARIABLES")
        return variables[name]
    return _VARIABLE.sub(value, text)


def simple_commands(text: str, fenced: bool) -> list[list[str]]:
    """Split a line into the words of its simple commands (at ; && || | for fenced shell lines)."""
    if not fenced:
        return [shlex.split(text)]
    lexer = shlex.shlex(text, posix=True, punctuation_chars=";&|")
    lexer.whitespace_split = True
    commands: list[list[str]] = [[]]
    for token in lexer:
        if token and set(token) <= set(";&|"):
            commands.append([])
        else:
            commands[-1].append(token)
    return [c for c in commands if c]


def program_of(words: list[str]) -> tuple[str, list[str]] | None:
    """(program as written, its arguments) when the words run a liverseg command, else None.

    A liverseg command is a console script (``liverseg_train``, ``.venv/bin/liverseg_train``) or
    ``-m liverseg...`` after a launcher (``python``, ``torchrun --nproc_per_node 4``, ``srun torchrun``).
    """
    while words and words[0] in _SHELL_KEYWORDS:
        words = words[1:]
    match = _COMMAND_WORD.fullmatch(words[0]) if words else None
    if match:
        return match.group(1), words[1:]
    for i, word in enumerate(words[:-1]):
        if word == "-m" and words[i + 1].split(".")[0] == "liverseg":
            return words[i + 1], words[i + 2:]
    return None


def commands_of(snippet: Snippet, variables: dict[str, str]) -> list[DocCommand]:
    """The liverseg commands a snippet holds, one per variant of its optional parts and alternatives."""
    text = _PLACEHOLDER.sub("1", snippet.text)
    variants = [text]
    if snippet.kind != "fenced":
        variants = [v for t in variants for v in expand_alternatives(t.replace("\\|", "|"))]
    variants = list(dict.fromkeys(v for t in variants for v in expand_optional(t)))
    found = []
    for variant in variants:
        for words in simple_commands(variant, snippet.kind == "fenced"):
            program = program_of(words)
            if program is None:
                continue
            name, args = program
            args = [PLACEHOLDERS.get(a, substitute_variables(a, variables)) for a in args]
            partial = "..." in args or snippet.kind == "prose" or (snippet.kind == "table" and not args)
            argv = tuple(a for a in args if a != "...")
            found.append(DocCommand(snippet.document, snippet.line, snippet.text, name, argv, partial))
    return found


def documented_commands() -> list[DocCommand]:
    """Every command variant of README.md and docs/*.md, in document order."""
    found = []
    for path in DOCUMENTS:
        for snippet in snippets(path, path.relative_to(REPO).as_posix()):
            try:
                found += commands_of(snippet, SHELL_VARIABLES)
            except (KeyError, ValueError) as e:
                if "liverseg" in snippet.text:
                    found.append(DocCommand(snippet.document, snippet.line, snippet.text, "?", (), False, str(e)))
    return found


def _all_parsers(parser: argparse.ArgumentParser) -> list[argparse.ArgumentParser]:
    found = [parser]
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in dict.fromkeys(action.choices.values()):
                found += _all_parsers(sub)
    return found


def build_parser(program: str, scripts: dict[str, str]) -> argparse.ArgumentParser:
    """The real parser of a console script name or a ``liverseg.cli.<name>`` module."""
    module_name = scripts.get(program, program)
    if not module_name.startswith("liverseg.cli."):
        raise LookupError(f"'{program}' is neither a console script of setup.cfg ({', '.join(sorted(scripts))}) "
                          "nor a liverseg.cli module")
    module = importlib.import_module(module_name)
    assert callable(getattr(module, "main", None)), f"{module_name} has no main()"
    return module.build_parser()


def parse_error(command: DocCommand, scripts: dict[str, str]) -> str | None:
    """What argparse says about the command (None if it parses): exact flags only; partial: nothing required."""
    parser = build_parser(command.program, scripts)
    for p in _all_parsers(parser):
        p.allow_abbrev = False
        if command.partial:
            for action in p._actions:
                action.required = False
    if command.partial and not command.argv:
        return None  # the command's name alone, e.g. `liverseg_find_best` in a sentence
    stderr = io.StringIO()
    try:
        with contextlib.redirect_stderr(stderr), contextlib.redirect_stdout(io.StringIO()):
            parser.parse_args(list(command.argv))
    except SystemExit as e:
        if e.code == 0 and {"-h", "--help"} & set(command.argv):
            return None
        return stderr.getvalue().strip().splitlines()[-1]
    return None


COMMANDS = documented_commands()
SCRIPTS = console_scripts()


def _param(command: DocCommand):
    key = (command.document, command.written)
    marks = [pytest.mark.xfail(strict=True, reason=KNOWN_BROKEN[key])] if key in KNOWN_BROKEN else []
    if key in SKIPPED:
        marks = [pytest.mark.skip(reason=SKIPPED[key])]
    return pytest.param(command, id=command.id, marks=marks)


@pytest.mark.parametrize("command", [_param(c) for c in COMMANDS])
def test_documented_command_parses(command):
    assert command.problem is None, f"{command.document}:{command.line}: `{command.written}`: {command.problem}"
    assert parse_error(command, SCRIPTS) is None, (
        f"{command.document}:{command.line}: `{command.written}` does not parse "
        f"as {command.program} {' '.join(command.argv)}: {parse_error(command, SCRIPTS)}")


def test_every_document_with_commands_is_read():
    """The extraction finds the commands we know are there (so the test above cannot pass on nothing)."""
    per_document = {d.relative_to(REPO).as_posix(): [] for d in DOCUMENTS}
    for command in COMMANDS:
        per_document[command.document].append(command)
    expected = {"README.md", "docs/getting_started.md", "docs/dataset_format.md", "docs/evaluation.md",
                "docs/fingerprint.md", "docs/planning.md", "docs/training.md", "docs/prediction.md",
                "docs/postprocessing.md", "docs/model_selection.md", "docs/lesion_metrics.md"}
    assert {d for d, found in per_document.items() if any(c.argv for c in found)} >= expected
    every_program = {c.program for c in COMMANDS}
    assert every_program >= set(SCRIPTS), f"commands without a documented example: {set(SCRIPTS) - every_program}"
    stale = set(KNOWN_BROKEN) | set(SKIPPED)
    assert stale <= {(c.document, c.written) for c in COMMANDS}, "KNOWN_BROKEN/SKIPPED entries no doc line matches"


def test_every_console_script_is_a_cli_module_with_a_parser():
    for name, module in SCRIPTS.items():
        assert isinstance(build_parser(name, SCRIPTS), argparse.ArgumentParser), name


def _one(text: str, kind: str = "fenced") -> list[DocCommand]:
    return commands_of(Snippet("x.md", 1, text, kind), SHELL_VARIABLES)


def test_wrong_flags_choices_and_missing_arguments_are_caught():
    ok = _one("liverseg_train -d ATLAS -c dual_binary -f 0 --continue")
    assert [parse_error(c, SCRIPTS) for c in ok] == [None]
    for wrong, says in [("liverseg_train -d ATLAS -c dual_binary -f 0 --resume", "unrecognized arguments: --resume"),
                        ("liverseg_train -d ATLAS -c dual_binary -f 0 --contin", "unrecognized arguments: --contin"),
                        ("liverseg_phantom -d P --size huge", "invalid choice: 'huge'"),
                        ("liverseg_train -d ATLAS -c dual_binary", "the following arguments are required: -f/--fold"),
                        ("liverseg_train -d ATLAS -c dual_binary -f 0 --epochs many", "invalid int value: 'many'"),
                        ("liverseg_fingerprint -d A --verify-only --skip-verify", "not allowed with argument")]:
        (command,) = _one(wrong)
        assert says in (parse_error(command, SCRIPTS) or ""), wrong
    (prose,) = _one("liverseg_predict --lesion-maps", kind="prose")
    assert parse_error(prose, SCRIPTS) is None
    (prose,) = _one("liverseg_predict --lesion-map", kind="prose")
    assert "unrecognized arguments: --lesion-map" in parse_error(prose, SCRIPTS)
    (unknown,) = _one("liverseg_segment -i scans/")
    with pytest.raises(LookupError, match="liverseg_segment"):
        parse_error(unknown, SCRIPTS)


def test_notation_is_normalised_as_documented():
    table = [(c.program, c.argv, c.partial) for c in _one(
        "liverseg_phantom -d Phantom -n 20 [--size tiny\\|small] [--seed 0]", kind="table")]
    assert table == [
        ("liverseg_phantom", ("-d", "Phantom", "-n", "20"), False),
        ("liverseg_phantom", ("-d", "Phantom", "-n", "20", "--size", "tiny", "--seed", "0"), False),
        ("liverseg_phantom", ("-d", "Phantom", "-n", "20", "--size", "small", "--seed", "0"), False),
    ]
    nested = _one("liverseg_predict -i <images> -o <out> [-d NAME [-c PIPELINE]]", kind="table")
    assert [c.argv for c in nested] == [("-i", "1", "-o", "1"), ("-i", "1", "-o", "1", "-d", "NAME", "-c", "PIPELINE")]
    loop = _one("for f in 0 1; do liverseg_train -d ATLAS -c dual_binary -f $f; done   # all folds")
    assert [(c.program, c.argv) for c in loop] == [("liverseg_train", ("-d", "ATLAS", "-c", "dual_binary", "-f", "0"))]
    chain = _one('python3 -m venv .venv && .venv/bin/pip install "torch==2.13.0" -e . && '
                 ".venv/bin/liverseg_demo --minutes 10 | tee log.txt")
    assert [(c.program, c.argv) for c in chain] == [("liverseg_demo", ("--minutes", "10"))]
    module = _one("python -m liverseg.cli.plan -d ATLAS --gpu-memory-gb N ...")
    assert [(c.program, c.argv, c.partial) for c in module] == [
        ("liverseg.cli.plan", ("-d", "ATLAS", "--gpu-memory-gb", "1"), True)]
    assert _one(".venv/bin/python -m pytest -m slow") == []
    launched = _one('HEAD=$(scontrol show "$NODES" | head -n 1); srun torchrun --nnodes "$SLURM_NNODES" '
                    '--rdzv_endpoint "$HEAD:29400" -m liverseg.cli.train -d ATLAS -f $f')
    assert [(c.program, c.argv) for c in launched] == [("liverseg.cli.train", ("-d", "ATLAS", "-f", "0"))]
    with pytest.raises(KeyError, match=r"\$UNKNOWN"):
        _one("liverseg_plan -d $UNKNOWN")


def test_fenced_lines_and_inline_code_are_found(tmp_path):
    doc = tmp_path / "doc.md"
    doc.write_text("Run `liverseg_plan -d A` first,\nthen `liverseg_fingerprint\n-d A`.\n"
                   "| `liverseg_train -d A -c m -f 0` | trains |\n\n"
                   "```bash\nliverseg_predict -i a \\\n    -o b\n```\n```python\nliverseg_plan = 1\n```\n"
                   "```json\n{\"liverseg_train\": 1}\n```\n", encoding="utf-8")
    found = snippets(doc, "doc.md")
    assert [(s.line, s.text, s.kind) for s in found] == [
        (1, "liverseg_plan -d A", "prose"), (2, "liverseg_fingerprint -d A", "prose"),
        (4, "liverseg_train -d A -c m -f 0", "table"),
        (7, "liverseg_predict -i a -o b", "fenced")]
