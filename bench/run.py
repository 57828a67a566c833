"""The benchmark harness: every bench script in turn, then one summary (measurements, not tests).

    python bench/run.py                         # everything: about 6 min on 2 cores
    python bench/run.py --quick                 # every script with --quick
    python bench/run.py --only loader generate  # some of them (--skip NAME ... leaves some out)
    make bench                                  # the first line

Each script runs as ``python bench/<name>.py ARGS --out <results>/<name>.json`` in its own process
group under a timeout; one that fails, times out or does not exist is recorded as such and the run
goes on. Then ``<results>/summary.json`` (every script's status, wall time, command and headline
rows; machine, git, packages) and ``<results>/summary.md`` (the headline rows as one Markdown table,
the exact command and the total wall time) are written.

The report every script writes (:func:`report`, :func:`write`): ``benchmark``, ``created``,
``quick``, ``machine``, ``git``, ``packages``, ``results`` (its details) and ``headline``, rows of
:func:`row` that compare a measurement with a baseline measured in the same invocation.
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import shlex
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mm1 import atomic
from mm1.provenance import git_state, machine, package_versions

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent


# -- the report every bench script writes ------------------------------------------------------------
HEADLINE_TYPES = {
    "name": (str,),
    "value": (int, float, type(None)),  # None: not measured here (e.g. gpu_mfu --dry-run)
    "unit": (str,),
    "baseline": (int, float, type(None)),
    "ratio": (int, float, type(None)),
    "goal": (str, type(None)),
    "met": (bool, type(None)),
}


def row(
    name: str,
    value: float | None,
    unit: str,
    baseline: float | None = None,
    goal: str | None = None,
    met: bool | None = None,
    ratio: float | None = None,
) -> dict[str, Any]:
    """One headline row; ``ratio`` defaults to value / baseline; ``value`` None: not measured."""
    if ratio is None and baseline and value is not None:
        ratio = value / baseline

    def num(x: float | None) -> float | None:
        return None if x is None else float(x)

    return {"name": name, "value": num(value), "unit": unit, "baseline": num(baseline), "ratio": num(ratio),
            "goal": goal, "met": met}  # fmt: skip


def check_headline(rows: Any) -> list[str]:
    """What is wrong with a report's ``headline`` (empty when nothing is)."""
    if not isinstance(rows, list) or not rows:
        return ["headline must be a non-empty list of rows"]
    errors = []
    for i, r in enumerate(rows):
        if not isinstance(r, dict):
            errors.append(f"headline[{i}] is a {type(r).__name__}, not an object")
            continue
        if set(r) != set(HEADLINE_TYPES):
            errors.append(f"headline[{i}] has keys {sorted(r)}; expected {sorted(HEADLINE_TYPES)}")
            continue
        for key, types in HEADLINE_TYPES.items():
            v = r[key]
            if not isinstance(v, types) or (isinstance(v, bool) and key not in ("met",)):
                errors.append(f"headline[{i}].{key} = {v!r} is not {' or '.join(t.__name__ for t in types)}")
            elif isinstance(v, float) and not math.isfinite(v):
                errors.append(f"headline[{i}].{key} = {v} is not finite")
    return errors


def report(benchmark: str, quick: bool, results: dict, headline: list[dict], **extra: Any) -> dict[str, Any]:
    """The JSON every bench script writes: provenance, ``results`` and the ``headline`` rows."""
    return {
        "benchmark": benchmark,
        "created": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "quick": quick,
        "machine": machine(),
        "git": git_state(ROOT),
        "packages": package_versions(),
        **extra,
        "results": results,
        "headline": headline,
    }


def write(path: Path, data: dict[str, Any]) -> None:
    """Write a report atomically, refusing one whose headline is malformed."""
    errors = check_headline(data.get("headline"))
    if errors:
        raise ValueError(f"{data.get('benchmark')}: bad headline: " + "; ".join(errors))
    atomic.write_text(Path(path), json.dumps(data, indent=2) + "\n")


# -- the scripts, in the order they run ------------------------------------------------------------------
@dataclass(frozen=True)
class Script:
    name: str
    args: tuple[str, ...]
    """Arguments in a full run."""
    timeout_s: int
    expect: str
    """Wall time of the full-run arguments on 2 cores (the 15 min budget adds these up)."""
    quick_args: tuple[str, ...] = ("--quick",)
    """Arguments under ``run.py --quick``."""


SCRIPTS = (  # full-run arguments chosen so that the whole run stays under 15 min on 2 cores (~10 min)
    Script("loader", (), 240, "~1 min: 2 sequence lengths, 1 and 2 workers, 12 training steps"),
    Script("generate", (), 360, "~1.5 min: tiny world + random checkpoint, 32 prompts x 0/4/8 shots x 3"),
    Script("train_throughput", (), 300, "~20 s (issue item 1)"),
    Script("scaling", (), 300, "~2 min (issue item 5)"),
    Script("workflow", ("--repeat", "2"), 300, "~2 min: dry runs of the miniature and the paper-30b all_figures, x2"),
    Script("dvc_hash", ("--repeat", "1"), 240, "~45 s: 1.6 GB of checkpoint shards, one sample each"),
    Script(
        "checksum_cost", (), 180, "~1 min: save/load of the study's checkpoints with and without the sha256 manifest"
    ),
    Script("stream_loader", (), 180, "~25 s: a paper-shape packed file, 0/1/2 loader workers, 8 steps"),
    Script("provenance_cost", (), 120, "~15 s: a 1 GiB sealed folder, hashed whole vs by its manifest"),
    Script("fetch_images", (), 120, "~45 s: 400 image URLs on 8 loopback hosts at 50 ms latency, 1/16 workers"),
    Script("gpu_mfu", (), 420, "~1 min as --dry-run without CUDA; on a GPU up to its --budget-s 300", ()),
)
NAMES = [s.name for s in SCRIPTS]
GPU_SCRIPT = "gpu_mfu"  # gets --dry-run where torch sees no CUDA device


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def _execute(cmd: list[str], timeout_s: float, env: dict[str, str]) -> tuple[int | None, str, str]:
    """(return code or None on timeout, stdout, stderr); the whole process group dies on a timeout."""
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)  # fmt: skip
    try:
        out, err = proc.communicate(timeout=timeout_s)
        return proc.returncode, out, err
    except BaseException:  # the timeout, or Ctrl-C: the script's children (snakemake, dvc) go too
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        if sys.exc_info()[0] is not subprocess.TimeoutExpired:
            raise
        return None, out, err


def _tail(text: str, lines: int = 20) -> str:
    return "\n".join(text.rstrip().splitlines()[-lines:])


def run_script(script: Script, bench_dir: Path, results: Path, quick: bool, timeout_s: float | None) -> dict:
    """Run one script; its entry of summary.json (status ok/failed/timeout/missing/bad-results)."""
    path, out = bench_dir / f"{script.name}.py", results / f"{script.name}.json"
    args = list(script.quick_args if quick else script.args)
    if script.name == GPU_SCRIPT and not _cuda():
        args.append("--dry-run")
    entry: dict[str, Any] = {"name": script.name, "command": None, "status": "missing", "wall_s": 0.0}
    if not path.is_file():
        return entry | {"error": f"{path} does not exist"}
    cmd = [sys.executable, str(path), *args, "--out", str(out)]
    entry["command"] = shlex.join(["python", _rel(path), *args, "--out", _rel(out)])
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    out.unlink(missing_ok=True)  # a stale file must not pass for this run's
    t0 = time.perf_counter()
    code, stdout, stderr = _execute(cmd, timeout_s or script.timeout_s, env)
    entry |= {"wall_s": round(time.perf_counter() - t0, 1), "returncode": code, "out": _rel(out)}
    if code is None:
        return entry | {"status": "timeout", "error": f"killed after {timeout_s or script.timeout_s} s",
                        "stderr_tail": _tail(stderr or stdout)}  # fmt: skip
    if code != 0:
        return entry | {"status": "failed", "error": f"exit code {code}", "stderr_tail": _tail(stderr or stdout)}
    try:
        data = json.loads(out.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        return entry | {"status": "bad-results", "error": f"{_rel(out)}: {exc}"}
    errors = check_headline(data.get("headline"))
    if errors:
        return entry | {"status": "bad-results", "error": "; ".join(errors)}
    return entry | {"status": "ok", "quick": data.get("quick"), "headline": data["headline"]}


def _rel(path: Path) -> str:
    try:
        return str(path.resolve().relative_to(ROOT))
    except ValueError:
        return str(path)


# -- the summary ----------------------------------------------------------------------------------------------
def _num(x: float | None) -> str:
    if x is None:
        return ""
    a = abs(x)
    if a >= 100:
        return f"{x:,.0f}"
    if a >= 10:
        return f"{x:.1f}"
    if a >= 1:
        return f"{x:.2f}"
    return f"{x:.3g}"


def _minutes(seconds: float) -> str:
    m, s = divmod(round(seconds), 60)
    return f"{m} min {s} s" if m else f"{s} s"


def markdown(summary: dict) -> str:
    """summary.md: the command, when and where, the headline table and the per-script table."""
    m, git = summary["machine"], summary["git"]
    commit = (git.get("commit") or "?")[:7] + (" (dirty)" if git.get("dirty") else "")
    lines = [
        "# Benchmarks",
        "",
        f"`{summary['command']}`: {_minutes(summary['total_wall_s'])} in all, {summary['created']}, "
        f"{m['cpu']} ({len(m.get('cores_used') or []) or m['cpu_count']} cores), commit {commit}.",
        "Each ratio is value / baseline, both measured in the same run.",
        "",
        "| benchmark | measurement | value | baseline | ratio | goal | met |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in summary["headline"]:
        base = f"{_num(r['baseline'])} {r['unit']}" if r["baseline"] is not None else ""
        ratio = f"{r['ratio']:.2f}×" if r["ratio"] is not None else ""
        met = {True: "yes", False: "**no**", None: ""}[r["met"]]
        value = f"{_num(r['value'])} {r['unit']}" if r["value"] is not None else "not measured"
        lines.append(f"| {r['benchmark']} | {r['name']} | {value} | {base} | {ratio} | "
                     f"{r['goal'] or ''} | {met} |")  # fmt: skip
    lines += ["", "| script | status | wall | command |", "|---|---|---|---|"]
    for s in summary["scripts"]:
        note = f" ({s['error']})" if s.get("error") else ""
        cmd = f"`{s['command']}`" if s["command"] else ""
        lines.append(f"| {s['name']} | {s['status']}{note} | {s['wall_s']:.0f} s | {cmd} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="pass --quick to every script (a few minutes in all)")
    p.add_argument("--only", nargs="+", choices=NAMES, metavar="NAME", help=f"run only these, of {NAMES}")
    p.add_argument("--skip", nargs="+", choices=NAMES, metavar="NAME", default=[], help="leave these out")
    p.add_argument("--bench-dir", type=Path, default=BENCH, help="where the scripts are (default: bench/)")
    p.add_argument("--results", type=Path, default=BENCH / "results", help="where the JSON and summary go")
    p.add_argument("--timeout", type=float, default=None, help="seconds per script, for all (default: each its own)")
    args = p.parse_args(argv)
    chosen = [s for s in SCRIPTS if (not args.only or s.name in args.only) and s.name not in args.skip]
    command = shlex.join(["python", "bench/run.py", *(sys.argv[1:] if argv is None else argv)])
    args.results.mkdir(parents=True, exist_ok=True)

    t0, entries = time.perf_counter(), []
    for i, script in enumerate(chosen, 1):
        print(f"[{i}/{len(chosen)}] {script.name} ...", end=" ", flush=True)
        entry = run_script(script, args.bench_dir, args.results, args.quick, args.timeout)
        entries.append(entry)
        rows = len(entry.get("headline", []))
        print(f"{entry['status']} in {entry['wall_s']:.0f} s" + (f", {rows} rows" if rows else "")
              + (f": {entry['error']}" if entry.get("error") else ""), flush=True)  # fmt: skip
        if entry.get("stderr_tail"):
            print("    " + entry["stderr_tail"].replace("\n", "\n    "), flush=True)

    summary = {
        "benchmark": "summary",
        "created": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "quick": args.quick,
        "command": command,
        "total_wall_s": round(time.perf_counter() - t0, 1),
        "machine": machine(),
        "git": git_state(ROOT),
        "packages": package_versions(),
        "scripts": [{k: v for k, v in e.items() if k != "headline"} for e in entries],
        "headline": [{"benchmark": e["name"], **r} for e in entries for r in e.get("headline", [])],
    }
    atomic.write_text(args.results / "summary.json", json.dumps(summary, indent=2) + "\n")
    atomic.write_text(args.results / "summary.md", markdown(summary))
    ok = sum(e["status"] == "ok" for e in entries)
    print(f"{ok}/{len(entries)} ok in {_minutes(summary['total_wall_s'])}; wrote {_rel(args.results / 'summary.md')}")
    return (
        1 if any(e["status"] in ("failed", "timeout", "bad-results") for e in entries) else 0
    )  # missing: not yet written


if __name__ == "__main__":
    sys.exit(main())
