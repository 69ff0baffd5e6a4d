"""What README.md and docs/*.md tell a user to type is true of the CLI as it is: every
`katapool ...` command line in their code blocks and inline code parses with katapool's own
argparse tree (the command exists, each option exists for it, each choice is valid), the
`benchmarks/*.py` invocations parse with that script's own parser, and the repository paths
and relative links they name exist.

No engine and no subprocess: the parsers are built in this process (a benchmark's parser by
running its ``main()`` only up to ``parse_args``, so none of its imports is paid for).

What counts as a concrete example and what as a synopsis:
- fenced ``sh``/``bash``/plain blocks are examples and must parse whole (required arguments
  included); inline code is often a fragment (`katapool analyze --connect ADDRESS`) or names
  a feature by its option (`katapool start --ray`), so a missing required argument, or the
  value of a last option, is forgiven there;
- ``[--opt]`` and ``[--a | --b X]`` are optional groups: each alternative is parsed once;
  ``a|b`` and ``status/stop/reload`` in a command word are alternatives too;
- upper-case placeholders stay as written (``-model NET``), except where the option needs a
  number or a device (``-n N``, ``--device SPEC``): there a sample value stands in.
"""

from __future__ import annotations

import argparse
import ast
import builtins
import contextlib
import functools
import io
import re
import shlex
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from katapool.cli.main import build_parser
from katapool.cli.shared_options import SPELLINGS
from katapool.errors import KatapoolError

ROOT = Path(__file__).resolve().parent.parent
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
SHELL_FENCES = {"", "sh", "bash", "shell", "console"}
# Inline code that starts with the word katapool but is prose, not a command line.
PROSE = {"katapool is stopping"}
# Inline code may leave out the word katapool before these commands (`engine list`); other
# words are ambiguous (`ray start --head` is Ray's own command).
BARE = ("engine", "config", "model", "prepare")
# Placeholders that stand for a value the option checks as it is read.
SAMPLES = {"N": "1", "S": "1", "SPEC": "auto", "DEVICES": "auto", "DURATION": "5m"}


@dataclass(frozen=True)
class Snippet:
    where: str  # file:line
    text: str  # one command line, continuations joined
    fenced: bool


def _rel(path: Path) -> str:
    return str(path.relative_to(ROOT))


def snippets(path: Path) -> Iterator[Snippet]:
    """The fenced shell lines and the inline code spans of one markdown file."""
    lines = path.read_text(encoding="utf-8").splitlines()
    fence: str | None = None
    prose: list[tuple[int, str]] = []
    pending, pending_start = "", 0
    for number, line in enumerate(lines, 1):
        stripped = line.strip()
        if stripped.startswith("```"):
            fence = stripped[3:].strip().lower() if fence is None else None
            pending = ""
            prose.append((number, ""))
            continue
        if fence is None:
            prose.append((number, line))
        elif fence in SHELL_FENCES:
            if pending:
                start, text = pending_start, pending + " " + stripped
            else:
                start, text = number, stripped
            if text.endswith("\\"):
                pending, pending_start = text[:-1].rstrip(), start
                continue
            pending = ""
            yield Snippet(f"{_rel(path)}:{start}", text.removeprefix("$ "), True)
    yield from _inline(path, prose)


def _inline(path: Path, prose: list[tuple[int, str]]) -> Iterator[Snippet]:
    # A code span never crosses a blank line: match within each paragraph.
    paragraph: list[tuple[int, str]] = []
    for number, line in [*prose, (0, "")]:
        if line.strip():
            paragraph.append((number, line))
            continue
        if paragraph:
            text = "\n".join(t for _, t in paragraph)
            for match in re.finditer(r"(`+)(.+?)\1", text, re.DOTALL):
                at = paragraph[0][0] + text.count("\n", 0, match.start())
                yield Snippet(f"{_rel(path)}:{at}", " ".join(match.group(2).split()), False)
        paragraph = []


def _variants(text: str) -> list[str]:
    """A synopsis's forms: each optional group (``[--a | --b X]``) once per alternative."""
    groups = list(re.finditer(r"(?<!\S)\[([^\[\]]+)\](?!\S)", text))
    if not groups:
        return [text]
    choices = [[a.strip() for a in g.group(1).split(" | ")] for g in groups]
    forms = []
    for i in range(max(len(c) for c in choices)):
        out, last = [], 0
        for group, alternatives in zip(groups, choices, strict=True):
            out += [text[last:group.start()], alternatives[i % len(alternatives)]]
            last = group.end()
        forms.append("".join([*out, text[last:]]))
    return forms


def simple_commands(text: str) -> Iterator[list[str]]:
    """The simple commands of one shell line (split at ``&&``, ``|``, ``;``), comments off,
    each without its prefixes (``VAR=x``, ``sudo -u U``, ``env``, ``nice -n 19``,
    ``docker compose exec SERVICE``, ``... --``)."""
    for form in _variants(text):
        # `percentile|minmax` (no spaces) is a list of choices, not a pipe.
        lexer = shlex.shlex(re.sub(r"(?<=[\w-])\|(?=[\w-])", "\0", form), posix=True,
                            punctuation_chars=True)
        lexer.whitespace_split = True
        try:
            tokens = [t.replace("\0", "|") for t in lexer]
        except ValueError:  # an unclosed quote: prose, not a command line
            return
        command: list[str] = []
        for token in [*tokens, ";"]:
            if token and set(token) <= set("&|;()<>"):
                if command:
                    yield _unprefixed(command)
                command = []
            else:
                command.append(token)


def _unprefixed(tokens: list[str]) -> list[str]:
    if "--" in tokens and tokens[0] in ("kubectl", "docker"):
        tokens = tokens[tokens.index("--") + 1:]
    while tokens:
        head = tokens[0]
        if re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*=\S*", head) or head in ("env", "time", "exec"):
            tokens = tokens[1:]
        elif head == "sudo":
            tokens = tokens[3:] if tokens[1:2] == ["-u"] else tokens[1:]
        elif head == "nice":
            tokens = tokens[3:] if tokens[1:2] == ["-n"] else tokens[1:]
        elif tokens[:3] == ["docker", "compose", "exec"]:
            rest = tokens[3:]
            while rest and rest[0].startswith("-"):
                rest = rest[1:]
            tokens = rest[1:]
        else:
            break
    return tokens


def _is_katapool(program: str) -> bool:
    return program == "katapool" or program.endswith("/katapool")


def _command_words(argv: list[str]) -> list[list[str]]:
    """``status/stop/reload`` and ``analysis|gtp`` in the command words: one argv each."""
    out: list[list[str]] = [[]]
    words = True
    for token in argv:
        words = words and not token.startswith("-")
        split = words and not token.startswith(("/", ".", "~"))  # a path is one word
        parts = [p for p in re.split(r"[/|]", token) if p] if split else [token]
        out = [[*o, p] for o in out for p in parts]
    return out


def _alternatives(argv: list[str]) -> list[list[str]]:
    """``--mode analysis|gtp``: each alternative value."""
    out: list[list[str]] = [[]]
    for token in argv:
        parts = token.split("|") if re.fullmatch(r"[\w-]+(\|[\w-]+)+", token) else [token]
        out = [[*o, p] for o in out for p in parts]
    return out


@dataclass(frozen=True)
class Invocation:
    where: str
    program: str  # "katapool" or a benchmarks/ script
    argv: tuple[str, ...]
    fenced: bool

    def __str__(self) -> str:
        return f"{self.where}: {self.program} {' '.join(self.argv)}"


def invocations() -> Iterator[Invocation]:
    for path in DOCS:
        for snippet in snippets(path):
            if snippet.text in PROSE:
                continue
            for tokens in simple_commands(snippet.text):
                if tokens and tokens[0].split("/")[-1].startswith("python") and len(tokens) > 1:
                    tokens = tokens[1:]
                if tokens and not snippet.fenced and tokens[0] in BARE and len(tokens) > 1:
                    tokens = ["katapool", *tokens]
                if tokens and re.fullmatch(r"\w+\.py", tokens[0]) and (
                        ROOT / "benchmarks" / tokens[0]).is_file():
                    tokens = [f"benchmarks/{tokens[0]}", *tokens[1:]]
                if not tokens or len(tokens) < 2 and _is_katapool(tokens[0]):
                    continue
                if _is_katapool(tokens[0]):
                    for argv in _command_words(tokens[1:]):
                        for alt in _alternatives(argv):
                            yield Invocation(snippet.where, "katapool", tuple(alt), snippet.fenced)
                elif re.fullmatch(r"benchmarks/\w+\.py", tokens[0]):
                    yield Invocation(snippet.where, tokens[0], tuple(tokens[1:]), snippet.fenced)


class _Refused(Exception):
    pass


def _raising(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """The parser and its subparsers raise instead of printing usage and exiting."""
    def error(message: str) -> Any:
        raise _Refused(message)
    parser.error = error  # type: ignore[method-assign]
    parser.allow_abbrev = False  # the docs spell options out (`--gpu` for `--gpus` is wrong)
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                _raising(sub)
    return parser


def _samples(parser: argparse.ArgumentParser, argv: list[str]) -> list[str]:
    return [SAMPLES.get(t, t) if i and argv[i - 1].startswith("-") else t
            for i, t in enumerate(argv)]


def _check(parser: argparse.ArgumentParser, inv: Invocation) -> str | None:
    """None when the command line parses; else why not."""
    argv = _samples(parser, list(inv.argv))
    try:
        with contextlib.redirect_stdout(io.StringIO()):  # --help, --policy help
            parser.parse_args(argv)
    except SystemExit as exc:
        return None if exc.code == 0 else f"exit {exc.code}"
    except _Refused as exc:
        message = str(exc)
        if not inv.fenced and (message.startswith("the following arguments are required")
                               or message.endswith(f"{argv[-1]}: expected one argument")):
            return None  # an inline fragment, or a feature named by its option (`--ray`)
        return message
    except KatapoolError as exc:
        return str(exc)
    return None


_NAMES = {"argparse": argparse, "Path": Path}


class _Anything:
    """Stands for a name a benchmark's parser set-up uses only as a default or description."""

    def __getattr__(self, name: str) -> _Anything:
        return self

    def __call__(self, *args: Any, **kwargs: Any) -> _Anything:
        return self

    def __truediv__(self, other: Any) -> _Anything:
        return self

    def __getitem__(self, key: Any) -> _Anything:
        return self

    def __iter__(self) -> Iterator[Any]:
        return iter(())

    def __fspath__(self) -> str:  # Path(DEFAULT_DIR)
        return "default"


class _Scope(dict[str, Any]):
    def __missing__(self, name: str) -> Any:
        if name in _NAMES:
            return _NAMES[name]
        if hasattr(builtins, name):
            raise KeyError(name)  # int, float, list: exec finds them among the builtins
        return _Anything()


def benchmark_parser(script: Path) -> argparse.ArgumentParser:
    """The script's parser: its ``main()`` run up to ``parse_args`` (module constants that
    are literals, or dicts with literal keys, kept for ``choices``)."""
    tree = ast.parse(script.read_text(encoding="utf-8"))
    scope = _Scope(__doc__=ast.get_docstring(tree) or "")
    for node in tree.body:
        if isinstance(node, ast.Assign | ast.AnnAssign) and node.value is not None:
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            value = node.value
            with contextlib.suppress(ValueError, TypeError, SyntaxError):
                if isinstance(value, ast.Dict):
                    keys = [ast.literal_eval(k) for k in value.keys if k is not None]
                    literal: Any = dict.fromkeys(keys)
                else:
                    literal = ast.literal_eval(value)
                for target in targets:
                    if isinstance(target, ast.Name):
                        scope[target.id] = literal
    (main,) = [n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == "main"]
    body = []
    for statement in main.body:
        if "parse_args" in ast.unparse(statement):
            break
        body.append(statement)
    exec(compile(ast.Module(body=body, type_ignores=[]), str(script), "exec"),  # noqa: S102
         {"__builtins__": builtins}, scope)
    # The first parser made is the script's own; later ones are its subcommands'.
    parser = next(v for v in scope.values() if isinstance(v, argparse.ArgumentParser))
    parser.prog = script.name
    return _raising(parser)


ALL = list(invocations())


@functools.cache
def katapool_parser() -> argparse.ArgumentParser:
    """katapool's parser, every command registered, raising instead of exiting (built once:
    it imports every command's module)."""
    return _raising(build_parser())


def test_the_docs_show_commands() -> None:
    """The extraction finds what it should (a broken extractor would check nothing)."""
    shown = {str(i) for i in ALL}
    assert len([i for i in ALL if i.program == "katapool"]) > 150
    assert len({i.program for i in ALL if i.program != "katapool"}) >= 8
    assert any("katapool model export-tflite net.bin.gz -o net.tflite --int8 --calibration "
               "games/*.sgf" in s for s in shown)  # a synopsis's second alternative
    assert any(s.endswith("katapool status") and "deploy.md" in s for s in shown)  # docker exec
    assert not any("ray worker --address A:6379" in s and "cluster.md:55" in s for s in shown)


def test_every_katapool_command_line_in_the_docs_parses() -> None:
    parser = katapool_parser()
    wrong = [f"{inv}\n    -> {why}" for inv in ALL if inv.program == "katapool"
             if (why := _check(parser, inv))]
    assert not wrong, "\n".join(wrong)


def test_every_benchmark_invocation_in_the_docs_parses() -> None:
    parsers: dict[str, argparse.ArgumentParser] = {}
    wrong = []
    for inv in ALL:
        if inv.program == "katapool":
            continue
        script = ROOT / inv.program
        if not script.is_file():
            wrong.append(f"{inv}\n    -> no such script")
            continue
        if not inv.argv and "def main(" not in script.read_text(encoding="utf-8"):
            continue  # named, not run: a fake engine
        if inv.program not in parsers:
            parsers[inv.program] = benchmark_parser(script)
        if why := _check(parsers[inv.program], inv):
            wrong.append(f"{inv}\n    -> {why}")
    assert not wrong, "\n".join(wrong)


def test_a_wrong_command_line_is_caught() -> None:
    """The checks can fail: an unknown command, option or choice is reported."""
    parser = katapool_parser()
    for argv in (["strat"], ["start", "--gpu", "0"], ["engine", "install", "--from", "git"],
                 ["analyze", "g.sgf", "--visits", "many"]):
        assert _check(parser, Invocation("x", "katapool", tuple(argv), True)), argv
    assert _check(parser, Invocation("x", "katapool", ("analyze",), True))
    assert not _check(parser, Invocation("x", "katapool", ("analyze",), False))
    bench = benchmark_parser(ROOT / "benchmarks" / "daemon_bench.py")
    assert not _check(bench, Invocation("x", "b", ("overhead", "-n", "5"), True))
    assert _check(bench, Invocation("x", "b", ("overload",), True))
    assert _check(bench, Invocation("x", "b", ("ceiling", "--visits", "5"), True))


def test_synopsis_forms() -> None:
    assert [c for c in simple_commands(
        "katapool x a.gz [--fp16 | --int8 --calibration g/*.sgf]   # comment | here")] == [
        ["katapool", "x", "a.gz", "--fp16"],
        ["katapool", "x", "a.gz", "--int8", "--calibration", "g/*.sgf"]]
    assert list(simple_commands("sudo -u kp env A=1 /opt/v/bin/katapool status && katapool stop")
                ) == [["/opt/v/bin/katapool", "status"], ["katapool", "stop"]]
    assert _command_words(["status/stop/reload"]) == [["status"], ["stop"], ["reload"]]


# Paths in inline code and in shell lines that name something in this repository.
REPO_PATH = re.compile(r"(?:\.\./)?(?:bin|benchmarks|configs|deploy|docs|examples|katapool|tests)/"
                       r"[\w./*-]*")


def test_repository_paths_the_docs_name_exist() -> None:
    missing = []
    for path in DOCS:
        for snippet in snippets(path):
            for token in snippet.text.split():
                match = REPO_PATH.fullmatch(token.strip("`'\",;:()"))
                if not match:
                    continue
                name = match.group(0).removeprefix("../").rstrip(".")
                if not list(ROOT.glob(name)) and not (ROOT / name).exists():
                    missing.append(f"{snippet.where}: {name}")
                elif name.startswith("bin/") and not (ROOT / name).stat().st_mode & 0o111:
                    missing.append(f"{snippet.where}: {name} is not executable")
    assert not missing, "\n".join(missing)


def _anchor(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower().replace("`", ""))
    return text.replace(" ", "-")


def _anchors(path: Path) -> set[str]:
    found, fence = set(), False
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.strip().startswith("```"):
            fence = not fence
        elif not fence and (m := re.match(r"#+\s+(.*)", line)):
            found.add(_anchor(m.group(1)))
    return found


def test_relative_links_and_anchors_resolve() -> None:
    broken = []
    for path in DOCS:
        text = path.read_text(encoding="utf-8")
        for match in re.finditer(r"\]\(([^)\s]+)\)", text):
            target = match.group(1)
            if re.match(r"[a-z]+:", target):
                continue  # https:, mailto:
            file, _, anchor = target.partition("#")
            where = f"{_rel(path)}:{text.count(chr(10), 0, match.start()) + 1}"
            resolved = (path.parent / file).resolve() if file else path
            if not resolved.exists():
                broken.append(f"{where}: {target}")
            elif anchor and resolved.suffix == ".md" and anchor not in _anchors(resolved):
                broken.append(f"{where}: {target} (no such heading)")
    assert not broken, "\n".join(broken)


def _commands(parser: argparse.ArgumentParser, path: str = "") -> dict[str, argparse.ArgumentParser]:
    """Every (sub)command's parser by its command line ("config generate"); aliases left out
    (`review` is `analyze`)."""
    found = {path: parser} if path else {}
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            seen: set[int] = set()
            for name, sub in action.choices.items():
                if id(sub) not in seen:
                    seen.add(id(sub))
                    found.update(_commands(sub, f"{path} {name}".strip()))
    return found


def _table_commands(cell: str, known: set[str]) -> set[str]:
    """``start, analysis, model export-onnx/-tflite/-coreml, validate (x); start (y)``: the
    commands named, a bare word read under the group before it (``validate``: model's)."""
    names, group = set(), ""
    for item in re.split(r"[,;]", re.sub(r"\([^)]*\)", "", cell)):
        item = item.strip()
        if not item:
            continue
        first, *alternatives = item.split("/")
        stem = first.rsplit("-", 1)[0] if alternatives else first
        for name in [first, *(stem + a for a in alternatives)]:
            if name not in known and f"{group} {name}" in known:
                name = f"{group} {name}"
            names.add(name)
            group = name.split()[0] if " " in name else group
    return names


def test_the_readme_spelling_table_matches_the_parsers() -> None:
    """README's table of shared options: its spellings, and the commands that take each."""
    commands = _commands(katapool_parser())
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    head = "| option | spellings | commands |"
    rows = text.split(head, 1)[1].split("\n\n", 1)[0].strip().splitlines()[1:]
    seen, wrong = set(), []
    for row in rows:
        _, spellings, cell = (c.strip() for c in row.strip("|").split("|"))
        shown = set(re.findall(r"`(-[\w-]+)`", spellings))
        (key,) = {k for k, v in SPELLINGS.items() if shown & set(v)}
        seen.add(key)
        assert set(SPELLINGS[key]) <= shown, row
        taking = {name for name, p in commands.items()
                  if any(set(a.option_strings) & set(SPELLINGS[key]) for a in p._actions)}
        listed = _table_commands(cell, set(commands))
        if listed != taking:
            wrong.append(f"{key}: listed, not taking it: {sorted(listed - taking)}; "
                         f"taking it, not listed: {sorted(taking - listed)}")
    assert not wrong, "\n".join(wrong)
    assert seen == set(SPELLINGS)


# Flags of other programs that the docs' prose names (docker, ray, pytest, KataGo itself, ...).
OTHER_PROGRAMS_FLAGS = {
    "--appimage-extract", "--build-arg", "--dist", "--durations", "--head", "--init",
    "--stop-timeout", "-c", "-dump-npz-input-to", "-e", "-fixed-batch-size", "-json", "-p",
    "-quick", "-s", "-t", "-u", "-v", "-y"}


def test_options_named_in_prose_exist() -> None:
    """An option the prose names (`--trust-visits`) is one of katapool's or a benchmark's,
    or a flag of another program listed above."""
    known = set(OTHER_PROGRAMS_FLAGS)
    parsers = list(_commands(katapool_parser()).values())
    for script in (ROOT / "benchmarks").glob("*.py"):
        if "def main(" in script.read_text(encoding="utf-8"):
            bench = benchmark_parser(script)
            parsers += [bench, *_commands(bench).values()]
    for parser in parsers:
        for action in parser._actions:
            known.update(action.option_strings)
    unknown = [f"{snippet.where}: {option}" for path in DOCS for snippet in snippets(path)
               if not snippet.fenced
               for option in re.findall(r"(?<![\w/.>-])(--?[a-z][\w-]*)", snippet.text)
               if option not in known]
    assert not unknown, "\n".join(unknown)


def _python_examples() -> Iterator[tuple[str, str]]:
    """(where, code): the docs' ``python`` blocks and the scripts in docs/examples/."""
    for path in DOCS:
        text = path.read_text(encoding="utf-8")
        for match in re.finditer(r"^```python\n(.*?)^```", text, re.DOTALL | re.MULTILINE):
            yield f"{_rel(path)}:{text.count(chr(10), 0, match.start()) + 1}", match.group(1)
    for script in sorted((ROOT / "docs" / "examples").glob("*.py")):
        yield _rel(script), script.read_text(encoding="utf-8")


def test_python_examples_compile_and_import_what_exists() -> None:
    import importlib

    wrong, examples = [], list(_python_examples())
    assert len(examples) > 5
    for where, code in examples:
        try:
            tree = ast.parse(code)
        except SyntaxError as exc:
            wrong.append(f"{where}: {exc}")
            continue
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("katapool"):
                module = importlib.import_module(node.module or "")
                wrong += [f"{where}: {node.module}.{a.name}" for a in node.names
                          if not hasattr(module, a.name)]
    assert not wrong, "\n".join(wrong)


def test_pool_file_examples_load() -> None:
    from katapool.config.poolfile import parse_pool_file

    found = 0
    for path in DOCS:
        text = path.read_text(encoding="utf-8")
        for match in re.finditer(r"^```yaml\n(.*?)^```", text, re.DOTALL | re.MULTILINE):
            if re.search(r"^models:", match.group(1), re.MULTILINE):
                parse_pool_file(match.group(1), _rel(path))  # raises on a wrong key or value
                found += 1
    assert found >= 3


def test_environment_variables_the_docs_name_are_read() -> None:
    sources = "\n".join(p.read_text(encoding="utf-8", errors="replace")
                        for folder in ("katapool", "tests", "bin", "benchmarks", ".ci")
                        for p in (ROOT / folder).rglob("*") if p.is_file()
                        and p.suffix in ("", ".py", ".sh") and p != Path(__file__))
    named = {v for path in DOCS for v in re.findall(r"\bKATAPOOL_[A-Z_]+\b",
                                                     path.read_text(encoding="utf-8"))}
    assert named
    assert not {v for v in named if v not in sources}


def test_the_demo_budget_the_docs_give_is_bin_demos() -> None:
    (budget,) = re.findall(r"DEMO_TIME:=(\w+)", (ROOT / "bin" / "demo").read_text())
    stated = [(_rel(path), time) for path in DOCS
              for paragraph in path.read_text(encoding="utf-8").split("\n\n")
              if "bin/demo" in paragraph
              for time in re.findall(r"katapool analyze --time (\w+)", paragraph)]
    assert len(stated) >= 2
    assert {time for _, time in stated} == {budget}, stated


def test_extras_the_docs_name_exist() -> None:
    import tomllib

    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    extras = set(project["optional-dependencies"])
    named = {extra for path in DOCS for group in re.findall(
        r"katapool\[([\w,-]+)\]", path.read_text(encoding="utf-8")) for extra in group.split(",")}
    assert named
    assert named <= extras, named - extras
