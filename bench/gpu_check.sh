#!/usr/bin/env bash
# The GPU checks as one prepared command, for a machine with a CUDA GPU and no network:
#
#     bash bench/gpu_check.sh                 # on the GPU machine: ~8 min at most; $OUT/gpu_check.json
#     bash bench/gpu_check.sh --fetch-wheels  # here, with pip's network: fill .whl/ for it
#
# 1. Installs the wheels in .whl/ into /tmp/site (pip --no-index --no-deps) and puts src/ on
#    PYTHONPATH (the project needs Python 3.11 to pip-install; the GPU image's python3 is 3.12).
# 2. GPU tests (pytest -m gpu tests/bench/test_gpu_mfu.py, JUnit XML), mm1.parallel.compat off
#    (it patches only where CUDA is unavailable):
#    - covered: the tiny dense and MoE MM1 models on CUDA, megatron unpatched, NCCL (a group of
#      one), against the same models on CPU with compat on; TP=2 and EP=2 on CUDA tensors against
#      the one-process CUDA result. With ONE GPU both ranks share cuda:0 and their collectives
#      go over gloo: NCCL refuses two ranks on one device. With 2+ GPUs they still use gloo.
#    - not covered on the GPU: PP=2 (megatron's batched p2p needs NCCL; gloo would need compat's
#      CPU-only flags), the distributed optimizer (DP=2), TP/EP over NCCL, and
#      tests/parallel/test_model_equality.py and test_layouts.py themselves: they keep every
#      tensor on the CPU and their 2-rank worker asks for cuda:1, so on a CUDA machine (backend
#      auto = NCCL) they are not GPU tests; with CUDA hidden they run as the CPU tests CI runs.
# 3. bench/gpu_mfu.py: MFU of mm1-ablation (1.2B decoder + ViT-L/14@336 + C-Abstractor 144) in
#    bf16 at seq 4096, the largest micro-batch that fits, the layer spec use_transformer_engine()
#    picks (Transformer Engine cannot be carried: transformer-engine-torch is source only and must
#    be compiled against the machine's torch, so expect the local spec). Then, at the same shapes,
#    each speed lever off vs on (--levers; GPU_MFU_LEVERS, default all): recompute selective vs none,
#    parallel.fusions, parallel.attention_backend=cudnn, parallel.compile_layers, and all three on
#    (bench/gpu_mfu.py's LEVERS); a lever the time budget does not reach is recorded unmeasured.
# 4. Merges both into $OUT/gpu_check.json (headline rows: MFU, TFLOP/s, tests) and prints one line.
#
# Wheels the GPU image lacks (KINDS.md's package list; cp312, manylinux x86-64), about 5.4 MB:
#   megatron-core==0.16.1 (2.6 MB), pydantic (0.5 MB), pydantic-core (2.3 MB), annotated-types,
#   typing-inspection, typing-extensions (pydantic needs >= 4.16; the image's may be older).
# Versions are this checkout's venv's. torch, numpy, packaging, pyyaml, pytest, pytest-timeout are
# on the image already; no CUDA torch is ever carried.
# On the device tool: run(command="bash bench/gpu_check.sh", carry=[".whl"], timeout_s=540).
# Knobs: GPU_CHECK_BUDGET_S (470), OUT (bench/results/gpu_check), PYTHON (python3), WHEELS_DIR (.whl),
# GPU_MFU_ARGS (extra gpu_mfu.py flags), GPU_MFU_LEVERS (all; "" for none), GPU_CHECK_TESTS (1; 0 skips
# step 2 to leave its 150 s to the levers). A rehearsal here, without a GPU:
#   PYTHON=.venv/bin/python WHEELS_DIR=none OUT=/tmp/gpu_check GPU_MFU_ARGS=--dry-run \
#     GPU_MFU_LEVERS=recompute,fusions,attention_backend bash bench/gpu_check.sh
set -uo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
WHEELS=(megatron-core pydantic pydantic-core annotated-types typing-inspection typing-extensions)

fetch_wheels() {
    local py=${PYTHON:-$ROOT/.venv/bin/python}
    [ -x "$py" ] || py=python3
    local exclude
    exclude=$(git rev-parse --git-path info/exclude)
    grep -qxF '/.whl/' "$exclude" 2>/dev/null || echo '/.whl/' >>"$exclude"
    local pins
    pins=$("$py" -c 'import sys; from importlib.metadata import version
print(" ".join(f"{n}=={version(n)}" for n in sys.argv[1:]))' "${WHEELS[@]}") || return 1
    rm -rf .whl && mkdir -p .whl
    # shellcheck disable=SC2086  # pins: one word per package
    "$py" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
        --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_24_x86_64 \
        --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 --platform manylinux1_x86_64 \
        -d .whl $pins || return 1
    ls -l .whl && du -sh .whl
}

if [ "${1:-}" = "--fetch-wheels" ]; then
    fetch_wheels
    exit $?
fi

START=$(date +%s)
BUDGET=${GPU_CHECK_BUDGET_S:-470}  # the whole command, install to summary (issue: <= 8 min)
OUT=${OUT:-$ROOT/bench/results/gpu_check}
PY=${PYTHON:-python3}
WHL=${WHEELS_DIR:-.whl}
mkdir -p "$OUT"
exec > >(tee "$OUT/gpu_check.log") 2>&1
left() { echo $((BUDGET - ($(date +%s) - START))); }
upto() { local s; s=$(left); ((s > $1)) && s=$1; ((s < 1)) && s=1; echo "$s"; }  # seconds for a step: at most $1

if compgen -G "$WHL/*.whl" >/dev/null; then
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site "$WHL"/*.whl ||
        { echo "gpu_check: installing .whl/ failed"; exit 1; }
    export PYTHONPATH=/tmp/site:$ROOT/src
else
    echo "gpu_check: no .whl/ (run 'bash bench/gpu_check.sh --fetch-wheels' where pip has a network); using what is installed"
    export PYTHONPATH=$ROOT/src${PYTHONPATH:+:$PYTHONPATH}
fi
export PYTHONUNBUFFERED=1 CUDA_DEVICE_MAX_CONNECTIONS=1
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm,clocks.max.sm --format=csv >"$OUT/nvidia_smi.csv" 2>&1 || true
"$PY" -c 'import torch, megatron.core, mm1; print("gpu_check: torch", torch.__version__, "cuda", torch.cuda.is_available(), torch.cuda.device_count(), "GPU(s)")' ||
    { echo "gpu_check: the project does not import"; exit 1; }

# 2. GPU tests: at most 150 s
TESTS_RC=0
if [ "${GPU_CHECK_TESTS:-1}" != 0 ]; then
    timeout -k 10 "$(upto 150)" "$PY" -m pytest -q -p no:cacheprovider -m gpu \
        tests/bench/test_gpu_mfu.py --junitxml "$OUT/gpu_tests.xml"
    TESTS_RC=$?
fi

# 3. MFU: what is left, less 20 s for the summary; gpu_mfu.py's own budget (search + timed steps)
#    leaves 60 s for imports, the model's first build and the matmul baseline.
MFU_S=$(upto $(($(left) - 20)))
# shellcheck disable=SC2086  # GPU_MFU_ARGS: extra flags, e.g. "--recompute full" or "--dry-run"
timeout -k 10 "$MFU_S" "$PY" bench/gpu_mfu.py --out "$OUT/gpu_mfu.json" --budget-s $((MFU_S > 120 ? MFU_S - 60 : 60)) \
    --levers "${GPU_MFU_LEVERS-all}" ${GPU_MFU_ARGS:-}
MFU_RC=$?

# 4. One JSON, one line.
"$PY" - "$OUT" "$TESTS_RC" "$MFU_RC" "$(( $(date +%s) - START ))" <<'EOF'
import datetime, json, sys, xml.etree.ElementTree as ET
from pathlib import Path

out, tests_rc, mfu_rc, seconds = Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
cases = []
if (out / "gpu_tests.xml").exists():
    for case in ET.parse(out / "gpu_tests.xml").iter("testcase"):
        problem = next((c for c in case if c.tag in ("failure", "error", "skipped")), None)
        cases.append({
            "name": f"{case.get('classname')}::{case.get('name')}",
            "outcome": "passed" if problem is None else {"failure": "failed"}.get(problem.tag, problem.tag),
            "seconds": float(case.get("time", 0)),
            "message": None if problem is None else (problem.get("message") or "")[:500],
        })
count = {k: sum(c["outcome"] == k for c in cases) for k in ("passed", "failed", "error", "skipped")}
mfu = json.loads((out / "gpu_mfu.json").read_text()) if (out / "gpu_mfu.json").exists() else {}
run = mfu.get("results", {}).get("run", {})
ran = count["passed"] + count["failed"] + count["error"]
tests_row = {
    "name": "GPU equality tests passed (compat off: 1 process on NCCL vs CPU; TP=2, EP=2 on one GPU over gloo)",
    "value": count["passed"], "unit": "tests", "baseline": ran, "ratio": count["passed"] / ran if ran else None,
    "goal": "all pass", "met": bool(ran) and count["passed"] == ran,
}
result = {
    "benchmark": "gpu_check",
    "created": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
    "machine": mfu.get("machine"),
    "packages": mfu.get("packages"),
    "seconds": seconds,
    "tests": {"exit_code": tests_rc, **count, "cases": cases,
              "not_covered": "PP=2, DP=2 distributed optimizer, TP/EP over NCCL (one GPU); "
                             "tests/parallel/* themselves are CPU tests"},
    "mfu": {"exit_code": mfu_rc, "status": mfu.get("results", {}).get("status"),
            "layer_spec": mfu.get("setup", {}).get("layer_spec"), "chosen": run.get("chosen"),
            "search": run.get("search"), "step_time_s": run.get("step_time_s"), "tflops": run.get("tflops"),
            "mfu": run.get("mfu"), "peak_tflops": mfu.get("setup", {}).get("peak_tflops"),
            "matmul_tflops": mfu.get("setup", {}).get("matmul_tflops")},
    "levers": [{"lever": row["lever"], "speedup": row.get("speedup"),
                **{f"{side}_{key}": row[side].get(key) for side in ("off", "on")
                   for key in ("mfu", "step_time_s", "not_measured")}}
               for row in mfu.get("results", {}).get("levers", [])],
    "headline": [*mfu.get("headline", []), tests_row],
}
(out / "gpu_check.json").write_text(json.dumps(result, indent=2) + "\n")
m, spec = result["mfu"], (result["mfu"]["layer_spec"] or {}).get("decoder", "?")
what = (f"MFU {100 * m['mfu']:.1f}% ({m['tflops']:.0f} TFLOP/s, {spec} spec, recompute {m['chosen']['recompute']}, "
        f"micro-batch {m['chosen']['micro_batch']} x {m['chosen']['accumulation']}), goal >= 50%: "
        f"{'met' if m['mfu'] >= 0.5 else 'not met'}") if m["mfu"] is not None else f"MFU not measured ({m['status']})"
for row in result["levers"]:
    on, off = row["on_mfu"], row["off_mfu"]
    print(f"gpu_check: lever {row['lever']}: " + (f"MFU {100 * off:.1f}% -> {100 * on:.1f}% ({row['speedup']:.2f}x)"
          if on and off else f"not measured ({row['off_not_measured'] or row['on_not_measured'] or 'dry run'})"))
print(f"gpu_check: tests {count['passed']} passed, {count['failed']} failed, {count['error']} errors, "
      f"{count['skipped']} skipped; {what}; {seconds} s -> {out / 'gpu_check.json'}")
EOF
[ "$TESTS_RC" -eq 0 ] && [ "$MFU_RC" -eq 0 ]
