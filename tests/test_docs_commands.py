"""Every command the README and docs/ show runs as shown: parsed, config loaded, or dry-run.

Commands are the lines of ```bash blocks. ``torchx run`` lines run with ``--dryrun``;
CLI lines are parsed by the CLI's own parser and their config loaded with their
overrides (which checks the file, every key and value); ``make`` targets must exist;
scripts must exist.
"""

import re
import shlex
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Dict, List, Tuple

import pytest

from tests.conftest import REPO
from torchrec_kd.cli import _parser
from torchrec_kd.config import load_config

PAGES = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
CLI_PREFIXES = (("python", "-m", "torchrec_kd.cli"), (".venv/bin/python", "-m", "torchrec_kd.cli"), ("torchrec-kd",),
                (".venv/bin/torchrec-kd",))


def _commands() -> List[Tuple[str, str]]:
    """(page:line, command) for every command line of every ```bash block."""
    found = []
    for page in PAGES:
        in_bash = False
        pending = ""
        for i, line in enumerate(page.read_text().splitlines(), 1):
            if line.strip().startswith("```"):
                in_bash = line.strip() in ("```bash", "```sh", "```shell") and not in_bash
                continue
            if not in_bash:
                continue
            text = (pending + " " + line.strip()).strip() if pending else line.strip()
            if text.endswith("\\"):
                pending = text[:-1]
                continue
            pending = ""
            command = _strip_comment(text)
            if command:
                found.append((f"{page.relative_to(REPO)}:{i}", command))
    return found


def _strip_comment(line: str) -> str:
    """The line without a trailing ``# comment`` (shlex knows when # is quoted)."""
    lexer = shlex.shlex(line, posix=True, punctuation_chars=False)
    lexer.whitespace_split = True
    lexer.commenters = "#"
    try:
        return shlex.join(list(lexer))
    except ValueError:
        return line


def _env_and_argv(command: str) -> List[str]:
    argv = shlex.split(command)
    while argv and re.match(r"^[A-Z_]+=", argv[0]):  # LOGLEVEL=INFO python …
        argv = argv[1:]
    return argv


COMMANDS = _commands()

# One interpreter dry-runs every torchx command (a fresh one per command would cost ~4 s each).
_DRYRUN = """
import contextlib, io, json, sys
from torchx.cli import argparse_util
from torchx.cli.main import main
results = {}
for i, argv in enumerate(json.loads(sys.argv[1])):
    # torchx remembers the flags it has seen (to refuse a repeated -s); each command starts afresh
    argparse_util.torchxconfig.called_args.clear()
    argparse_util.ArgOnceAction.called_args.clear()
    err = io.StringIO()
    code = 0
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        try:
            main(argv)
        except SystemExit as e:
            code = e.code if isinstance(e.code, int) else 1
        except Exception as e:  # noqa: BLE001
            code, _ = 1, err.write(repr(e))
    results[i] = [code, err.getvalue()[-1500:]]
print(json.dumps(results))
"""


@pytest.fixture(scope="module")
def dryruns():
    """torchx command -> (exit code, stderr tail), all dry-run in one process."""
    runs = [_env_and_argv(c) for _, c in COMMANDS]
    runs = [["run", "--dryrun", *a[2:]] for a in runs if a[0].endswith("torchx") and a[1:2] == ["run"]]
    if not runs:
        return {}
    import json

    out = subprocess.run([sys.executable, "-c", _DRYRUN, json.dumps(runs)], cwd=REPO, capture_output=True,
                         text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    results = json.loads(out.stdout.strip().splitlines()[-1])
    return {shlex.join(r[2:]): results[str(i)] for i, r in enumerate(runs)}


def test_the_docs_show_commands():
    assert len(COMMANDS) >= 10, COMMANDS
    assert any("torchx run" in c for _, c in COMMANDS)


def _pins() -> Dict[str, str]:
    """distribution -> version pinned with ``==`` by the package and the CPU shim (a ``-cpu`` build answers for its name)."""
    pins = {}
    for path in (REPO / "pyproject.toml", REPO / "tools" / "fbgemm_gpu_shim" / "pyproject.toml"):
        project = tomllib.loads(path.read_text())["project"]
        for requirement in project.get("dependencies", []):
            name, sep, version = (part.strip() for part in requirement.partition("=="))
            if sep:
                pins[name] = version
                pins.setdefault(name.removesuffix("-cpu"), version)
    return pins


def _check_pip_install(where: str, args: List[str]) -> None:
    """Each ``name==version`` is the version the package pins; each ``-e .[extra]`` names an extra it has."""
    pins = _pins()
    extras = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    options_with_values = {i + 1 for i, a in enumerate(args) if a in ("--index-url", "--extra-index-url")}
    wanted = [a for i, a in enumerate(args) if not a.startswith("-") and i not in options_with_values]
    assert wanted, f"{where}: pip install of nothing"
    for a in wanted:
        if "==" in a:
            name, version = a.split("==")
            assert pins.get(name) == version, f"{where}: {a}, but the package pins {name} {pins.get(name)}"
        else:
            match = re.fullmatch(r"\.(?:\[([\w,]+)\])?", a)
            assert match, f"{where}: pip install {a}: not this package or a pinned requirement"
            missing = [e for e in (match.group(1) or "").split(",") if e and e not in extras]
            assert not missing, f"{where}: pyproject.toml has no extra {missing}"


@pytest.mark.parametrize("where,command", COMMANDS, ids=[w for w, _ in COMMANDS])
def test_command_runs_as_shown(where, command, dryruns, capsys):
    argv = _env_and_argv(command)
    head = argv[0]
    if head.endswith("torchx") and argv[1:2] == ["run"]:  # a --help line too: the component's help, exit 0
        code, stderr = dryruns[shlex.join(argv[2:])]
        assert code == 0, f"{where}: {command}\n{stderr}"
        return
    for prefix in CLI_PREFIXES:
        if tuple(argv[:len(prefix)]) == prefix:
            rest = argv[len(prefix):]
            if "--help" in rest or "-h" in rest:  # the subcommand exists and prints its help
                with pytest.raises(SystemExit) as exit_:
                    _parser().parse_args(rest)
                assert exit_.value.code == 0 and "usage:" in capsys.readouterr().out, f"{where}: {command}"
                return
            args = _parser().parse_args(rest)
            if getattr(args, "config", None):
                load_config(REPO / args.config, list(getattr(args, "overrides", [])))
            return
    if head == "make":
        targets = set(re.findall(r"^([a-z][\w-]*):", (REPO / "Makefile").read_text(), re.M))
        for target in (a for a in argv[1:] if "=" not in a and not a.startswith("-")):
            assert target in targets, f"{where}: make {target}: no such target"
        return
    if head in ("python", "python3", ".venv/bin/python") and argv[1].endswith(".py"):
        assert (REPO / argv[1]).is_file(), f"{where}: {argv[1]} does not exist"
        return
    if head.endswith("torchrun"):  # torchrun … examples/x.py: the script must exist
        scripts = [a for a in argv if a.endswith(".py")]
        assert scripts and all((REPO / p).is_file() for p in scripts), f"{where}: {command}"
        return
    if argv[1:3] == ["-m", "pytest"]:  # the test files or folders named must exist
        rest = argv[3:]
        option_values = {i + 1 for i, a in enumerate(rest) if a in ("-m", "-k")}  # -m "not slow"
        paths = [a.split("::")[0] for i, a in enumerate(rest) if not a.startswith("-") and i not in option_values]
        assert all((REPO / p).exists() for p in paths), f"{where}: {command}"
        return
    if Path(head).name in ("lint-imports", "ruff", "tensorboard"):  # tools the venv installs
        assert (REPO / ".venv" / "bin" / Path(head).name).is_file() or shutil.which(head), f"{where}: {head} not installed"
        logdir = argv[argv.index("--logdir") + 1] if "--logdir" in argv else None
        if logdir and logdir.startswith("outputs/"):  # outputs/<run_name>/…: the run of a shipped config
            run_names = {load_config(c).run_name for c in (REPO / "configs").glob("*.yaml")}
            assert logdir.split("/")[1] in run_names, f"{where}: no shipped config has run_name {logdir.split('/')[1]}"
        return
    if Path(head).name == "pip" and argv[1:2] == ["install"]:
        _check_pip_install(where, argv[2:])
        return
    if Path(head).name in ("pip", "cd", "git", "ls", "cat", "export", "source", "bash"):
        pytest.skip("shell plumbing: nothing of this repository's to check")
    pytest.fail(f"{where}: don't know how to check {command!r}; show it in a ```text block or teach this test")
