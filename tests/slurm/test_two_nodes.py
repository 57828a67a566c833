"""A training job over two SLURM nodes, submitted as the workflow submits it, requeued once.

The cluster is real and made here (``scripts/slurm-two-nodes``): slurmctld on the host and two
slurmd, each in a network, UTS and mount namespace of its own (hosts node1 and node2, 2 CPUs and
2 fake GPUs each), beside the one-node cluster the other SLURM tests use; its clients find it
through SLURM_CONF. The job asks for what the layout planner and ``slurm_resources`` give a stage
of 2 nodes x 2 GPUs (CPUs and memory shrunk to fit this machine), through
snakemake-executor-plugin-slurm's own code, and runs the training as the plugin's jobstep runs a
rule: a one-task step on the first node, the job's SLURM_* variables unset. mm1 starts its 4 ranks
with srun, one per GPU; the fault hook stops rank 0 in step 2, every rank saves, the job requeues
itself (exit 75) and resumes on the same layout, ending on the curve of an uninterrupted run.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import polars as pl
import pytest
from slurmkit import plugin_sbatch, plugin_step, sbatch

from mm1.parallel.launch import slurm_resources
from mm1.parallel.supervise import NO_REQUEUE_ENV
from mm1.plan import job_resources
from mm1.train.signals import TEST_SIGNAL_ENV
from tinykit import TINY, tiny, train_inputs

pytestmark = [pytest.mark.slurm, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "scripts" / "slurm-two-nodes"
LAYOUT = ["parallel.world_size=4", "parallel.gpus_per_node=2", "train.micro_batch_size=2", "train.steps=4"]
RANK_LINE = re.compile(r"mm1: rank (\d+) of 4 on (\S+) \(local rank (\d+), CUDA_VISIBLE_DEVICES=([^)]*)\)")


@pytest.fixture(scope="session", autouse=True)
def slurm_cluster() -> None:
    """In place of tests/slurm/conftest.py's (the one-node cluster must answer): this module makes its own."""
    if os.environ.get("MM1_NO_SLURM") == "1":
        pytest.skip("MM1_NO_SLURM=1: no local SLURM cluster on this machine (it needs root)")


def _skip_unless_possible() -> None:
    if os.geteuid() != 0:
        pytest.skip("the two-node SLURM cluster needs root (network namespaces, a bridge, daemons)")
    missing = [c for c in ("slurmctld", "slurmd", "ip", "unshare", "nsenter") if shutil.which(c) is None]
    if missing:
        pytest.skip(f"the two-node SLURM cluster needs {', '.join(missing)}")
    if subprocess.run(["unshare", "--net", "--uts", "--mount", "true"], capture_output=True).returncode != 0:
        pytest.skip("no network/UTS/mount namespaces here (unshare --net --uts --mount fails)")


@pytest.fixture(scope="module")
def two_nodes() -> dict[str, str]:
    """The clients' environment for the two-node cluster: started for this module and stopped after,
    or left running if it already was."""
    _skip_unless_possible()
    state = os.environ.get("MM1_SLURM2_DIR", "/var/tmp/mm1-slurm2")
    env = {**os.environ, "MM1_SLURM2_DIR": state, "SLURM_CONF": f"{state}/etc/slurm.conf"}
    up = subprocess.run([SCRIPT, "start"], capture_output=True, text=True, env=env, timeout=120)
    assert up.returncode == 0, up.stdout[-3000:] + up.stderr[-3000:]
    try:
        yield env
    finally:
        if "already running" not in up.stdout:
            subprocess.run([SCRIPT, "stop"], capture_output=True, env=env, timeout=120)


def test_a_two_node_job_binds_a_gpu_per_rank_and_resumes_after_a_requeue_on_the_curve(
    two_nodes: dict[str, str], tiny_world, tmp_path: Path
) -> None:
    planned = job_resources(tiny(*LAYOUT), "h100-80gb")  # what the workflow plans for this stage
    assert (planned["nodes"], planned["tasks_per_node"], planned["gpus_per_node"]) == (2, 2, 2)
    resources = slurm_resources(planned | {"cpus_per_task": 1, "mem_mb": 1000})  # this machine's nodes: 2 CPUs

    sets = [a for s in [*TINY, *LAYOUT] for a in ("--set", s)]
    train = [sys.executable, "-m", "mm1.cli", "train", *train_inputs(tiny_world), *sets]
    whole, parts = tmp_path / "whole", tmp_path / "parts"
    reference = tmp_path / "whole.log"
    with reference.open("w") as sink:  # 4 ranks under torchrun on this host, one thread each, meanwhile
        uninterrupted = subprocess.Popen(
            [*train, "--out", str(whole)], stdout=sink, stderr=sink, env={**os.environ, "OMP_NUM_THREADS": "4"}
        )

    # Run 1 arms the fault hook: rank 0 is signalled inside step 2, every rank saves step 2 and exits
    # 75, and the launcher requeues the job. Run 2 resumes from step 2.
    counter, script, log = tmp_path / "runs", tmp_path / "job.sh", tmp_path / "job.log"
    script.write_text(
        "#!/bin/bash\n"
        f"n=$(( $(cat {counter} 2>/dev/null || echo 0) + 1 )); echo $n > {counter}\n"
        f'if [ "$n" -eq 1 ]; then export {TEST_SIGNAL_ENV}=step:2:SIGUSR1:0:self; fi\n'
        f"unset {NO_REQUEUE_ENV}\n" + plugin_step(resources) + shlex.join([*train, "--out", str(parts)]) + "\n"
    )
    try:
        options = plugin_sbatch(resources, log, tmp_path)
        job = sbatch(*options, "--open-mode=append", str(script), env=two_nodes)  # append: both runs' lines
        assert uninterrupted.wait(timeout=300) == 0, reference.read_text()[-3000:]
    finally:
        uninterrupted.kill()  # a no-op once it has ended
    text = log.read_text()
    shown = subprocess.run(["scontrol", "-o", "show", "job", job], capture_output=True, text=True, env=two_nodes)
    fields = dict(f.split("=", 1) for f in shown.stdout.split() if "=" in f)
    assert (fields["JobState"], fields["Restarts"], fields["NodeList"]) == ("COMPLETED", "1", "node[1-2]"), text[-4000:]
    assert (fields["NumTasks"], fields["TresPerNode"]) == ("4", "gres:gpu:2"), fields  # as submitted: 2 GPUs a node
    assert counter.read_text().strip() == "2" and text.count(f"SLURM job {job} requeued") == 1, text[-4000:]

    # Both runs: ranks 0, 1 on node1 and 2, 3 on node2, each bound to a GPU of its own.
    placed = sorted(RANK_LINE.findall(text))
    want = [("0", "node1", "0", "0"), ("1", "node1", "1", "1"), ("2", "node2", "0", "0"), ("3", "node2", "1", "1")]
    assert placed == sorted(want * 2), text[-4000:]

    got, ref = pl.read_csv(parts / "metrics.csv"), pl.read_csv(whole / "metrics.csv")
    assert got["step"].to_list() == list(range(1, 5))
    for column in ("loss", "lr", "grad_norm"):
        assert got[column].to_list() == ref[column].to_list(), column  # bit for bit
    provenance = json.loads((parts / "provenance.json").read_text())
    assert provenance["layout"] == {"world_size": 4, "dp": 4}
    assert Path(provenance["resumed_from"]).name == "step_000002"  # run 2 went on from run 1's save
