"""Item 3: Snakemake killed mid-DAG -> the rerun completes and no half-written output is ever used.

Each case starts ``snakemake results/pack/base/train.parquet`` (world -> tokenizer -> pack) in a
project copy, waits until a stage is in the middle of writing an output (an mm1.atomic temp file
exists under its folder), signals the whole process group, reruns, and compares every output with
the uninterrupted reference run (_workflowkit). Outputs that were complete before the signal must
survive untouched (faultkit.assert_intact: a change is reported as data lost).

- SIGKILL (the OOM killer, ``kill -9``, a lost node) while pack writes: Snakemake cannot clean up,
  so its lock stays. The rerun is refused with a message that names the lock and ``--unlock`` (what
  a user sees); after ``snakemake --unlock`` a plain rerun completes: profiles/default sets
  rerun-incomplete, and the killed job's incomplete markers make Snakemake redo it.
- SIGINT (Ctrl-C) while the world writes its folders: Snakemake stops its job, removes its outputs
  and releases the lock; a plain rerun completes. (Left out for the suite's time budget: SIGKILL of
  the world stage, which passes, and SIGTERM, Snakemake's same graceful path as SIGINT.)

The static test scans src/mm1 for writes that could leave half a stage output behind.
"""

from __future__ import annotations

import ast
import signal
from pathlib import Path

import _workflowkit
import pytest
from _workflowkit import (
    STAGES,
    TARGET,
    Launch,
    differences,
    finish,
    incomplete,
    locks,
    temp_files,
    writing,
)
from faultkit import ROOT, assert_intact, snapshot, wait_for

reference = _workflowkit.reference  # the session fixture: one reference run for items 3 and 9
pytestmark = pytest.mark.faults(item=3)


def interrupt(project: Path, stage: str, signum: int) -> tuple[Launch, dict[str, str]]:
    """Run TARGET, send ``signum`` to its group while ``stage`` writes an output, and return the
    launch (ended) and a snapshot of the stages that had finished before it."""
    launch = Launch(project, TARGET)
    try:
        wait_for(writing(project, stage, launch), 300, f"{stage} writing an output", poll=0.005)
        launch.signal(signum)
        launch.wait(120)
    finally:
        launch.kill()
    upstream = STAGES[: STAGES.index(stage)]
    done = {f"{s}/{k}": v for s in upstream for k, v in snapshot(project / "results" / s).items()}
    return launch, done


def assert_like_the_reference(project: Path, reference, done: dict[str, str]) -> None:
    assert temp_files(project / "results") == [], "temp files of the interrupted writes were left in results/"
    assert_intact(project / "results", done, "outputs finished before the interruption")
    assert differences(project, reference) == []
    assert incomplete(project) == [] and locks(project) == []


@pytest.mark.slow
def test_sigkill_while_pack_writes_then_unlock_and_rerun_gives_the_reference_outputs(reference, tmp_path: Path):
    """kill -9 of Snakemake and its job while pack writes an output: the lock stays (the rerun is
    refused naming it), the job is marked incomplete, and after --unlock a plain rerun redoes pack
    only and leaves no temp file of the killed write."""
    project = reference.fresh(tmp_path / "mm1")
    _, done = interrupt(project, "pack", signal.SIGKILL)
    assert locks(project), "a snakemake killed with SIGKILL cannot release its lock"
    assert incomplete(project), "the killed pack job's outputs must be marked incomplete"

    refused = finish(project, TARGET, check=False)
    assert refused.returncode != 0, refused.output[-2000:]
    assert "Directory cannot be locked" in refused.output and "--unlock" in refused.output, refused.output[-2000:]

    finish(project, "--unlock")
    rerun = finish(project, TARGET)
    assert "rule pack:" in rerun.output and "rule tokenizer:" not in rerun.output, rerun.output[-3000:]
    assert_like_the_reference(project, reference, done)


@pytest.mark.slow
def test_ctrl_c_while_the_world_is_written_then_a_plain_rerun_gives_the_reference_outputs(reference, tmp_path: Path):
    """SIGINT to the group while the world stage writes its shards (directory outputs): Snakemake
    stops, removes the half-written folders and releases its lock; a plain rerun completes."""
    project = reference.fresh(tmp_path / "mm1")
    launch, done = interrupt(project, "world", signal.SIGINT)
    assert launch.proc.returncode != 0, launch.output()[-2000:]
    assert locks(project) == [], "snakemake stopped by SIGINT must release its lock"

    rerun = finish(project, TARGET)
    assert "rule world:" in rerun.output
    assert_like_the_reference(project, reference, done)


# -- the static check ------------------------------------------------------------------------------
SRC = ROOT / "src" / "mm1"
# Calls that write a file at the path they are given (a buffer or no argument is not a write).
WRITERS = {"write_text", "write_bytes", "write_parquet", "write_csv", "write_json", "write_ipc", "savefig"}
SAVERS = {("torch", "save"), ("dist_checkpointing", "save"), ("np", "save"), ("tarfile", "open")}
WRITE_WITH = {"write_with", "atomic.write_with"}  # write(tmp) on a temp file, renamed over the output
# (module, function, call) -> why that direct write cannot leave half a stage output behind.
ALLOWED = (
    {
        ("train/state.py", "save", name): "inside step_N.partial, which is renamed to step_N only once complete"
        for name in ("dist_checkpointing.save", "torch.save", "write_csv", "write_text")
    }
    | {
        ("train/checkpoint.py", "save", name): "inside <out>.partial, swapped in by rename once complete"
        for name in ("dist_checkpointing.save", "write_text")
    }
    | {
        (
            "data/download.py",
            "_fetch_once",
            "open",
        ): "a resumable download into <name>.partial, renamed after its checks",
        (
            "train/signals.py",
            "report_exit",
            "write_text",
        ): "the exit status for the launcher, in its temp file; no output",
        (
            "train/metrics.py",
            "_append_row",
            "open",
        ): "a DVCLive history row appended in one write(2): a kill lands before or after it, never inside",
        (
            "data/packed_io.py",
            "__init__",
            "open",
        ): "PackedWriter writes the temp file (or the temp folder's shard) that atomic.write_with/write_dir_with publish",
    }
    | {
        ("eval/ptb_java.py", "java_tokenize", name): "the tokenizer's input files, in a temporary folder; no output"
        for name in ("write_bytes", "write_text")
    }
)


def _call_name(call: ast.Call, modules: frozenset[str] = frozenset()) -> str | None:
    """``open``, ``torch.save``, ``write_text`` (a method); ``module.function`` for a function of a
    module imported in this file (``formats.write_text``: that one is scanned where it is defined)."""
    func = call.func
    if isinstance(func, ast.Name):  # a plain function: open(), or mm1.atomic's write_* imported by name
        return func.id
    if isinstance(func, ast.Attribute):
        owner = func.value.id if isinstance(func.value, ast.Name) else None
        if (owner, func.attr) in SAVERS or owner in modules:
            return f"{owner}.{func.attr}"
        return func.attr
    return None


def _imported_modules(tree: ast.Module) -> frozenset[str]:
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import | ast.ImportFrom):
            names |= {(a.asname or a.name).split(".")[0] for a in node.names}
    return frozenset(names)


def _writes_a_path(call: ast.Call, name: str, buffers: set[str]) -> bool:
    if name == "open" or name == "tarfile.open":
        mode = call.args[1] if len(call.args) > 1 else next((k.value for k in call.keywords if k.arg == "mode"), None)
        modes = [n.value for n in ast.walk(mode) if isinstance(n, ast.Constant)] if mode else []  # "ab" if x else "wb"
        return any(isinstance(m, str) and any(c in m for c in "wax") for m in modes)
    first = call.args[0] if call.args else next((k.value for k in call.keywords if k.arg in ("file", "path")), None)
    if name in WRITERS and isinstance(call.func, ast.Attribute):  # path.write_text(), df.write_csv(path)
        return first is not None and not (isinstance(first, ast.Name) and first.id in buffers)
    return name in {f"{owner}.{fn}" for owner, fn in SAVERS}  # torch.save & co


class _Scan(ast.NodeVisitor):
    """Direct writes in one module, outside the callbacks handed to mm1.atomic.write_with (and the
    helpers those callbacks call: they write the temp file)."""

    def __init__(self, tree: ast.Module):
        self.modules = _imported_modules(tree)
        self.callbacks = self._callbacks(tree)
        self.found: list[tuple[int, str, str]] = []  # (line, function, call)
        self.stack: list[str] = []
        self.buffers: list[set[str]] = [set()]
        self.visit(tree)

    @staticmethod
    def _callbacks(tree: ast.Module) -> set[str]:
        names: set[str] = set()
        lambdas = []
        for node in ast.walk(tree):
            if isinstance(node, ast.Call) and _call_name(node) in WRITE_WITH and len(node.args) > 1:
                cb = node.args[1]
                if isinstance(cb, ast.Name):
                    names.add(cb.id)
                elif isinstance(cb, ast.Lambda):
                    lambdas.append(cb)
        for cb in lambdas:  # lambda tmp: helper(tmp, ...) -> helper writes the temp file
            names |= {n.func.id for n in ast.walk(cb) if isinstance(n, ast.Call) and isinstance(n.func, ast.Name)}
        return names

    def _inside_callback(self) -> bool:
        return any(name in self.callbacks or name == "<lambda-callback>" for name in self.stack)

    def visit_FunctionDef(self, node):
        self.stack.append(node.name)
        self.buffers.append(set())
        self.generic_visit(node)
        self.buffers.pop()
        self.stack.pop()

    visit_AsyncFunctionDef = visit_FunctionDef

    def visit_Assign(self, node):
        if isinstance(node.value, ast.Call) and _call_name(node.value) in ("BytesIO", "StringIO"):
            self.buffers[-1] |= {t.id for t in node.targets if isinstance(t, ast.Name)}
        self.generic_visit(node)

    def visit_Call(self, node):
        name = _call_name(node, self.modules)
        if name in WRITE_WITH and len(node.args) > 1 and isinstance(node.args[1], ast.Lambda):
            self.visit(node.args[0])
            self.stack.append("<lambda-callback>")
            self.visit(node.args[1])
            self.stack.pop()
            return
        if name and not self._inside_callback() and _writes_a_path(node, name, self.buffers[-1]):
            self.found.append((node.lineno, self.stack[-1] if self.stack else "<module>", name))
        self.generic_visit(node)


def direct_writes(src: Path = SRC) -> list[tuple[str, int, str, str]]:
    """(module, line, function, call) of every write to a path that does not go through mm1.atomic."""
    found = []
    for path in sorted(src.rglob("*.py")):
        rel = str(path.relative_to(src))
        found += [(rel, line, fn, call) for line, fn, call in _Scan(ast.parse(path.read_text(), str(path))).found]
    return found


def test_scan_finds_direct_writes_and_passes_atomic_callbacks(tmp_path: Path):
    """The scan itself: it must see each kind of direct write, and pass writes to a temp file."""
    (tmp_path / "m.py").write_text(
        "import io, torch\n"
        "from mm1.atomic import write_with\n"
        "def bad(df, p, fig, obj):\n"
        "    p.write_text('x'); df.write_parquet(p); df.write_csv(p); fig.savefig(p)\n"
        "    torch.save(obj, p)\n"
        "    with open(p, 'ab' if p.exists() else 'wb') as f: f.write(b'')\n"
        "def good(df, p, fig):\n"
        "    text = df.write_csv(); buf = io.BytesIO(); fig.savefig(buf)\n"
        "    write_with(p, lambda tmp: df.write_parquet(tmp)); write_with(p, _helper); write_with(p, write)\n"
        "    def write(tmp):\n"
        "        open(tmp, 'w').write(text)\n"
        "    with open(p) as f: f.read()\n"
        "def _helper(tmp):\n"
        "    tmp.write_bytes(b'')\n"
    )
    found = direct_writes(tmp_path)
    assert [(fn, call) for _, _, fn, call in found] == [
        ("bad", "write_text"),
        ("bad", "write_parquet"),
        ("bad", "write_csv"),
        ("bad", "savefig"),
        ("bad", "torch.save"),
        ("bad", "open"),
    ], found


def test_every_write_to_a_stage_output_is_atomic():
    """Every file src/mm1 writes goes through mm1.atomic (a temp file renamed over the output), or
    is in ALLOWED with the reason it cannot leave half an output behind."""
    found = direct_writes()
    unexplained = [
        f"src/mm1/{m}:{line} {call} in {fn}()" for m, line, fn, call in found if (m, fn, call) not in ALLOWED
    ]
    assert unexplained == [], "direct (non-atomic) writes; use mm1.atomic.write_with:\n" + "\n".join(unexplained)
    stale = set(ALLOWED) - {(m, fn, call) for m, _, fn, call in found}
    assert not stale, f"ALLOWED entries that match no write any more (remove them): {sorted(stale)}"
