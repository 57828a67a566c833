"""What DVC's hashing costs on a checkpoint-sized output, against plain md5sum/sha256sum of the same bytes.

Builds a checkpoint-like folder in a fresh git+DVC repository in a temporary folder (megatron
distributed-checkpoint shards of random bytes, plus small metadata files), reads it once so every
measurement below runs from the page cache, then times

- baselines: ``md5sum`` and ``sha256sum`` over every file (coreutils, one process), and Python's
  ``hashlib.md5`` in 1 MiB chunks (what DVC runs, in ``core.checksum_jobs`` threads);
- ``dvc add``: the first hash, plus the transfer into the cache (the cache link type is reported:
  reflink where the filesystem has it, else a copy);
- ``dvc status`` right after: DVC's state cache (inode, mtime, size -> md5) answers, no hashing;
- ``dvc status`` with the state cache deleted: every file hashed again (what a changed mtime costs);
- one shard rewritten: ``dvc status`` then ``dvc commit`` (only that shard is hashed and cached);
  the state cache then knows it, so neither hashes it again;
- ``dvc add`` into a cache of ``cache.type hardlink`` (the hash without the copy);
- ``dvc --version``: the CLI start-up every command above includes.

GB/s are decimal GB of checkpoint bytes per second of wall time. Writes bench/results/dvc_hash.json;
its ``headline`` rows give GB/s and s per GB of ``dvc add`` and of ``dvc status`` after a change
(state cache cold: every file rehashed), md5sum of the same bytes being the baseline.

    python bench/dvc_hash.py                  # 1.5 GiB (24 x 64 MiB shards + 200 small files), best of 3
    python bench/dvc_hash.py --quick          # 256 MiB
    python bench/dvc_hash.py --dir /scratch   # build it on the filesystem the checkpoints live on
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from run import report, row, write

from mm1.provenance import package_versions

MiB = 2**20
# The timings that read (and hash) every byte of the checkpoint; the others are start-up and lookups.
FULL_PASSES = (
    "read (page cache)",
    "md5sum",
    "sha256sum",
    "python hashlib.md5",
    "dvc add (hash + cache transfer)",
    "dvc status (state cache cold: rehash all)",
    "dvc add, cache.type hardlink",
)


def run(cmd: list[str], cwd: Path, env: dict[str, str]) -> float:
    """Wall seconds of one command (it must succeed)."""
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - t0
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return seconds


def make_checkpoint(folder: Path, shards: int, shard_mb: int, small: int, seed: int = 0) -> list[Path]:
    """``__<rank>_<i>.distcp`` shards of random bytes, a common.pt and small JSON files."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True)
    files = []
    for i in range(shards):
        path = folder / f"__{i // 2}_{i % 2}.distcp"
        path.write_bytes(rng.bytes(shard_mb * MiB))
        files.append(path)
    (folder / "common.pt").write_bytes(rng.bytes(256 * 1024))
    files.append(folder / "common.pt")
    for i in range(small):
        path = folder / "meta" / f"layer_{i:04d}.json"
        path.parent.mkdir(exist_ok=True)
        path.write_text(json.dumps({"layer": i, "shape": [128, 384], "checksum": rng.bytes(16).hex()}))
        files.append(path)
    return files


def python_md5(files: list[Path]) -> float:
    t0 = time.perf_counter()
    for path in files:
        digest = hashlib.md5()
        with open(path, "rb") as f:
            while chunk := f.read(MiB):
                digest.update(chunk)
    return time.perf_counter() - t0


def read_all(files: list[Path]) -> float:
    t0 = time.perf_counter()
    for path in files:
        with open(path, "rb") as f:
            while f.read(16 * MiB):
                pass
    return time.perf_counter() - t0


def link_type(repo: Path) -> str:
    """How the workspace file relates to its cache copy: hardlink, symlink, or copy/reflink."""
    shard = next((repo / "ckpt").glob("*.distcp"))
    if shard.is_symlink():
        return "symlink"
    return "hardlink" if shard.stat().st_nlink > 1 else "copy or reflink"


def dvc_repo(root: Path, name: str, cache_type: str | None) -> tuple[Path, dict[str, str]]:
    repo = root / name
    repo.mkdir()
    env = {**os.environ, "DVC_SITE_CACHE_DIR": str(root / f"{name}-site-cache"), "DVC_NO_ANALYTICS": "1"}
    run(["git", "init", "-q"], repo, env)
    run(["dvc", "init", "-q"], repo, env)
    run(["dvc", "config", "core.analytics", "false"], repo, env)
    if cache_type:
        run(["dvc", "config", "cache.type", cache_type], repo, env)
    return repo, env


def best(repeat: int, timed) -> list[float]:
    """``repeat`` samples of ``timed()`` (seconds); the report keeps the fastest and every sample."""
    return [timed() for _ in range(repeat)]


def measure(root: Path, shards: int, shard_mb: int, small: int, repeat: int) -> dict:
    repo, env = dvc_repo(root, "repo", None)
    files = make_checkpoint(repo / "ckpt", shards, shard_mb, small)
    total = sum(p.stat().st_size for p in files)
    rel = [str(p.relative_to(repo)) for p in files]
    site_cache, cache = Path(env["DVC_SITE_CACHE_DIR"]), repo / ".dvc" / "cache"
    read_all(files)  # every timing below reads from the page cache
    samples: dict[str, list[float]] = {"read (page cache)": best(repeat, lambda: read_all(files))}
    samples["md5sum"] = best(repeat, lambda: run(["md5sum", *rel], repo, env))
    samples["sha256sum"] = best(repeat, lambda: run(["sha256sum", *rel], repo, env))
    samples["python hashlib.md5"] = best(repeat, lambda: python_md5(files))
    samples["dvc --version (start-up)"] = best(repeat, lambda: run(["dvc", "--version"], repo, env))

    def fresh_add(where: Path, environ: dict[str, str]) -> float:
        (where / "ckpt.dvc").unlink(missing_ok=True)
        shutil.rmtree(where / ".dvc" / "cache", ignore_errors=True)
        shutil.rmtree(environ["DVC_SITE_CACHE_DIR"], ignore_errors=True)
        return run(["dvc", "add", "-q", "ckpt"], where, environ)

    samples["dvc add (hash + cache transfer)"] = best(repeat, lambda: fresh_add(repo, env))
    links = link_type(repo)
    samples["dvc status (state cache warm)"] = best(repeat, lambda: run(["dvc", "status", "-q"], repo, env))

    def cold_status() -> float:
        shutil.rmtree(site_cache)  # DVC's state cache (inode, mtime, size -> md5) and index live there
        return run(["dvc", "status", "-q"], repo, env)

    samples["dvc status (state cache cold: rehash all)"] = best(repeat, cold_status)
    shard = repo / "ckpt" / "__0_0.distcp"
    shard.unlink()  # a new file, as a trainer writes one (the cached copy must not change)
    shard.write_bytes(np.random.default_rng(1).bytes(shard_mb * MiB))
    t0 = time.perf_counter()
    proc = subprocess.run(["dvc", "status", "-q"], cwd=repo, env=env)
    samples["dvc status (one shard rewritten)"] = [time.perf_counter() - t0]
    assert proc.returncode == 1, "dvc status -q should report the rewritten shard"
    samples["dvc commit (one shard rewritten)"] = [run(["dvc", "commit", "-q", "-f", "ckpt.dvc"], repo, env)]
    assert cache.is_dir()

    hard, hard_env = dvc_repo(root, "hardlink", "hardlink")
    shutil.copytree(repo / "ckpt", hard / "ckpt")
    read_all([hard / p for p in rel])
    samples["dvc add, cache.type hardlink"] = best(repeat, lambda: fresh_add(hard, hard_env))
    hard_links = link_type(hard)

    seconds = {k: min(v) for k, v in samples.items()}
    gb = total / 1e9
    return {
        "setup": {
            "files": len(files),
            "bytes": total,
            "shards": shards,
            "shard_mib": shard_mb,
            "small_files": small,
            "repeat": repeat,
            "filesystem_dir": str(root),
            "dvc_checksum_jobs": max(1, min(4, (os.cpu_count() or 1) // 2)),  # dvc_objects' HASH_JOBS default
            "cache_link_default": links,
            "cache_link_hardlink_repo": hard_links,
        },
        "seconds": {k: round(v, 3) for k, v in seconds.items()},
        "samples": {k: [round(x, 3) for x in v] for k, v in samples.items()},
        "gb_per_s": {k: round(gb / seconds[k], 3) for k in FULL_PASSES},
        "ratios": {
            "dvc add / md5sum": round(seconds["dvc add (hash + cache transfer)"] / seconds["md5sum"], 2),
            "dvc status cold / md5sum": round(
                seconds["dvc status (state cache cold: rehash all)"] / seconds["md5sum"], 2
            ),
            "dvc add hardlink / md5sum": round(seconds["dvc add, cache.type hardlink"] / seconds["md5sum"], 2),
            "sha256sum / md5sum": round(seconds["sha256sum"] / seconds["md5sum"], 2),
            "dvc status warm / dvc start-up": round(
                seconds["dvc status (state cache warm)"] / seconds["dvc --version (start-up)"], 2
            ),
        },
    }


def headline(results: dict) -> list[dict]:
    """GB/s and s per GB of dvc add and of dvc status after a change, md5sum as the baseline."""
    gb, sec = results["setup"]["bytes"] / 1e9, results["seconds"]
    md5 = sec["md5sum"]
    rows = []
    for key, name in (
        ("dvc add (hash + cache transfer)", "dvc add (hash + copy into the cache) vs md5sum"),
        (
            "dvc status (state cache cold: rehash all)",
            "dvc status after a change (state cache cold: rehash all) vs md5sum",
        ),
        ("dvc add, cache.type hardlink", "dvc add, cache.type hardlink vs md5sum"),
    ):
        rows.append(row(name, gb / sec[key], "GB/s", gb / md5))
        rows.append(row(name, sec[key] / gb, "s/GB", md5 / gb))
    rows.append(row("dvc status, one shard rewritten, vs dvc start-up (--version)",
                    sec["dvc status (one shard rewritten)"], "s", sec["dvc --version (start-up)"]))  # fmt: skip
    rows.append(row("dvc status, nothing changed (state cache warm), vs dvc start-up (--version)",
                    sec["dvc status (state cache warm)"], "s", sec["dvc --version (start-up)"]))  # fmt: skip
    return rows


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="256 MiB, one sample each")
    p.add_argument("--repeat", type=int, default=3, help="samples per timing; the fastest is reported")
    p.add_argument("--dir", type=Path, default=None, help="where to build the repositories (default: $TMPDIR)")
    p.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "dvc_hash.json")
    args = p.parse_args(argv)
    shards, shard_mb, small = (8, 32, 50) if args.quick else (24, 64, 200)
    repeat = 1 if args.quick else args.repeat
    need = 3 * shards * shard_mb * MiB  # workspace + cache + the hardlink repo's copy
    free = shutil.disk_usage(args.dir or tempfile.gettempdir()).free
    if free < need + 2**30:
        print(f"need {need / 2**30:.1f} GiB free in {args.dir or tempfile.gettempdir()}, have {free / 2**30:.1f}")
        return 1
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="dvc-hash-", dir=args.dir) as tmp:
        results = measure(Path(tmp), shards, shard_mb, small, repeat)
    data = report(
        "dvc_hash",
        args.quick,
        results,
        headline(results),
        command="python bench/dvc_hash.py" + (" --quick" if args.quick else ""),
        wall_s=round(time.perf_counter() - t0, 1),
    )
    data["packages"] = {**package_versions(), "dvc": _version("dvc"), "dvc-data": _version("dvc-data")}
    write(args.out, data)
    gb = results["setup"]["bytes"] / 1e9
    print(f"{results['setup']['files']} files, {gb:.2f} GB ({results['setup']['cache_link_default']} into the cache)")
    for name, sec in results["seconds"].items():
        rate = results["gb_per_s"].get(name)
        print(f"  {name:45s} {sec:8.2f} s" + (f"  {rate:6.2f} GB/s" if rate else ""))
    for name, ratio in results["ratios"].items():
        print(f"  {name:45s} {ratio:8.2f}x")
    print(f"wrote {args.out}")
    return 0


def _version(name: str) -> str | None:
    from importlib import metadata

    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


if __name__ == "__main__":
    sys.exit(main())
