"""What planning the workflow costs: ``snakemake -n`` of the paper-scale DAG against the miniature one.

Times, each in a fresh empty working directory (so every job of the DAG is planned, and nothing of
the repository's own ``.snakemake`` or ``results/`` is read or locked; ``--nolock`` as well), with
``workflow/``, ``config/`` and ``profiles/`` linked in from the repository:

- baseline: ``snakemake -n all_figures``: the miniature study (config/default.yaml +
  config/study.yaml, the local profile), every figure and the lessons;
- paper scale: ``snakemake -n all_figures --workflow-profile profiles/slurm --configfile
  config/paper-30b.yaml``: the same figures over the paper's cells around MM1-30B, every training
  job sized by the layout planner for H100 nodes (README, "Scaling up");
- floor: ``snakemake --version``, the CLI's start-up, included in both. It includes importing
  every installed executor plugin; the SLURM one runs ``scontrol show config`` at import (10 s
  timeout), which waits the full 10 s where scontrol finds no slurmctld to answer, so that probe is
  timed on its own too.

Reports seconds (fastest of ``--repeat``), jobs planned and seconds per job; the headline ratios
are paper / miniature. Writes bench/results/workflow.json.

    python bench/workflow.py             # 3 samples each, about 3 minutes on 2 cores (bench/run.py: 2)
    python bench/workflow.py --quick     # 1 sample each
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from run import ROOT, report, row, write

LINKED = ("workflow", "config", "profiles")
TARGET = "all_figures"
CASES = {
    "miniature": ["-n", TARGET, "--nolock"],
    "paper-30b": [
        "-n",
        TARGET,
        "--nolock",
        "--workflow-profile",
        "profiles/slurm",
        "--configfile",
        "config/paper-30b.yaml",
    ],
}
FLOOR = ["--version"]
SNAKEMAKE = shutil.which("snakemake") or str(Path(sys.executable).parent / "snakemake")  # this venv's


def workdir(root: Path) -> Path:
    """An empty working directory with the repository's workflow, configs and profiles linked in."""
    root.mkdir(parents=True)
    for name in LINKED:
        (root / name).symlink_to(ROOT / name, target_is_directory=True)
    return root


def timed(args: list[str], cwd: Path) -> tuple[float, str]:
    """Wall seconds and the output (stdout + stderr) of one snakemake command, which must succeed."""
    t0 = time.perf_counter()
    proc = subprocess.run([SNAKEMAKE, *args], cwd=cwd, capture_output=True, text=True)
    seconds = time.perf_counter() - t0
    if proc.returncode != 0:
        raise RuntimeError(
            f"snakemake {' '.join(args)} failed ({proc.returncode}) in {cwd}:\n{proc.stdout}\n{proc.stderr}"
        )
    return seconds, proc.stdout + proc.stderr


def jobs_planned(output: str) -> int:
    """The ``total`` of a dry run's job-stats table."""
    found = re.findall(r"^total\s+(\d+)\s*$", output, flags=re.MULTILINE)
    if not found:
        raise ValueError(f"no job count in the dry run's output:\n{output[-2000:]}")
    return int(found[-1])


def scontrol_probe() -> dict:
    """What the SLURM executor plugin's import-time ``scontrol show config`` (timeout 10 s) costs here."""
    if not shutil.which("scontrol"):
        return {"command": "scontrol show config", "seconds": None, "note": "no scontrol: the plugin skips it"}
    t0 = time.perf_counter()
    try:
        proc = subprocess.run(["scontrol", "show", "config"], capture_output=True, text=True, timeout=10)
        answered = proc.returncode == 0
    except subprocess.TimeoutExpired:
        answered = False
    return {"command": "scontrol show config", "seconds": time.perf_counter() - t0, "answered": answered}


def measure(tmp: Path, repeat: int) -> dict:
    floor = [timed(FLOOR, tmp)[0] for _ in range(repeat)]
    out: dict = {"snakemake --version": {"command": "snakemake --version", "seconds": min(floor), "samples": floor}}
    out["scontrol probe"] = scontrol_probe()
    for name, cmd in CASES.items():
        samples, jobs = [], set()
        for i in range(repeat):
            seconds, output = timed(cmd, workdir(tmp / f"{name}-{i}"))  # a fresh directory each time
            samples.append(seconds)
            jobs.add(jobs_planned(output))
        if len(jobs) != 1:
            raise RuntimeError(f"{name}: the dry runs planned different job counts {sorted(jobs)}")
        seconds, n = min(samples), jobs.pop()
        out[name] = {
            "command": " ".join(["snakemake", *cmd]),
            "jobs": n,
            "seconds": seconds,
            "samples": [round(s, 3) for s in samples],
            "seconds_after_startup": seconds - min(floor),
            "ms_per_job": 1000 * seconds / n,
        }
    return out


def headline(res: dict) -> list[dict]:
    mini, paper, floor = res["miniature"], res["paper-30b"], res["snakemake --version"]
    dag = f"snakemake -n {TARGET}"
    return [
        row(f"{dag}: paper-30b (slurm profile) vs miniature, planning time", paper["seconds"], "s", mini["seconds"]),
        row(f"{dag}: paper-30b vs miniature, jobs planned", paper["jobs"], "jobs", mini["jobs"]),
        row(f"{dag}: paper-30b vs miniature, time per job", paper["ms_per_job"], "ms/job", mini["ms_per_job"]),
        row(
            f"{dag}: paper-30b vs miniature, planning time less start-up",
            paper["seconds_after_startup"],
            "s",
            mini["seconds_after_startup"],
        ),  # fmt: skip
        row(f"{dag}: miniature vs snakemake start-up (--version)", mini["seconds"], "s", floor["seconds"]),
    ]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="one sample of each")
    p.add_argument("--repeat", type=int, default=3, help="samples per timing; the fastest is reported")
    p.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "workflow.json")
    args = p.parse_args(argv)
    repeat = 1 if args.quick else args.repeat
    with tempfile.TemporaryDirectory(prefix="bench-workflow-") as tmp:
        results = measure(Path(tmp), repeat)
    version = subprocess.run([SNAKEMAKE, *FLOOR], capture_output=True, text=True).stdout.strip()
    setup = {"repeat": repeat, "target": TARGET, "snakemake": version, "workdir": "fresh, empty (every job planned)"}
    write(args.out, report("workflow", args.quick, results, headline(results), setup=setup))
    for name, r in results.items():
        if r["seconds"] is None:
            continue
        extra = f"  {r['jobs']:>4} jobs  {r['ms_per_job']:6.1f} ms/job" if "jobs" in r else ""
        extra += "" if r.get("answered", True) else "  (no answer: timed out)"
        print(f"{name:<22}{r['seconds']:8.2f} s{extra}")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
