"""envs/mm1.yaml, the rules' `conda:` env, builds from where Snakemake puts it (`--sdm conda`).

Snakemake copies the env file to `.snakemake/conda/<hash>.yaml` and runs `conda env create --file
<that copy> --prefix .snakemake/conda/<hash>` (snakemake/deployment/conda.py, Env.create). conda writes
the file's `pip:` lines unchanged into `condaenv.<random>.requirements.txt` next to the file it was given
and runs `<prefix>/bin/python -m pip install -U -r <it> --exists-action=b` with that folder as cwd
(conda/env/installers/pip.py). conda cannot be installed here, so a stand-in `conda` on PATH answers
Snakemake's checks and does exactly that pip step, offline and without installing: `--dry-run --no-deps
--no-index --no-build-isolation --report`. pip fails on a constraints file or project path it cannot find.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from conftest import REPO

# The stand-in for conda: the commands Snakemake 9 runs, and conda's pip step of `conda env create`.
FAKE_CONDA = """\
import json, os, subprocess, sys, tempfile
import yaml

args = sys.argv[1:]
if args == ["--version"]:
    print("conda 24.7.1")
elif args[:2] == ["info", "--json"]:
    print(json.dumps({"conda_prefix": os.environ["FAKE_CONDA_ROOT"], "platform": "linux-64"}))
elif args[:2] == ["config", "--get"]:
    print(json.dumps({"get": {"channel_priority": "strict"}}))
elif args[:1] == ["clean"]:  # Snakemake cleans tarballs after a create (--conda-cleanup-pkgs)
    pass
elif args[:2] == ["env", "create"]:
    env_file, prefix = args[args.index("--file") + 1], args[args.index("--prefix") + 1]
    os.makedirs(prefix)
    spec = yaml.safe_load(open(env_file))
    pip_lines = next(d["pip"] for d in spec["dependencies"] if isinstance(d, dict))
    workdir = os.path.dirname(os.path.abspath(env_file))  # conda: pip_workdir
    with tempfile.NamedTemporaryFile(
        "w", prefix="condaenv.", suffix=".requirements.txt", dir=workdir, delete=False
    ) as req:
        req.write("\\n".join(pip_lines))
    with open(os.path.join(prefix, "conda-create.json"), "w") as log:
        json.dump({"file": env_file, "requirements": req.name}, log)
    offline = ["--dry-run", "--no-deps", "--no-index", "--no-build-isolation", "--report", prefix + "/pip.json"]
    cmd = [sys.executable, "-m", "pip", "install", "-U", "-r", req.name, "--exists-action=b", *offline]
    sys.exit(subprocess.run(cmd, cwd=workdir).returncode)
else:
    sys.exit(f"fake conda: unexpected {args}")
"""


def fake_conda_bin(folder: Path) -> Path:
    """A folder holding `conda` (the stand-in above) and an `scontrol` that fails at once: the SLURM
    executor plugin asks `scontrol show config` on import and waits 10 s where no controller runs."""
    folder.mkdir()
    (folder / "conda").write_text(f"#!{sys.executable}\n{FAKE_CONDA}")
    (folder / "scontrol").write_text("#!/bin/sh\nexit 1\n")
    for tool in folder.iterdir():
        tool.chmod(0o755)
    return folder


def test_snakemake_builds_the_declared_conda_env_from_its_own_copy(project: Path, tmp_path: Path):
    env = dict(os.environ, FAKE_CONDA_ROOT=str(tmp_path / "conda-root"))
    env["PATH"] = f"{fake_conda_bin(tmp_path / 'bin')}{os.pathsep}{env['PATH']}"
    env.pop("MM1_ROOT", None)  # the Snakefile must set it, not the caller
    cmd = ["snakemake", "--sdm", "conda", "--conda-frontend", "conda", "--conda-create-envs-only", "--cores", "1"]
    proc = subprocess.run(cmd, cwd=project, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, (
        f"the env did not build from Snakemake's copy:\n{proc.stdout[-3000:]}{proc.stderr[-3000:]}"
    )

    (prefix,) = [p for p in (project / ".snakemake" / "conda").iterdir() if p.is_dir()]
    created = json.loads((prefix / "conda-create.json").read_text())
    rendered = Path(created["file"])
    assert rendered == prefix.with_suffix(".yaml"), "Snakemake hands conda its copy beside the env prefix"
    # The copy is the file as written (no absolute path baked in), so the env's hash does not depend
    # on the clone's location or on MM1_ROOT, and conda passes the pip lines through unchanged.
    assert rendered.read_bytes() == (REPO / "envs" / "mm1.yaml").read_bytes()
    assert Path(created["requirements"]).parent == rendered.parent

    (installed,) = json.loads((prefix / "pip.json").read_text())["install"]
    assert installed["metadata"]["name"] == "mm1"
    assert installed["download_info"]["url"] == project.resolve().as_uri()
    assert installed["download_info"]["dir_info"] == {"editable": True}
