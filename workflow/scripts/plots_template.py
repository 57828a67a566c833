"""An HTML template for `dvc plots show` that renders offline: vega, vega-lite and vega-embed inlined.

DVC's default page loads the three libraries from a CDN (<script src="https://cdn.jsdelivr.net/...">),
so on a machine without internet the plots page is blank. This script fetches the same versions
DVC's renderer loads (dvc-render 1.0.2) with `npm pack` (checked against pinned sha512 integrity),
takes each package's minified build and writes a template with the three inlined. The JS is a
build product: it goes to build/ (git-ignored), never into the repository.

DVC fills a template's placeholders {plot_divs} (the plots), {refresh_tag} and {scripts}. {scripts}
is where DVC puts its CDN <script src> tags, so this template leaves it out and inlines instead.
With --use (make plots-template), this clone's .dvc/config.local points at the result
(plots.html_template, relative to .dvc/); without it, `dvc plots show` uses DVC's own page.

    python workflow/scripts/plots_template.py --use  # or: make plots-template (needs npm)
    dvc plots show                                   # dvc_plots/index.html, no network needed
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
OUT = ROOT / "build" / "plots_template" / "offline.html"
# name -> (version, sha512 integrity of the npm tarball); the versions dvc-render's VegaRenderer loads.
PACKAGES = {
    "vega": (
        "5.20.2",
        "sha512-qmH7aD9GGPpssVdxL1xgcdxTbQzyRUeRR16Os385ymvQhiwCYQNA6+eXUPAZDTVLfk0RXu6Jzj6kUE5jQ80EVw==",
    ),
    "vega-lite": (
        "5.2.0",
        "sha512-Yxcg8MvYfxHcG6BbkaKT0oVCIMIcE19UvqIsEwBmyd/7h2nzW7oRnID81T8UrY7hpDrIr6wa2JADOT2dhGNErw==",
    ),
    "vega-embed": (
        "6.18.2",
        "sha512-wcDyQPE4J5aiCDc3/suH5RQDvrKkjuLkhzUcbOLwEkNF8/+pp17tS0JghzEvAPNRg+5aG1/N2ydixq8Lk3dOlg==",
    ),
}
PLACEHOLDERS = ("{plot_divs}", "{refresh_tag}", "{scripts}")
PAGE = """<!DOCTYPE html>
<html>
<head>
    {refresh_tag}
    <meta charset="utf-8">
    <title>DVC Plot</title>
    <!-- vega, vega-lite, vega-embed inlined (workflow/scripts/plots_template.py): no network needed -->
@LIBRARIES@
    <style>
        table {
            border-spacing: 15px;
        }
    </style>
</head>
<body>
    {plot_divs}
</body>
</html>
"""


def integrity(path: Path) -> str:
    return "sha512-" + base64.b64encode(hashlib.sha512(path.read_bytes()).digest()).decode()


def fetch(name: str, version: str, expected: str, dest: Path) -> Path:
    """The package tarball in ``dest`` (reused when already there and intact), via `npm pack`."""
    tarball = dest / f"{name}-{version}.tgz"
    if not (tarball.is_file() and integrity(tarball) == expected):
        npm = shutil.which("npm")
        if npm is None:
            raise SystemExit("npm not found: install Node.js and npm (Debian: apt-get install nodejs npm)")
        dest.mkdir(parents=True, exist_ok=True)
        cmd = [npm, "pack", "--silent", "--pack-destination", str(dest), f"{name}@{version}"]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            raise SystemExit(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stderr}")
    got = integrity(tarball)
    if got != expected:
        raise SystemExit(f"{tarball}: integrity {got} is not the pinned {expected}")
    return tarball


def minified(tarball: Path, name: str) -> str:
    with tarfile.open(tarball) as tar:
        member = tar.extractfile(f"package/build/{name}.min.js")
        if member is None:
            raise SystemExit(f"{tarball} has no package/build/{name}.min.js")
        code = member.read().decode("utf8")
    if "</script" in code.lower():
        raise SystemExit(f"{name}.min.js contains '</script': it cannot be inlined as is")
    clash = [p for p in PLACEHOLDERS if p in code]
    if clash:
        raise SystemExit(f"{name}.min.js contains DVC template placeholders {clash}; DVC would replace them")
    return code


def build(out: Path, cache: Path) -> Path:
    scripts = []
    for name, (version, expected) in PACKAGES.items():  # in load order: vega-embed needs the other two
        code = minified(fetch(name, version, expected, cache), name)
        scripts.append(f'    <script type="text/javascript">/* {name}@{version} */\n{code}\n    </script>')
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(PAGE.replace("@LIBRARIES@", "\n".join(scripts)), encoding="utf8")
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, default=OUT, help=f"the template (default: {OUT.relative_to(ROOT)})")
    p.add_argument("--cache", type=Path, default=None, help="where the npm tarballs go (default: next to --out)")
    p.add_argument("--use", action="store_true", help="point this clone's `dvc plots show` at it (.dvc/config.local)")
    args = p.parse_args(argv)
    out = build(args.out, args.cache or args.out.parent / "npm")
    versions = {name: version for name, (version, _) in PACKAGES.items()}
    print(f"wrote {out} ({out.stat().st_size / 1e6:.1f} MB; {json.dumps(versions)})")
    if args.use:
        # This clone only (.dvc/config.local is git-ignored): a fresh clone has no build/, and a template
        # named in the shared .dvc/config but absent makes `dvc plots show` fail instead of using DVC's own.
        where = os.path.relpath(out.resolve(), ROOT / ".dvc")
        subprocess.run([sys.executable, "-m", "dvc", "config", "--local", "plots.html_template", where], check=True)
        print(f"dvc plots show now uses it (.dvc/config.local: plots.html_template = {where})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
