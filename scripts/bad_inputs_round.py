"""A round of bad inputs, tried as a new user would: every `mm1` subcommand with bad paths, files, numbers
and config values, each in its own process. Verdict per case:

- ok: a non-zero exit and exactly one line on stderr, no "Traceback";
- traceback / several lines / accepted (exit 0 where the input is wrong) otherwise;
- wrote outside: any file created or changed in the fixture folder's parent other than inside the
  case's own --out (snapshot of names, sizes and mtimes before and after).

    python scripts/bad_inputs_round.py [--work /tmp/bad-inputs] [--jobs 2]

Prints one line per case and a summary; writes <work>/report.json. Needs no study outputs.
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import json
import os
import subprocess
import sys
from pathlib import Path


def fixtures(f: Path) -> dict[str, str]:
    f.mkdir(parents=True, exist_ok=True)
    (f / "adir").mkdir(exist_ok=True)
    files = {
        "empty": b"", "garbage": bytes(range(256)) * 4, "list.yaml": b"- 1\n- 2\n", "obj.json": b"{}",
        "deep.json": b"[" * 5000 + b"]" * 5000, "deep.yaml": b"a: " + b"[" * 5000 + b"]" * 5000 + b"\n",
        "false.yaml": b"false\n", "zero.yaml": b"0\n", "dup.yaml": b"train:\n  steps: 3\n  steps: 4\n",
        "octal.yaml": b"train:\n  steps: 010\n", "bool.yaml": b"train:\n  steps: true\n",
        "inf.yaml": b"train:\n  lr: .inf\n", "seed.yaml": b"train:\n  seed: 18446744073709551616\n",
        "two.yaml": b"a: 1\n---\nb: 2\n", "tab.yaml": b"train:\n\tsteps: 3\n",
        "bomb.yaml": b"a: &a [x, x, x, x, x, x, x, x, x]\n"
        + b"".join(f"{chr(98 + i)}: &{chr(98 + i)} [*{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}]\n".encode() for i in range(9)),
        "study-list.yaml": b"- study\n", "study-bad.yaml": b"study:\n  experiments:\n    x: {train.lr: -1}\n",
    }  # fmt: skip
    for name, data in files.items():
        (f / name).write_bytes(data)
    return {k: str(f / k) for k in ["adir", "empty", "garbage", "list.yaml", "deep.json", "deep.yaml", "obj.json"]}


def cases(f: Path, o: Path) -> list[list[str]]:
    bad = fixtures(f)
    bad["missing"] = str(f / "nope")
    out: list[list[str]] = []
    for k, p in bad.items():
        out += [
            ["config", "show", "--config", p], ["flops", "--config", p],
            ["tokenizer", "--manifest", p, "--out", f"{o}/tok-{k}"],
            ["pack", "--manifest", p, "--tokenizer", p, "--out", f"{o}/pack-{k}"],
            ["sft-pack", "--manifest", p, "--tokenizer", p, "--out", f"{o}/sftpack-{k}"],
            ["train", "--packed", p, "--tokenizer", p, "--out", f"{o}/train-{k}"],
            ["train", "--packed", p, "--tokenizer", p, "--out", f"{o}/train-init-{k}", "--init", p],
            ["encoder", "--manifest", p, "--tokenizer", p, "--out", f"{o}/enc-{k}"],
            ["upcycle", "--checkpoint", p, "--out", f"{o}/up-{k}", "--set", "model.moe.num_experts=2"],
            ["figure", "--metrics", p, "--scores", p, "--out", f"{o}/fig-{k}"],
            ["compare", "--id", "f", "--spec", p, "--cell", f"a={p}", "--out", f"{o}/cmp-{k}"],
            ["lessons", "--lessons", p, "--seeds", f"f={p}", "--out", f"{o}/les-{k}"],
            ["power", "--seeds", p, "--metric", "m", "--effects", "1", "--study-seeds", "3", "--out", f"{o}/pw-{k}"],
            ["eval", "score-captions", "--pred", p, "--refs", p],
            ["eval", "score-vqa", "--pred", p, "--questions", p, "--annotations", p],
            ["eval", "run", "--data", p, "--tokenizer", p, "--checkpoint", p, "--out", f"{o}/ev-{k}"],
        ]  # fmt: skip
    for name in ["false.yaml", "zero.yaml", "dup.yaml", "octal.yaml", "bool.yaml", "inf.yaml", "seed.yaml",
                 "two.yaml", "tab.yaml", "bomb.yaml"]:  # fmt: skip
        out.append(["config", "show", "--config", str(f / name)])
    out += [["config", "show", "--study", str(f / n)] for n in ("study-list.yaml", "study-bad.yaml", "list.yaml")]
    sets = ["train.seed=18446744073709551616", "train.seed=-1", "train.lr=.inf", "train.lr=nan", "train.lr=-1",
            "train.weight_decay=.inf", "train.steps=true", "train.steps=010", "train.steps=0", "train.steps=3.5",
            "train.steps=1e400", "model.decoder.num_layers=-2", "model.decoder.hidden_size=0",
            "model.connector.num_tokens=7", "model.encoder.image_size=33", "parallel.tp=3", "parallel.world_size=0",
            "train.micro_batch_size=0", "train.global_batch_size=3", "eval.shots=[0,true]", "eval.shots=[-1]",
            "data.mixture.caption=-1", "data.mixture.caption=nan", "world.seed=2**64", "train.nope=1",
            "nope.x=1", "train=5", "train.steps", "=3", "train.steps=[1,2]", "model.moe.num_experts=-4",
            "train.freeze=[brain]", "train.lr_schedule=sideways", "world.n_images=true"]  # fmt: skip
    out += [["config", "show", "--set", s] for s in sets]
    out += [["config", "show", "--config-json", j] for j in
            ['[]', '{"train": {"steps": 1, "steps": 2}}', '{"train": {"lr": NaN}}', "{" * 3000, "not json"]]  # fmt: skip
    for v in ["0", "-1", "nan", "inf", "1.5", "x"]:
        out.append(["plan", "--preset", "mm1-3b", "--mfu", v])
    for v in ["-1", "nan", "-inf"]:
        out += [["plan", "--preset", "mm1-3b", "--images-per-sequence", v], ["flops", "--images-per-sequence", v]]
    out += [["plan", "--preset", "mm1-3b", "--nodes", n] for n in ("0", "-2", "x")]
    out += [["plan", "--preset", "mm1-3b", "--gpu", "tpu"], ["presets", "../x"], ["presets", "nope"],
            ["config", "show", "--preset", "../../config/default"], ["config", "show", "--preset", "/etc/passwd"],
            ["compare", "--id", "../../x", "--spec", '{"title":"t","experiments":["a"],"metrics":["m"]}',
             "--cell", f"a={f}", "--out", f"{o}/cmp-id"],
            ["world", "--out", str(f / "obj.json")], ["world", "--out", str(f / "obj.json" / "sub")],
            ["config", "schema", "--write", str(f / "adir")], ["config", "schema", "--check", str(f / "garbage")],
            [], ["nope"], ["train", "--packed"]]  # fmt: skip
    return out


def snapshot(root: Path) -> dict[str, tuple[int, int]]:
    return {
        str(p): (p.stat().st_size, p.stat().st_mtime_ns)
        for p in root.rglob("*")
        if p.is_file() and "out" not in p.relative_to(root).parts[:1]
    }


def run(case: list[str], work: Path) -> dict:
    done = subprocess.run([sys.executable, "-m", "mm1.cli", *case], capture_output=True, text=True, timeout=600,
                          cwd=work, env=os.environ | {"MM1_DEBUG": ""})  # fmt: skip
    lines = [line for line in done.stderr.strip().splitlines() if line.strip()]
    if "Traceback" in done.stderr:
        verdict = "traceback"
    elif done.returncode == 0:
        verdict = "accepted"
    elif len(lines) != 1:
        verdict = "several lines"
    else:
        verdict = "ok"
    return {"case": case, "rc": done.returncode, "verdict": verdict, "last": lines[-1] if lines else ""}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--work", type=Path, default=Path("/tmp/bad-inputs"))
    ap.add_argument("--jobs", type=int, default=2)
    args = ap.parse_args()
    work = args.work.resolve()
    todo = cases(work / "fx", work / "out")
    before = snapshot(work)
    with cf.ThreadPoolExecutor(args.jobs) as ex:
        results = list(ex.map(lambda c: run(c, work), todo))
    after = snapshot(work)
    outside = sorted(k for k in after.keys() | before.keys() if before.get(k) != after.get(k))
    for r in results:
        print(f"{r['verdict']:<13} {r['rc']:>3} {' '.join(r['case'])[:140]} || {r['last'][:200]}")
    counts: dict[str, int] = {}
    for r in results:
        counts[r["verdict"]] = counts.get(r["verdict"], 0) + 1
    summary = {"tried": len(results), **counts, "files written outside --out": outside}
    (work / "report.json").write_text(json.dumps({"summary": summary, "results": results}, indent=1) + "\n")
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
