"""The commands in README.md and docs/*.md name files, flags and config keys that exist.

Only fenced blocks are read (4-space-indented code is not). By the fence's language:
```bash / sh / shell / console: commands, checked as below (console: the lines that start with a `$ ` prompt);
```python / py: run; ```yaml / yml: config keys; any other language (text, none): not read.
A block whose fence comes right after a line `<!-- not run -->` is skipped (use sparingly: a
snippet that needs a GPU, a data set or an hour).

Shell blocks. A line ending in `\\` is joined with the next; a leading `$ ` is dropped; `# comments`
are dropped; the line is split by shlex and cut into commands at `&&` `||` `;` `|` `&`. Leading
`VAR=value` assignments and `time` / `env` / `nohup` / `sudo` / `exec` are skipped. Then:
- `[.venv/bin/]python [-u ...] SCRIPT args`, `SCRIPT.py args`, `torchrun [its options] SCRIPT args`:
  SCRIPT must exist; its args are checked (paths, flags, config keys).
- `python -m MODULE args` (also after torchrun): a module of this repository (soft_d2.*,
  classification.*) must exist and its args are checked; other modules (pytest, pip) get the path
  check only. `python -c CODE` is not read.
- `bash SCRIPT args`, `sh SCRIPT args`, `SCRIPT.sh args`: SCRIPT must exist; the args get the path
  check, and the flag check where the script hands them to a Python script (FORWARDS:
  classification/dist_train.sh NUM_PROCS ... -> classification/train.py).
- `pip ...`, `git ...`, `echo ...`, `export ...`: ignored. `cd DIR`: later paths of the block are
  relative to DIR when it is a folder of the repository, else to the repository root (a clone).
- any other command: the path check on its args.

Paths. A token (or a `--flag=value` value) is a path into the repository when it is a command's
script, the value of --config-file / --config, ends in .py .yaml .yml .sh .md, or starts with a
top-level folder of the repository (`tests`, `configs/...`; a pytest `::test` suffix is dropped).
It must exist (a glob: match something), except
- `{a,b}` brace alternatives, which are expanded, each alternative being checked;
- placeholders: a token with `...` `<` `>` `$` `%`, or with a word (split at `/ . - _`) from
  PLACEHOLDER_WORDS (CFG, CONFIG, FILE, PATH, N, ...);
- absolute paths, `~`, URLs, and paths under output/ datasets/ pretrained/ out/ export/ imgs/ tmp/
  .venv/ build/ (user data and outputs);
- paths a previous command of the same block creates: values of --output --out --output-dir --write
  --save -o -O, the value of OUTPUT_DIR, redirect targets (`>`, `>>`), the args of mkdir / touch, the
  last arg of cp / mv / ln, and anything under them.
Each existing .yaml named in a configs/ folder is loaded: under classification/ with
classification.config.resolve, any other with soft_d2.config.load_config(file, []).

Flags. Each `--flag` / `--flag=value` given to a Python script or module of the repository must be a
long option its `--help` lists (option lines and usage). `SCRIPT --help` runs once per script and
session, only for scripts the docs give flags to, each in its own process (forked from one
interpreter that has imported torch, detectron2 and soft_d2; what fails there is retried in a fresh
interpreter); a script whose source has no argparse / parse_args / sys.argv takes no options.
Flags are not read after `--` or `--opts` (Detectron2's KEY VALUE overrides follow). Short options
(-c, -n) are not checked.

Config keys. Among the args of a Python script of the repository, a token KEY.KEY(.KEY)* in upper
case (or one of TOP_LEVEL_KEYS, e.g. OUTPUT_DIR) is a Detectron2 override: the key must exist in
soft_d2.config.compose_config() and its value (the next token, unless a placeholder) must merge.
YAML blocks: every key path must exist in compose_config() (`_BASE_` excepted); a block whose
top-level keys are all lower case is a classification/train.py config instead: each key must be one
of its options and the block must resolve.

Python blocks run, each in a fresh subprocess (120 s limit) whose cwd is an empty temporary folder
holding copies of configs/ and classification/configs/, with the repository on PYTHONPATH and
DETECTRON2_DATASETS inside the folder. Files a user would have downloaded are put there first when
the snippet names them: `soft_norm_tiny.pth`, `pretrained/soft_tiny.pth`, ... (any variant:
randomly initialised weights in the release's layout, {"state_dict": ...}). A failure reports the
stderr tail.

Links. Every relative `[text](path)`, `![alt](path)` and `[ref]: path` outside code must point to an
existing file (relative to the Markdown file). No doc, tools/*.sh or setup.py may name `../shared`
(not part of a user's clone).

Every problem is reported as `FILE:LINE: problem`; each test collects all of them before asserting.
"""
from __future__ import annotations

import difflib
import glob
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import textwrap
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
DOC_GLOBS = ("README.md", "docs/*.md")
SHARED_GLOBS = ("README.md", "docs/*.md", "tools/*.sh", "setup.py")

SHELL_LANGS = {"bash", "sh", "shell", "console", "zsh"}
PYTHON_LANGS = {"python", "py", "python3"}
YAML_LANGS = {"yaml", "yml"}
NOT_RUN = "<!-- not run -->"

PATH_SUFFIXES = (".py", ".yaml", ".yml", ".sh", ".md")
OUTSIDE_PREFIXES = ("output/", "datasets/", "pretrained/", "out/", "export/", "imgs/", "tmp/", ".venv/", "build/")
PLACEHOLDER_MARKS = ("...", "<", ">", "$", "%")
PLACEHOLDER_WORDS = {"CFG", "CONFIG", "FILE", "PATH", "DIR", "N", "NUM", "SIZE", "NAME", "VARIANT", "MODEL", "WEIGHTS",
                     "CKPT", "CHECKPOINT", "DATA", "OUT", "OUTPUT", "KEY", "VALUE", "IMAGE", "IMG", "FOLDER", "ROOT",
                     "SCRIPT", "TASK", "X", "Y"}
CONFIG_FLAGS = {"--config-file", "--config"}
OUTPUT_FLAGS = {"--output", "--out", "--output-dir", "--output_dir", "--write", "--save", "-o", "-O"}
FORWARDS = {"classification/dist_train.sh": "classification/train.py"}  # script -> the Python script it runs
WRAPPERS = {"time", "env", "nohup", "sudo", "exec"}
IGNORED_COMMANDS = {"pip", "pip3", "git", "echo", "printf", "export", "unset", "conda", "apt", "apt-get", "brew"}
SEPARATORS = {"&&", "||", ";", "|", "&", "|&", ";;"}
ASSIGNMENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*=")
TOP_LEVEL_KEYS = {"OUTPUT_DIR", "SEED", "VIS_PERIOD", "CUDNN_BENCHMARK"}  # overrides without a dot
DOTTED_KEY = re.compile(r"^[A-Z][A-Z0-9_]*(\.[A-Z][A-Z0-9_]*)+$")
LONG_FLAG = re.compile(r"(?<![\w-])--[A-Za-z0-9][\w-]*")
PYTHON_EXE = re.compile(r"^python(\d(\.\d+)?)?$")
TAKES_OPTIONS = re.compile(r"argparse|parse_args|sys\.argv|argument_parser")
VARIANT_FILE = re.compile(r"[\w./-]*?\bsoft(?:_norm)?_(?:tiny|small|medium|large|huge)\.pth")
HELP_TIMEOUT = 120
SNIPPET_TIMEOUT = 120
WORKERS = max(2, min(6, os.cpu_count() or 2))


# ---------------------------------------------------------------- Markdown parsing

@dataclass
class Block:
    line: int          # line number (1-based) of the block's first content line
    lang: str
    lines: list
    not_run: bool
    closed: bool = True


FENCE_OPEN = re.compile(r"^(?P<indent>[ \t]*)(?P<fence>`{3,}|~{3,})[ \t]*(?P<info>[^`]*?)[ \t]*$")
FENCE_CLOSE = re.compile(r"^[ \t]*(?P<fence>`{3,}|~{3,})[ \t]*$")


def fenced_blocks(text: str) -> list[Block]:
    lines = text.splitlines()
    blocks, i = [], 0
    while i < len(lines):
        m = FENCE_OPEN.match(lines[i])
        if not m:
            i += 1
            continue
        fence, indent = m["fence"], len(m["indent"])
        lang = (m["info"].split() or [""])[0].lower().strip("{}.")
        not_run = i > 0 and lines[i - 1].strip() == NOT_RUN
        body, j = [], i + 1
        while j < len(lines):
            c = FENCE_CLOSE.match(lines[j])
            if c and c["fence"][0] == fence[0] and len(c["fence"]) >= len(fence):
                break
            line = lines[j]
            body.append(line[indent:] if not line[:indent].strip() else line.lstrip())
            j += 1
        blocks.append(Block(i + 2, lang, body, not_run, closed=j < len(lines)))
        i = j + 1
    return blocks


def prose_lines(text: str):
    """(line number, line) outside fenced blocks, inline code spans blanked."""
    inside = set()
    for b in fenced_blocks(text):
        inside.update(range(b.line - 1, b.line + len(b.lines) + 1))
    for n, line in enumerate(text.splitlines(), 1):
        if n not in inside:
            yield n, re.sub(r"(`+).+?\1", "", line)


LINK = re.compile(r"!?\[(?:[^\[\]]|\[[^\]]*\])*\]\(\s*<?([^)\s>]+)>?(?:\s+[\"'(][^)]*)?\)")
REF_DEF = re.compile(r"^\s{0,3}\[[^\]]+\]:\s*<?([^\s>]+)>?")


def link_targets(text: str):
    for n, line in prose_lines(text):
        for m in list(LINK.finditer(line)) + ([REF_DEF.match(line)] if REF_DEF.match(line) else []):
            yield n, m.group(1)


# ---------------------------------------------------------------- shell parsing

def strip_comment(line: str) -> str:
    """Drop a `# comment` (a # that starts a word, outside quotes)."""
    quote, prev = None, " "
    for i, ch in enumerate(line):
        if quote:
            if ch == quote:
                quote = None
        elif ch in "'\"":
            quote = ch
        elif ch == "#" and prev.isspace():
            return line[:i]
        prev = ch
    return line


def logical_lines(block: Block):
    """(line number, command line): continuations joined, comments and prompts dropped."""
    out, buf, start = [], "", None
    for k, raw in enumerate(block.lines):
        line = raw
        if block.lang == "console" and not buf:
            if not line.lstrip().startswith("$ "):
                continue
        if not buf and line.lstrip().startswith("$ "):
            line = line.lstrip()[2:]
        line = strip_comment(line)
        if start is None:
            start = block.line + k
        if line.rstrip().endswith("\\"):
            buf += line.rstrip()[:-1] + " "
            continue
        buf += line
        if buf.strip():
            out.append((start, buf.strip()))
        buf, start = "", None
    if buf.strip():
        out.append((start, buf.strip()))
    return out


def split_commands(line: str) -> list[list[str]]:
    lex = shlex.shlex(line, posix=True, punctuation_chars=True)
    lex.whitespace_split, lex.commenters = True, ""
    commands, current = [], []
    for tok in lex:
        if tok in SEPARATORS:
            commands.append(current)
            current = []
        elif tok not in ("(", ")"):
            current.append(tok)
    commands.append(current)
    return [c for c in commands if c]


def expand_braces(token: str) -> list[str]:
    """Bash brace expansion of `{a,b}` groups (nested and empty alternatives included)."""
    depth, start = 0, None
    for i, ch in enumerate(token):
        if ch == "{":
            if depth == 0:
                start = i
            depth += 1
        elif ch == "}" and depth:
            depth -= 1
            if depth == 0:
                inner, parts, level, last = token[start + 1:i], [], 0, 0
                for j, c in enumerate(inner):
                    level += (c == "{") - (c == "}")
                    if c == "," and level == 0:
                        parts.append(inner[last:j])
                        last = j + 1
                parts.append(inner[last:])
                if len(parts) < 2:
                    continue
                head, tail = token[:start], token[i + 1:]
                return [e for p in parts for e in expand_braces(head + p + tail)]
    return [token]


def is_placeholder(token: str) -> bool:
    if any(m in token for m in PLACEHOLDER_MARKS):
        return True
    return any(w in PLACEHOLDER_WORDS for w in re.split(r"[/.\-_=:]", token) if w)


def top_level_dirs() -> set[str]:
    return {p.name for p in REPO.iterdir()
            if p.is_dir() and not p.name.startswith(".") and f"{p.name}/" not in OUTSIDE_PREFIXES
            and not p.name.endswith(".egg-info")}


def is_repo_path(token: str, forced: bool = False) -> bool:
    """Whether a token names a file of the repository (to be checked), placeholders not excluded yet."""
    if not token or token.startswith(("-", "/", "~")) or "://" in token or token.startswith("git@"):
        return False
    if forced:
        return True
    token = token.split("::")[0]
    while token.startswith("./"):
        token = token[2:]
    return token.endswith(PATH_SUFFIXES) or token.split("/")[0] in top_level_dirs()


# ---------------------------------------------------------------- help text of the scripts

def parse_help(text: str) -> set[str]:
    """Long options from argparse's usage block and option lines."""
    flags = set()
    usage = text[text.find("usage:"):].split("\n\n")[0] if "usage:" in text else ""
    flags.update(LONG_FLAG.findall(usage))
    for line in text.splitlines():
        m = re.match(r"^ {2}(-\S.*?)(?: {2,}|$)", line)
        if m:
            flags.update(LONG_FLAG.findall(m.group(1)))
    return flags


_HELP: dict = {}          # tool -> (flags, None) or (None, error); one entry per script and session
_HELP_LOCK = threading.Lock()
PREFETCH: set = set()     # the tools of every document this session checks (see the `cache` fixture)


def script_source(tool: str) -> Path:
    """The file behind a tool: a script (`SCRIPT` or `SCRIPT SUBCOMMAND`) or `-m MODULE`."""
    if tool.startswith("-m "):
        mod = tool[3:].replace(".", "/")
        f = REPO / f"{mod}.py"
        return f if f.is_file() else REPO / mod / "__main__.py"
    return REPO / tool.split(" ")[0]


def help_argv(tool: str) -> list[str]:
    """What follows the interpreter to print a tool's help: a subcommand's own options are in its help."""
    if tool.startswith("-m "):
        return ["-m", tool[3:], "--help"]
    script, *sub = tool.split(" ")
    return [str(REPO / script), *sub, "--help"]


def _help_env(cwd: str) -> dict:
    return dict(os.environ, DETECTRON2_DATASETS=os.path.join(cwd, "datasets"),
                PYTHONPATH=os.pathsep.join([str(REPO)] + [p for p in [os.environ.get("PYTHONPATH")] if p]))


def _help_result(tool: str, rc, out: str, err: str):
    if rc is None:
        return None, f"`{tool} --help` did not finish in {HELP_TIMEOUT} s"
    if rc != 0 or "usage:" not in out:
        return None, f"`{tool} --help` printed no usage (exit {rc}):" + tail(err or out)
    return parse_help(out), None


def _help_subprocess(tool: str):
    """`python SCRIPT --help` (or `python -m MODULE --help`) in a fresh interpreter."""
    cmd = [sys.executable] + help_argv(tool)
    with tempfile.TemporaryDirectory() as cwd:  # a script that ignores --help cannot write into the repository
        try:
            r = subprocess.run(cmd, cwd=cwd, env=_help_env(cwd), capture_output=True, text=True, timeout=HELP_TIMEOUT)
        except subprocess.TimeoutExpired:
            return _help_result(tool, None, "", "")
    return _help_result(tool, r.returncode, r.stdout, r.stderr)


# Each script's `--help` in its own process, forked from one interpreter that has imported what they
# all import (torch, detectron2, timm, soft_d2): a fresh interpreter per script costs 5-10 s of imports
# each, on a 2-core machine most of this test's time. What fails here is retried in a fresh interpreter.
_FORKED_HELP = r"""
import json, os, runpy, sys, tempfile, time, traceback
jobs, result_file, timeout = json.loads(sys.argv[1]), sys.argv[2], float(sys.argv[3])
for name in ("torch", "torchvision", "timm", "detectron2.engine", "soft_d2.config"):
    try:
        __import__(name)
    except Exception:
        pass
results = {}
for tool, target, extra in jobs:
    out_path, err_path = os.path.join(os.getcwd(), ".help_out"), os.path.join(os.getcwd(), ".help_err")
    sys.stdout.flush(); sys.stderr.flush()
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            os.dup2(os.open(out_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC), 1)
            os.dup2(os.open(err_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC), 2)
            sys.stdout, sys.stderr = open(1, "w", closefd=False), open(2, "w", closefd=False)
            sys.argv = [target, *extra, "--help"]
            if tool.startswith("-m "):
                runpy.run_module(target, run_name="__main__", alter_sys=True)
            else:
                sys.path[0] = os.path.dirname(target)
                runpy.run_path(target, run_name="__main__")
            code = 0
        except SystemExit as e:
            code = e.code if isinstance(e.code, int) else 0 if e.code is None else 1
            if not isinstance(e.code, (int, type(None))):
                print(e.code, file=sys.stderr)
        except BaseException:
            traceback.print_exc()
        finally:
            sys.stdout.flush(); sys.stderr.flush()
            os._exit(code)
    deadline, rc = time.time() + timeout, None
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            rc = os.waitstatus_to_exitcode(status)
            break
        if time.time() > deadline:
            os.kill(pid, 9); os.waitpid(pid, 0)
            break
        time.sleep(0.02)
    with open(out_path) as f, open(err_path) as g:
        results[tool] = [rc, f.read(), g.read()]
with open(result_file, "w") as f:
    json.dump(results, f)
"""


def _forked_help(tools: list[str]) -> dict:
    jobs = [(t, t[3:], []) if t.startswith("-m ") else (t, str(REPO / t.split(" ")[0]), t.split(" ")[1:])
            for t in tools]
    with tempfile.TemporaryDirectory() as cwd:
        result_file = os.path.join(cwd, "help.json")
        try:
            subprocess.run([sys.executable, "-c", _FORKED_HELP, json.dumps(jobs), result_file, str(HELP_TIMEOUT)],
                           cwd=cwd, env=_help_env(cwd), capture_output=True, timeout=HELP_TIMEOUT * (1 + len(jobs)))
            with open(result_file) as f:
                return json.load(f)
        except (subprocess.TimeoutExpired, OSError, ValueError):
            return {}


def prefetch_help(tools) -> None:
    """Fill the cache for these tools (repo-relative scripts or `-m module`)."""
    with _HELP_LOCK:
        todo = []
        for tool in sorted(set(tools) - set(_HELP)):
            if TAKES_OPTIONS.search(script_source(tool).read_text(errors="replace")):
                todo.append(tool)
            else:
                _HELP[tool] = (set(), None)  # no argument parsing: no options
        if todo and hasattr(os, "fork"):
            for tool, (rc, out, err) in _forked_help(todo).items():
                if rc == 0 and "usage:" in out:
                    _HELP[tool] = _help_result(tool, rc, out, err)
        rest = [t for t in todo if t not in _HELP]
        with ThreadPoolExecutor(WORKERS) as pool:
            for tool, result in zip(rest, pool.map(_help_subprocess, rest)):
                _HELP[tool] = result


def help_flags(tool: str):
    if tool not in _HELP:
        prefetch_help([tool])
    return _HELP[tool]


def tail(text: str, n: int = 15) -> str:
    lines = [l for l in text.strip().splitlines() if l.strip()][-n:]
    return "\n" + textwrap.indent("\n".join(lines), "    ") if lines else "(no output)"


# ---------------------------------------------------------------- config checks (in-process)

_CFG = {}


def full_config():
    if "cfg" not in _CFG:
        from soft_d2.config import compose_config

        _CFG["cfg"] = compose_config()
    return _CFG["cfg"]


def all_keys(node, prefix=""):
    for k, v in node.items():
        yield prefix + k
        if isinstance(v, dict):
            yield from all_keys(v, prefix + k + ".")


def key_problem(key: str, value: str | None) -> str | None:
    cfg = full_config()
    node = cfg
    for part in key.split("."):
        if not isinstance(node, dict) or part not in node:
            close = difflib.get_close_matches(key, list(all_keys(cfg)), n=1, cutoff=0.8)
            return f"unknown config key {key}" + (f" (did you mean {close[0]}?)" if close else "")
        node = node[part]
    if value is not None and not is_placeholder(value):
        try:
            cfg.clone().merge_from_list([key, value])
        except Exception as err:  # noqa: BLE001 - reported
            return f"config override {key} {value!r} does not merge: {type(err).__name__}: {err}"
    return None


def yaml_key_problems(data: dict) -> list[str]:
    problems = []

    def walk(node, cfg_node, prefix):
        for k, v in node.items():
            path = prefix + str(k)
            if not prefix and k == "_BASE_":
                continue
            if not isinstance(cfg_node, dict) or k not in cfg_node:
                close = difflib.get_close_matches(path, list(all_keys(full_config())), n=1, cutoff=0.8)
                problems.append(f"unknown config key {path}" + (f" (did you mean {close[0]}?)" if close else ""))
            elif isinstance(v, dict) and isinstance(cfg_node[k], dict):
                walk(v, cfg_node[k], path + ".")

    walk(data, full_config(), "")
    return problems


def classification_yaml_problems(data: dict) -> list[str]:
    from classification.config import OPTIONS, resolve

    unknown = [k for k in data if str(k).replace("-", "_") not in OPTIONS]
    if unknown:
        return [f"unknown classification/train.py option {k!r}" for k in unknown]
    import yaml

    with tempfile.NamedTemporaryFile("w", suffix=".yaml", delete=False) as f:
        yaml.safe_dump(data, f)
    try:
        resolve(f.name)
    except Exception as err:  # noqa: BLE001 - reported
        return [f"classification config does not resolve: {err}"]
    finally:
        os.unlink(f.name)
    return []


_LOADED: dict = {}


def config_file_problem(rel: str) -> str | None:
    if rel not in _LOADED:
        try:
            if rel.startswith("classification/"):
                from classification.config import resolve

                resolve(str(REPO / rel))
            else:
                from detectron2.data import DatasetCatalog, MetadataCatalog

                from soft_d2.config import load_config

                before = set(DatasetCatalog.list())
                try:
                    load_config(str(REPO / rel), [])
                finally:  # DATASETS.REGISTER_COCO_INSTANCES registered names (with paths from this folder)
                    for name in set(DatasetCatalog.list()) - before:
                        DatasetCatalog.remove(name)
                        MetadataCatalog.remove(name)
            _LOADED[rel] = None
        except Exception as err:  # noqa: BLE001 - reported
            _LOADED[rel] = f"config {rel} does not load: {type(err).__name__}: {str(err).splitlines()[0][:300]}"
    return _LOADED[rel]


# ---------------------------------------------------------------- Python snippets

# In-process work (imports of torch / timm / detectron2, configs, fixture checkpoints) runs under one
# lock: two threads importing timm at once can see it half-initialised.
_INPROCESS = threading.RLock()


def variant_checkpoint(variant: str, cache: Path) -> Path:
    """Random weights of a variant in the release's layout, as its released file holds them."""
    path = cache / f"{variant}.pth"
    with _INPROCESS:
        if not path.exists():
            import timm
            import torch

            import soft_d2  # noqa: F401 - registers the variants
            from soft_d2.model import to_official_state_dict

            model = timm.create_model(variant)
            torch.save({"state_dict": to_official_state_dict(model.state_dict())}, path)
    return path


def run_snippet(code: str, cache: Path) -> str | None:
    with tempfile.TemporaryDirectory(prefix="doc_snippet_") as cwd:
        cwd = Path(cwd)
        for data in ("configs", "classification/configs"):
            shutil.copytree(REPO / data, cwd / data)
        for name in sorted(set(VARIANT_FILE.findall(code))):
            if name.startswith(("/", "~")) or ".." in name.split("/"):
                continue  # only files inside the snippet's folder
            target = cwd / name
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(variant_checkpoint(Path(name).stem, cache), target)
        (cwd / "doc_snippet.py").write_text(code)
        env = dict(os.environ, DETECTRON2_DATASETS=str(cwd / "datasets"), MPLBACKEND="Agg",
                   PYTHONPATH=os.pathsep.join([str(REPO)] + [p for p in [os.environ.get("PYTHONPATH")] if p]))
        try:
            r = subprocess.run([sys.executable, "doc_snippet.py"], cwd=cwd, env=env, capture_output=True, text=True,
                               timeout=SNIPPET_TIMEOUT)
        except subprocess.TimeoutExpired:
            return f"python block did not finish in {SNIPPET_TIMEOUT} s"
    if r.returncode != 0:
        return f"python block failed (exit {r.returncode}):" + tail(r.stderr or r.stdout)
    return None


# ---------------------------------------------------------------- the checker

class DocChecker:
    """Collects (file, line, problem) for a set of Markdown documents."""

    def __init__(self, cache: Path, run_python: bool = True):
        self.cache = cache
        self.run_python = run_python
        self.problems: list[tuple[str, int, str]] = []
        self.flag_uses: list[tuple[str, int, str, str]] = []   # file, line, tool, flag
        self.key_uses: list[tuple[str, int, str, str | None]] = []
        self.config_files: list[tuple[str, int, str]] = []
        self.yaml_blocks: list[tuple[str, int, str]] = []
        self.snippets: list[tuple[str, int, str]] = []

    def report(self, doc, line, msg):
        self.problems.append((doc, line, msg))

    # -- paths
    def check_path(self, doc, line, token, state, forced=False):
        if not is_repo_path(token, forced):
            return
        for alt in expand_braces(token):
            alt_clean = alt.split("::")[0]
            if is_placeholder(alt_clean) or alt_clean.startswith(("/", "~")):
                continue
            rel = os.path.normpath(os.path.join(state["base"], alt_clean))
            if rel.startswith("..") or (rel + "/").startswith(OUTSIDE_PREFIXES):
                continue
            if any(rel == c or rel.startswith(c.rstrip("/") + "/") for c in state["created"]):
                continue
            found = glob.glob(str(REPO / rel)) if any(ch in rel for ch in "*?[") else (REPO / rel).exists()
            if not found:
                shown = alt_clean if alt == token else f"{alt_clean} (from {token})"
                self.report(doc, line, f"file not found: {shown}")
            elif rel.endswith((".yaml", ".yml")) and "configs" in rel.split("/")[:-1] and (REPO / rel).is_file():
                self.config_files.append((doc, line, rel))

    def created(self, state, token):
        if token and not token.startswith("-"):
            for alt in expand_braces(token):
                state["created"].add(os.path.normpath(os.path.join(state["base"], alt)))

    # -- commands
    def check_args(self, doc, line, args, tool, state):
        """Paths, flags and config overrides of a (Python) script's arguments; `tool` None: no flag check."""
        flags_open, i = True, 0
        while i < len(args):
            a = args[i]
            if a == "--":
                flags_open = False
            elif tool and (DOTTED_KEY.match(a) or a in TOP_LEVEL_KEYS):
                value = args[i + 1] if i + 1 < len(args) else None
                self.key_uses.append((doc, line, a, value))
                if value is not None:
                    if a == "OUTPUT_DIR":
                        self.created(state, value)
                    self.check_path(doc, line, value, state)
                i += 2
                continue
            elif a.startswith("--") and len(a) > 2:
                name, _, val = a.partition("=")
                if tool and flags_open:
                    self.flag_uses.append((doc, line, tool, name))
                if name == "--opts":
                    flags_open = False
                nxt = val or (args[i + 1] if i + 1 < len(args) else "")
                if name in OUTPUT_FLAGS:
                    self.created(state, nxt)
                if name in CONFIG_FLAGS and nxt and not nxt.startswith("-"):
                    self.check_path(doc, line, nxt, state, forced=True)
                    if not val:
                        i += 1
                elif val:
                    self.check_path(doc, line, val, state)
            elif a in OUTPUT_FLAGS:
                self.created(state, args[i + 1] if i + 1 < len(args) else "")
            else:
                self.check_path(doc, line, a, state)
            i += 1

    def script_tool(self, doc, line, script, state):
        """Check a script path; the repo-relative name to check its flags against, or None."""
        self.check_path(doc, line, script, state, forced=True)
        if is_placeholder(script) or script.startswith(("/", "~")):
            return None
        rel = os.path.normpath(os.path.join(state["base"], script))
        return rel if (REPO / rel).is_file() and not rel.startswith("..") else None

    def module_tool(self, doc, line, module):
        top = module.split(".")[0]
        if not (REPO / top).is_dir():
            return None  # not ours (pytest, pip, torch.distributed.run)
        tool = f"-m {module}"
        if not script_source(tool).is_file():
            self.report(doc, line, f"module not found: {module}")
            return None
        return tool

    def python_command(self, doc, line, args, state):
        """args after the interpreter."""
        i = 0
        while i < len(args):
            a = args[i]
            if a == "-m" and i + 1 < len(args):
                module, rest = args[i + 1], args[i + 2:]
                if module in ("pip",):
                    return
                tool = self.module_tool(doc, line, module)
                self.check_args(doc, line, rest, tool, state)
                return
            if a == "-c":
                return
            if a in ("-W", "-X"):
                i += 2
                continue
            if a.startswith("-"):
                i += 1
                continue
            tool = self.script_tool(doc, line, a, state)
            rest = args[i + 1:]
            if tool == "setup.py":
                tool = None  # setuptools commands (build_ext --inplace, ...) have their own options
            elif tool and rest and re.fullmatch(r"[a-z][a-z_-]*", rest[0]) and \
                    "add_subparsers" in script_source(tool).read_text(errors="replace"):
                tool, rest = f"{tool} {rest[0]}", rest[1:]  # a subcommand's options are in its own help
            self.check_args(doc, line, rest, tool, state)
            return

    def torchrun_command(self, doc, line, args, state):
        module, i = False, 0
        while i < len(args):
            a = args[i]
            if a in ("-m", "--module"):
                module = True
            elif a.startswith("-"):
                if "=" not in a and a not in ("--standalone", "--no-python", "--no_python") \
                        and i + 1 < len(args) and not args[i + 1].startswith("-"):
                    i += 1
            else:
                tool = self.module_tool(doc, line, a) if module else self.script_tool(doc, line, a, state)
                self.check_args(doc, line, args[i + 1:], tool, state)
                return
            i += 1

    def shell_script(self, doc, line, script, args, state):
        rel = self.script_tool(doc, line, script, state)
        if rel in FORWARDS:
            self.check_args(doc, line, args[1:], FORWARDS[rel], state)  # args[0]: the process count
        else:
            self.check_args(doc, line, args, None, state)

    def command(self, doc, line, tokens, state):
        words = []
        i = 0
        while i < len(tokens):  # redirects
            t = tokens[i]
            if t in (">", ">>", ">&", "&>", "<", ">|") and i + 1 < len(tokens):
                if t != "<" and not tokens[i + 1].isdigit():
                    self.created(state, tokens[i + 1])
                if words and words[-1].isdigit():
                    words.pop()  # 2>file: the descriptor
                i += 2
                continue
            words.append(t)
            i += 1
        while words and (ASSIGNMENT.match(words[0]) or words[0] in WRAPPERS):
            words = words[1:]
        if not words:
            return
        cmd, args = words[0], words[1:]
        base = os.path.basename(cmd)
        if base in IGNORED_COMMANDS:
            return
        if base == "cd":
            target = args[0] if args else ""
            rel = os.path.normpath(os.path.join(state["base"], target)) if target else "."
            state["base"] = rel if target and not target.startswith(("/", "~", "-")) and (REPO / rel).is_dir() \
                and not rel.startswith("..") else "."
            return
        if PYTHON_EXE.match(base):
            self.python_command(doc, line, args, state)
        elif base == "torchrun":
            self.torchrun_command(doc, line, args, state)
        elif base in ("bash", "sh", "source", "."):
            if "-c" in args:
                return
            rest = [a for a in args if not a.startswith("-")]
            if rest:
                k = args.index(rest[0])
                self.shell_script(doc, line, rest[0], args[k + 1:], state)
        elif cmd.endswith(".sh"):
            self.shell_script(doc, line, cmd, args, state)
        elif cmd.endswith(".py"):
            tool = self.script_tool(doc, line, cmd, state)
            self.check_args(doc, line, args, tool, state)
        else:
            if base in ("mkdir", "touch"):
                for a in args:
                    self.created(state, a)
                return
            if base in ("cp", "mv", "ln") and args:
                self.created(state, args[-1])
                args = args[:-1]
            if base in ("unzip",) and "-d" in args[:-1]:
                self.created(state, args[args.index("-d") + 1])
            self.check_args(doc, line, args, None, state)

    def shell_block(self, doc, block):
        state = {"base": ".", "created": set()}
        for line, text in logical_lines(block):
            try:
                commands = split_commands(text)
            except ValueError as err:
                self.report(doc, line, f"cannot split the command ({err}): {text}")
                continue
            for tokens in commands:
                self.command(doc, line, tokens, state)

    def yaml_block(self, doc, block):
        import yaml

        try:
            data = yaml.safe_load("\n".join(block.lines))
        except yaml.YAMLError as err:
            self.report(doc, block.line, f"YAML block does not parse: {' '.join(str(err).split())[:200]}")
            return
        if isinstance(data, dict) and data:
            self.yaml_blocks.append((doc, block.line, data))

    # -- documents
    def add(self, doc: str, text: str):
        """Static part of the checks for one document (doc: its repository-relative path)."""
        for n, line in enumerate(text.splitlines(), 1):
            if "../shared" in line:
                self.report(doc, n, "names ../shared (not part of a user's clone)")
        doc_dir = os.path.dirname(doc)
        for n, target in link_targets(text):
            if re.match(r"^[a-zA-Z][a-zA-Z0-9+.-]*:", target) or target.startswith("#"):
                continue
            path = target.split("#")[0].split("?")[0]
            rel = path.lstrip("/") if path.startswith("/") else os.path.normpath(os.path.join(doc_dir, path))
            if not (REPO / rel).exists():
                self.report(doc, n, f"link target not found: {target}")
        for block in fenced_blocks(text):
            if not block.closed:
                self.report(doc, block.line - 1, "fenced block is not closed")
            if block.not_run:
                continue
            if block.lang in SHELL_LANGS:
                self.shell_block(doc, block)
            elif block.lang in YAML_LANGS:
                self.yaml_block(doc, block)
            elif block.lang in PYTHON_LANGS and self.run_python:
                self.snippets.append((doc, block.line, "\n".join(block.lines) + "\n"))

    def finish(self) -> list[str]:
        """Run what needs processes (help texts, snippets) and the config checks; all problems, formatted."""
        tools = sorted({tool for _, _, tool, _ in self.flag_uses})
        with ThreadPoolExecutor(WORKERS) as pool:
            helps = pool.submit(prefetch_help, set(tools) | PREFETCH)
            runs = [(doc, line, pool.submit(run_snippet, code, self.cache)) for doc, line, code in self.snippets]
            self.config_checks()  # in-process, while the subprocesses run
            reported = set()
            helps.result()
            for doc, line, tool, flag in self.flag_uses:
                flags, error = help_flags(tool)
                if error:
                    if (doc, tool) not in reported:
                        reported.add((doc, tool))
                        self.report(doc, line, error)
                elif flag not in flags:
                    if not flags:
                        self.report(doc, line, f"{tool} takes no options: {flag}")
                        continue
                    close = difflib.get_close_matches(flag, sorted(flags), n=1)
                    hint = f" (did you mean {close[0]}?)" if close else ""
                    self.report(doc, line, f"{tool}: unknown option {flag}{hint}")
            for doc, line, future in runs:
                problem = future.result()
                if problem:
                    self.report(doc, line, problem)
        return [f"{d}:{n}: {m}" for d, n, m in sorted(self.problems, key=lambda p: (p[0], p[1]))]

    def config_checks(self):
        with _INPROCESS:
            self._config_checks()

    def _config_checks(self):
        for doc, line, key, value in self.key_uses:
            problem = key_problem(key, value)
            if problem:
                self.report(doc, line, problem)
        for doc, line, rel in self.config_files:
            problem = config_file_problem(rel)
            if problem:
                self.report(doc, line, problem)
        for doc, line, data in self.yaml_blocks:
            top = [str(k) for k in data if k != "_BASE_"]
            lower = top and all(k == k.lower() for k in top)
            for problem in classification_yaml_problems(data) if lower else yaml_key_problems(data):
                self.report(doc, line, problem)


def check_docs(docs: dict[str, str], cache: Path) -> list[str]:
    checker = DocChecker(cache)
    for doc, text in docs.items():
        checker.add(doc, text)
    return checker.finish()


def static_tools(docs: dict[str, str]) -> set[str]:
    """The scripts whose flags these documents use (no process run)."""
    checker = DocChecker(Path(), run_python=False)
    for doc, text in docs.items():
        checker.add(doc, text)
    return {tool for _, _, tool, _ in checker.flag_uses}


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    """Where the snippets' downloaded files are made; also gathers the scripts of every document of
    this module, so that one run collects all their help texts."""
    docs = {str(p.relative_to(REPO)): p.read_text() for p in doc_files()}
    docs.update({"docs/GUIDE.md": GOOD_DOC}, **{f"docs/BAD{i}.md": md(bad) for i, (bad, _) in enumerate(BAD_CASES)})
    PREFETCH.update(static_tools(docs))
    return tmp_path_factory.mktemp("doc_fixtures")


# ---------------------------------------------------------------- the tests

def doc_files() -> list[Path]:
    return sorted({p for pattern in DOC_GLOBS for p in REPO.glob(pattern)})


def test_docs(cache):
    docs = {str(p.relative_to(REPO)): p.read_text() for p in doc_files()}
    assert "README.md" in docs
    problems = check_docs(docs, cache)
    assert not problems, f"{len(problems)} problem(s) in the docs:\n" + "\n".join(problems)


def test_scripts_do_not_name_shared():
    problems = [f"{p.relative_to(REPO)}:{n}: names ../shared (not part of a user's clone)"
                for pattern in SHARED_GLOBS[2:] for p in sorted(REPO.glob(pattern))
                for n, line in enumerate(p.read_text().splitlines(), 1) if "../shared" in line]
    assert not problems, "\n".join(problems)


# ---- the parser itself, on synthetic documents

FENCE = "```"


def md(body: str) -> str:
    return textwrap.dedent(body).replace("'''", FENCE)


def test_fenced_blocks_and_logical_lines():
    text = md("""\
        Intro, with an indented block that is not read:

            .venv/bin/python train_net.py --no-such-flag

        '''bash
        # a comment
        .venv/bin/python train_net.py --config-file configs/x.yaml \\
            --num-gpus 2   # two processes
        bash tools/install.sh && bash tools/quickstart_pipeline.sh
        '''
        <!-- not run -->
        '''python
        raise SystemExit(1)
        '''
        - a list item:
          '''yaml
          MODEL:
            WEIGHTS: ""
          '''
        """)
    blocks = fenced_blocks(text)
    assert [(b.line, b.lang, b.not_run) for b in blocks] == [(6, "bash", False), (13, "python", True),
                                                             (17, "yaml", False)]
    assert blocks[2].lines == ["MODEL:", '  WEIGHTS: ""']
    assert logical_lines(blocks[0]) == [
        (7, ".venv/bin/python train_net.py --config-file configs/x.yaml      --num-gpus 2"),
        (9, "bash tools/install.sh && bash tools/quickstart_pipeline.sh")]
    assert split_commands(logical_lines(blocks[0])[1][1]) == [["bash", "tools/install.sh"],
                                                             ["bash", "tools/quickstart_pipeline.sh"]]
    assert split_commands("a 'x # y' b#c | d > out/f.txt; e") == [["a", "x # y", "b#c"], ["d", ">", "out/f.txt"], ["e"]]
    assert strip_comment("a 'x # y' b#c # comment") == "a 'x # y' b#c "


def test_placeholders_and_braces():
    assert expand_braces("SOFT_{Tiny,Small}{,_norm}.yaml") == [
        "SOFT_Tiny.yaml", "SOFT_Tiny_norm.yaml", "SOFT_Small.yaml", "SOFT_Small_norm.yaml"]
    assert expand_braces("x{a}y") == ["x{a}y"]
    for token in ("CFG", "output/.../model_final.pth", "<config>", "$DETECTRON2_DATASETS/coco", "configs/CONFIG.yaml",
                  "pretrained/soft_norm_N.pth"):
        assert is_placeholder(token), token
    for token in ("configs/ADE20K/upernet_soft_small_norm_512x512.yaml", "configs/Base-RCNN-SOFT-FPN.yaml",
                  "classification/configs/SOFT_Tiny_norm.yaml", "configs/COCO-Detection/x.yaml"):
        assert not is_placeholder(token), token
    assert parse_help("usage: x [-h] [--a A]\n           [--b]\n\noptions:\n  -h, --help  help\n  --c C, --c-alias C\n"
                      "                text --not-this\n    python x.py --nor-this\n") == {"--help", "--a", "--b",
                                                                                          "--c", "--c-alias"}


GOOD_DOC = md("""\
    # Guide

    See [the benchmarks](BENCHMARKS.md) and ![plot](peers_cost.png).

    '''bash
    .venv/bin/python train_net.py --config-file configs/quickstart/retinanet_soft_norm_tiny_shapes.yaml \\
        --num-gpus 2 MODEL.SOFT.MAX_LANDMARKS 0 SOLVER.MAX_ITER 10 OUTPUT_DIR output/x
    .venv/bin/python train_net.py --config-file CFG --eval-only MODEL.WEIGHTS output/.../model_final.pth
    python train_net.py --config-file configs/COCO-Detection/retinanet_soft_{tiny,small}_norm_fpn_1x.yaml --resume
    classification/dist_train.sh 8 --data /data/imagenet --config classification/configs/SOFT_Tiny_norm.yaml \\
        --output output/soft_norm_tiny --eval_raw_weights
    mkdir -p scratch && cp configs/Base-RCNN-SOFT-FPN.yaml scratch/ && ls scratch/Base-RCNN-SOFT-FPN.yaml
    CC=/usr/bin/gcc pip install --no-build-isolation -e .   # pip lines are not read
    .venv/bin/python -m pytest -q tests/test_docs.py
    .venv/bin/python benchmarks/landmark_bound.py detection --seeds 1 2
    .venv/bin/python setup.py build_ext --inplace
    '''

    '''yaml
    _BASE_: "../Base-RetinaNet-SOFT-FPN.yaml"
    MODEL:
      SOFT:
        MAX_LANDMARKS: 100
    '''

    '''yaml
    amp: none
    epochs: 3
    '''

    '''python
    import os
    assert os.path.isfile("soft_norm_tiny.pth") and os.path.isfile("configs/Base-RCNN-SOFT-FPN.yaml")
    '''
    """)


def test_a_correct_doc_passes(cache):
    assert check_docs({"docs/GUIDE.md": GOOD_DOC}, cache) == []


BAD_CASES = [
    ("'''bash\n.venv/bin/python train_net.py --config-file CFG --eval_only\n'''\n",
     "docs/BAD.md:2: train_net.py: unknown option --eval_only (did you mean --eval-only?)"),
    ("'''bash\nclassification/dist_train.sh 8 --data /data/imagenet --learning-rate 1e-3\n'''\n",
     "docs/BAD.md:2: classification/train.py: unknown option --learning-rate"),
    ("'''bash\npython train_net.py --config-file configs/quickstart/retinanet_soft_norm_tiny.yaml\n'''\n",
     "docs/BAD.md:2: file not found: configs/quickstart/retinanet_soft_norm_tiny.yaml"),
    ("'''bash\nbash tools/{install,setup}.sh\n'''\n",
     "docs/BAD.md:2: file not found: tools/setup.sh (from tools/{install,setup}.sh)"),
    ("'''bash\npython train_net.py --config-file CFG MODEL.SOFT.MAX_LANDMARK 100\n'''\n",
     "docs/BAD.md:2: unknown config key MODEL.SOFT.MAX_LANDMARK (did you mean MODEL.SOFT.MAX_LANDMARKS?)"),
    ("'''yaml\nMODEL:\n  SOFT:\n    MAX_LANDMARK: 100\n'''\n",
     "docs/BAD.md:2: unknown config key MODEL.SOFT.MAX_LANDMARK (did you mean MODEL.SOFT.MAX_LANDMARKS?)"),
    ("'''bash\npython benchmarks/landmark_bound.py detection --seedz 1\n'''\n",
     "docs/BAD.md:2: benchmarks/landmark_bound.py detection: unknown option --seedz (did you mean --seeds?)"),
    ("See [x](../missing.md).\n", "docs/BAD.md:1: link target not found: ../missing.md"),
    ("Data in `../shared/reference`.\n", "docs/BAD.md:1: names ../shared (not part of a user's clone)"),
]


@pytest.mark.parametrize("bad, expected", BAD_CASES)
def test_a_drift_is_reported(cache, bad, expected):
    assert check_docs({"docs/BAD.md": md(bad)}, cache) == [expected]


def test_a_failing_snippet_is_reported(cache):
    snippet = md("Text.\n\n'''python\nimport sys\nsys.exit('boom: the API changed')\n'''\n")
    problems = check_docs({"docs/BAD.md": snippet}, cache)
    assert len(problems) == 1 and problems[0].startswith("docs/BAD.md:4: python block failed (exit 1):"), problems
    assert problems[0].endswith("boom: the API changed"), problems
