"""The six lessons at 600 steps as one report judges them: `mm1 lessons`' own code
(mm1.figures.lessons.lessons) over config/study.yaml's six lessons, with this run's figures (Table 1,
Fig 5a-d, in this folder) and lesson 2's Fig 4 (../46ed61d-fig4-600/), so that every directional check
of the six lessons is in one Holm family (as declared in docs/study-results.md before the run).
Writes all/lessons.{md,csv} and their provenance.

    python docs/results/lessons-600/combine.py
"""

from __future__ import annotations

import json
from pathlib import Path

import yaml

from mm1.figures.lessons import lessons

HERE = Path(__file__).resolve().parent
STUDY = HERE.parents[2] / "config/study.yaml"

if __name__ == "__main__":
    spec = yaml.safe_load(STUDY.read_text())["study"]["lessons"]
    seeds = {fig: HERE / f"{fig}.seeds.csv" for fig in ("table1", "fig5a", "fig5b", "fig5c", "fig5d")}
    seeds["fig4"] = HERE.parent / "46ed61d-fig4-600/fig4.seeds.csv"
    csv, md = lessons(json.dumps(spec), seeds, HERE / "all")
    print(md.read_text())
