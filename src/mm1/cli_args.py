"""The arguments of each ``mm1`` command (mm1.cli registers them, one way for every command)."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path

from mm1 import cli_errors as errors
from mm1.stages import DATA, STAGES, Input


def config(p: argparse.ArgumentParser) -> None:
    """``mm1 config``."""
    p.add_argument("action", choices=["show", "schema"])
    p.add_argument("--write", metavar="PATH", help="schema: write it to PATH")
    p.add_argument("--check", metavar="PATH", help="schema: exit 1 if PATH differs from the models")
    p.add_argument(
        "--study",
        type=Path,
        metavar="FILE",
        help="show: a study file (e.g. config/study.yaml) merged over --config; every experiment of it is validated",
    )


def presets(p: argparse.ArgumentParser) -> None:
    """``mm1 presets``."""
    p.add_argument("names", nargs="*", metavar="NAME", type=errors.plain_name, help="only these presets (default: all)")
    p.add_argument(
        "--check", action="store_true", help="also build each model on the meta device; exit 1 on any count mismatch"
    )


def flops(p: argparse.ArgumentParser) -> None:
    """``mm1 flops``."""
    _images_per_sequence(p, "(data-dependent; default: data.mixture.max_images_per_sequence)")


def plan(p: argparse.ArgumentParser) -> None:
    """``mm1 plan``."""
    p.add_argument("--gpu", default="h100-80gb", help="GPU model (h100-80gb, h200-141gb, a100-80gb, a100-40gb)")
    p.add_argument(
        "--nodes", type=errors.positive_int, metavar="N", help="search the fastest fitting layout on N nodes"
    )
    p.add_argument("--all", action="store_true", help="a Markdown table of the paper presets' own layouts")
    p.add_argument(
        "--mfu",
        type=errors.fraction,
        default=None,
        help="assumed utilisation of the matmuls (default: the config's parallel.plan_mfu, 0.31 measured on an H100)",
    )
    _images_per_sequence(p, "for the time (default: data.mixture.max_images_per_sequence)")


def compare(p: argparse.ArgumentParser) -> None:
    """``mm1 compare``."""
    p.add_argument(
        "--id", required=True, type=errors.plain_name, help="figure id (file names: ID.png, ID.csv, ID.seeds.csv)"
    )
    p.add_argument("--spec", required=True, metavar="JSON", help="the figure's FigureSpec as JSON (study.figures.ID)")
    p.add_argument(
        "--cell",
        dest="cells",
        action="append",
        default=[],
        metavar="NAME=RUN_DIR",
        help="a seed run's stage output folder (repeat a NAME for its next seed)",
    )
    p.add_argument(
        "--meta", metavar="JSON", help='[{"cell": NAME, key: value}]: the x/hue keys and decoder_params per cell'
    )
    p.add_argument("--out", type=Path, required=True, help="output folder")


def lessons(p: argparse.ArgumentParser) -> None:
    """``mm1 lessons``."""
    p.add_argument("--lessons", required=True, help="JSON {lesson id: {statement, checks}} (study.lessons)")
    p.add_argument(
        "--seeds", action="append", default=[], metavar="FIG=SEEDS", help="a figure's <fig>.seeds.csv (mm1 compare)"
    )
    p.add_argument("--out", type=Path, required=True, help="output folder (lessons.csv, lessons.md)")


def power(p: argparse.ArgumentParser) -> None:
    """``mm1 power``."""
    p.add_argument("--seeds", type=Path, required=True, help="the pilot figure's <fig>.seeds.csv (mm1 compare)")
    p.add_argument("--metric", action="append", required=True, help="a metric to analyse (repeat)")
    p.add_argument("--effects", required=True, type=errors.effects, help="target effects, comma-separated (e.g. 1,2,3)")
    p.add_argument(
        "--study-seeds", type=errors.positive_int, required=True, help="the study's seeds per cell (study.seeds)"
    )
    p.add_argument("--out", type=Path, required=True, help="output folder (power.csv, power.md)")


def _images_per_sequence(p: argparse.ArgumentParser, what: str) -> None:
    p.add_argument(
        "--images-per-sequence", type=errors.non_negative, metavar="N", help=f"average images per sequence {what}"
    )


def upcycle(p: argparse.ArgumentParser) -> None:
    """``mm1 upcycle``."""
    p.add_argument("--checkpoint", type=Path, required=True, help="dense checkpoint folder (e.g. of the train stage)")
    p.add_argument("--out", type=Path, required=True, help="output folder")


def figure(p: argparse.ArgumentParser) -> None:
    """``mm1 figure``."""
    p.add_argument("--metrics", type=Path, required=True, help="metrics.csv of the train stage")
    p.add_argument("--scores", type=Path, required=True, help="scores.csv of the eval stage")
    p.add_argument("--out", type=Path, required=True, help="output folder")


def stage_inputs(command: str) -> Callable[[argparse.ArgumentParser], None]:
    """The options of a stage command (``mm1 pack``, ``mm1 train``, ...), from the stage registry: each
    input of the stages it runs, required when every one of them has it (``mm1 train`` runs the llm,
    train and sft stages: --packed and --tokenizer always, --init for SFT, --init-* for pre-training)."""
    stages = [s for s in STAGES.values() if s.command[0] == command]
    options: dict[str, list[tuple[str, Input]]] = {}
    for s in stages:
        for i in (*s.inputs, *s.inits):
            if i.option:
                options.setdefault(i.option, []).append((s.name, i))

    def add(p: argparse.ArgumentParser) -> None:
        for option, uses in options.items():
            required = all(any(i.option == option for i in s.inputs) for s in stages)
            path = uses[0][1].path or "the run folder"
            upstream = " or ".join(dict.fromkeys(i.stage for _, i in uses))
            stage = "world or acquire" if upstream == DATA else upstream
            metavar = "FILE" if "." in path else "DIR"
            p.add_argument(option, type=Path, required=required, metavar=metavar, help=f"{path} of the {stage} stage")
        p.add_argument("--out", type=Path, required=True, help="output folder (results/<stage>/<run>)")

    return add
