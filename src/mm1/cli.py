"""The ``mm1`` command: parses arguments and calls the library. Nothing else lives here.

    mm1 config show   [--preset NAME] [--config FILE] [--study FILE] [--set section.field=value ...]
    mm1 config schema [--write PATH | --check PATH]
    mm1 presets [NAME ...] [--check]              (sizes and LR law of the packaged presets)
    mm1 flops   [--preset NAME] [--config FILE] [--set ...] [--images-per-sequence N]  (FLOPs of one step)
    mm1 plan    --preset NAME [--gpu h100-80gb] [--nodes N] [--set ...] | --all   (cluster layout, memory, time)
    mm1 world     --out DIR                         (the synthetic MM1 world, as datasets)
    mm1 acquire   --out DIR                         (the datasets listed in data.sources)
    mm1 tokenizer --manifest FILE --out DIR
    mm1 pack      --manifest FILE --tokenizer FILE --out DIR
    mm1 train     [--init CKPT | --init-encoder CKPT --init-decoder CKPT]
                  --packed FILE --tokenizer FILE --out DIR
    mm1 eval run  --data DIR --tokenizer FILE --checkpoint DIR --out DIR [--sft]   (few-shot / SFT benchmarks)
    mm1 eval score-captions --pred PRED.json --refs CAPTIONS.json              (CIDEr of any model's captions)
    mm1 eval score-vqa      --pred PRED.json --questions Q.json --annotations A.json   (VQA accuracy)
    mm1 encoder   --manifest FILE --tokenizer FILE --out DIR   (CLIP/AIM encoder pre-training)
    mm1 sft-pack  --manifest FILE --tokenizer FILE --out DIR   (SFT sequences)
    mm1 upcycle   --checkpoint DIR --out DIR --set model.moe.num_experts=N   (dense -> MoE)
    mm1 export-hf --checkpoint DIR [--tokenizer FILE] [--parts vision,llm] --out DIR   (HF folders, safetensors)
    mm1 import-hf [--vision DIR] [--llm DIR] --out DIR   (HF folders -> checkpoint, tokenizer, config.yaml)
    mm1 figure    --metrics FILE --scores FILE --out DIR
    mm1 compare   --id FIG --spec JSON --cell NAME=RUN_DIR ... [--meta JSON] --out DIR   (a paper figure, mean +- CI over seeds)
    mm1 power     --seeds PILOT.seeds.csv --metric M ... --effects 1,2 --study-seeds N --out DIR   (the pilot)
    mm1 lessons   --lessons JSON --seeds FIG=SEEDS.csv ... --out DIR   (the paper's lessons: effects, verdicts)

Every stage takes the config as ``--preset NAME`` (applied first), ``--config FILE``, then
``--config-json TEXT``, then ``--set`` (each merged over the one before).
A user error (a bad flag, path, file or config value) is one line on stderr,
``mm1 <cmd>: error: <what>; <fix>``, exit 2 for usage and config errors, 1 for the others;
``mm1 --debug <cmd> ...`` (or MM1_DEBUG=1) also prints its traceback; ``mm1 -v``/``-vv`` or
``--log-level LEVEL`` sets how much is logged; ``mm1 --version`` prints the version. Any other exception is a bug:
its traceback and a line asking to report it.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from mm1 import __version__, cli_args, hf_cli, outlock, provenance
from mm1 import cli_errors as errors
from mm1.config import ConfigError, RunConfig
from mm1.config.load import apply_overrides, from_dict, read_yaml
from mm1.config.presets import deep_merge, preset_data
from mm1.eval import cli as eval_cli
from mm1.stages import STAGES


def _config_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--preset",
        metavar="NAME",
        type=errors.plain_name,
        help="start from the preset NAME (see `mm1 presets`)",
    )
    p.add_argument("--config", type=Path, help="YAML config file merged over the preset (default: built-in defaults)")
    p.add_argument("--config-json", help="config as a JSON object, merged over --config")
    p.add_argument(
        "--config-from",
        nargs=2,
        metavar=("FILE", "RUN"),
        help="the config of RUN in a JSON file of runs (dvc.yaml's params/<stage>.json), merged like --config-json",
    )
    p.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="dotted override, e.g. --set train.steps=10 (repeatable)",
    )


def resolve(args: argparse.Namespace) -> RunConfig:
    return from_dict(*config_data(args))


def config_data(args: argparse.Namespace) -> tuple[dict, str]:
    """The config as the flags give it (a dict, not yet validated) and where it came from."""
    data = preset_data(args.preset) if args.preset else {}
    sources = [f"preset {args.preset}"] if args.preset else []
    for path in (args.config, getattr(args, "study", None)):
        if path:
            data = deep_merge(data, read_yaml(path))
            sources.append(str(path))
    source = " + ".join(sources) or "defaults"
    if args.config_json:
        try:
            extra = json.loads(args.config_json)
        except json.JSONDecodeError as exc:
            raise ConfigError(f"--config-json is not valid JSON: {exc}") from None
        if not isinstance(extra, dict):
            raise ConfigError(f"--config-json must be a JSON object of sections, not {type(extra).__name__}")
        data = deep_merge(data, extra)
        source += " + --config-json"
    if getattr(args, "config_from", None):
        path, run = args.config_from
        data = deep_merge(data, run_config(Path(path), run))
        source += f" + {path} ({run})"
    if args.overrides:
        data = apply_overrides(data, args.overrides)
        source += " + " + " ".join(args.overrides)
    return data, source


def run_config(path: Path, run: str) -> dict:
    """The entry ``run`` of a JSON file of run configs (``python -m mm1.dvc_stages --write`` makes them)."""
    try:
        runs = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ConfigError(f"--config-from {path}: cannot read it as JSON ({exc})") from None
    if not isinstance(runs, dict) or not isinstance(runs.get(run), dict):
        raise ConfigError(
            f"--config-from {path}: no run {run!r} in it; it is stale or for another study: "
            "regenerate it with `python -m mm1.dvc_stages --write` (make dvc)"
        )
    return runs[run]


def expand_args_from(argv: list[str]) -> list[str]:
    """``--args-from FILE KEY`` replaced by the argument list ``FILE[KEY]`` holds (a JSON object of
    argument lists: dvc.yaml's params/reports.json gives each report's command line this way)."""
    if "--args-from" not in argv:
        return argv
    at = argv.index("--args-from")
    if len(argv) < at + 3:
        raise errors.UsageError("--args-from needs FILE KEY", "mm1")
    path, key = Path(argv[at + 1]), argv[at + 2]
    try:
        table = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise errors.UsageError(f"--args-from {path}: cannot read it as JSON ({exc})", "mm1") from None
    listed = table.get(key) if isinstance(table, dict) else None
    if not isinstance(listed, list) or not all(isinstance(a, str) for a in listed):
        raise errors.UsageError(
            f"--args-from {path}: no argument list {key!r} in it; regenerate it with `python -m mm1.dvc_stages --write`",
            "mm1",
        )
    return [*argv[:at], *listed, *argv[at + 3 :]]


def _cmd_config(args: argparse.Namespace) -> int:
    from mm1.config import dump
    from mm1.config.schema import render

    if args.action == "show" and args.study:
        return _check_study(args)
    if args.action == "show":
        sys.stdout.write(dump(resolve(args)))
        return 0
    text = render()
    if args.check:
        current = Path(args.check).read_bytes() if Path(args.check).is_file() else b""
        if current != text.encode():
            print(
                f"mm1 config: error: {args.check} is out of date; "
                f"regenerate it with `mm1 config schema --write {args.check}`",
                file=sys.stderr,
            )
            return 1
        return 0
    if args.write:
        from mm1 import atomic

        atomic.write_text(Path(args.write), text)
        return 0
    sys.stdout.write(text)
    return 0


def _check_study(args: argparse.Namespace) -> int:
    """``config show --study FILE``: the base config, once every experiment's run and every stage's
    config of it is valid (a ConfigError names the file, the experiment, the stage and the field)."""
    from mm1.config import dump
    from mm1.study import check_study

    study = check_study(*config_data(args))
    for exp in study.names:
        for stage in STAGES:
            study.stage_config(stage, exp)
    sys.stdout.write(dump(study.base))
    print(f"mm1 config: {args.study}: {len(study.names)} runs x {len(STAGES)} stages valid", file=sys.stderr)
    return 0


def _cmd_presets(args: argparse.Namespace) -> int:
    from mm1.config.presets import available, load_preset
    from mm1.models.size import count_model, decoder_params, law_weight_decay, peak_lr

    names = args.names or available()
    configs = {name: load_preset(name) for name in names}
    print("name,total_params,active_params,peak_lr,weight_decay")
    for name, cfg in configs.items():
        m, vocab = cfg.model, cfg.tokenizer.vocab_size
        total = count_model(m, vocab)["total"]
        n = decoder_params(m.decoder, m.moe, vocab).active  # the law's N: active decoder parameters
        print(f"{name},{total.total},{total.active},{peak_lr(n):.3e},{law_weight_decay(n):.3e}")
    if not args.check:
        return 0
    from mm1.config import ParallelConfig
    from mm1.models.mm1_model import count_mismatches
    from mm1.parallel.setup import distributed

    failed = 0
    with distributed(ParallelConfig(), seed=0):
        for name, cfg in configs.items():
            for line in count_mismatches(cfg.model, cfg.tokenizer.vocab_size):
                print(f"mm1 presets: {name}: {line}", file=sys.stderr)
                failed += 1
    if failed:
        print(f"mm1 presets: {failed} count(s) disagree with the instantiated models", file=sys.stderr)
        return 1
    print(f"mm1 presets: {len(configs)} preset(s) match their instantiated (meta-device) models", file=sys.stderr)
    return 0


def _cmd_flops(args: argparse.Namespace) -> int:
    from mm1.models.flops import step_flops

    cfg = resolve(args)
    ips = args.images_per_sequence
    if ips is None:
        ips = cfg.data.mixture.max_images_per_sequence
    flops = step_flops(cfg, ips)
    batch, seq = cfg.train.global_batch_size, cfg.model.decoder.seq_length
    print(f"# {cfg.name}: one step = {batch} sequences x {seq} tokens, {ips:g} images per sequence")
    print("component,flops")
    for key, value in flops.items():
        print(f"{key},{value:.6e}")
    return 0


def _cmd_plan(args: argparse.Namespace) -> int:
    from mm1.config.presets import load_preset
    from mm1.plan import PAPER_PRESETS, PlanError, check, choose, describe, estimate, table

    opts = {"mfu": args.mfu, "images_per_sequence": args.images_per_sequence}
    if not args.all:
        sys.stdout.write(describe(choose(resolve(args), args.gpu, args.nodes, **opts)))
        return 0
    if args.nodes is not None or args.preset or args.config or args.config_json or args.overrides:
        raise ConfigError("mm1 plan --all plans the paper presets as they are: drop --preset, --config, --set, --nodes")
    plans, failed = [], []
    for name in PAPER_PRESETS:
        cfg = load_preset(name)
        try:
            plans.append(check(cfg, args.gpu, **opts))
        except PlanError as exc:
            plans.append(estimate(cfg, args.gpu, **opts))
            failed.append(str(exc))
    sys.stdout.write(table(plans))
    for line in failed:
        print(f"mm1 plan: error: {line}", file=sys.stderr)
    return 1 if failed else 0


def _cmd_world(args: argparse.Namespace) -> int:
    """write the synthetic MM1 world as datasets + manifest"""
    from mm1.world.export import make_world

    manifest = make_world(resolve(args).world, args.out)
    print(f"world: {manifest.height} files, {int(manifest['samples'].sum())} records -> {args.out}")
    return 0


def _cmd_acquire(args: argparse.Namespace) -> int:
    """download and verify the datasets in data.sources"""
    from mm1.data.acquire import acquire

    cfg = resolve(args).data
    if not cfg.sources:
        raise ConfigError(
            "data.sources is empty: list the datasets to acquire (name, url, sha256, format, role, licence)"
        )
    manifest = acquire(cfg.sources, args.out, cfg.max_bad_fraction, fetch_cfg=cfg.fetch)  # AcquireError: one line
    files = dict(zip(manifest["path"], manifest["sha256"], strict=True))  # what it wrote (the URLs are in config)
    provenance.record(args.out, stage="acquire", config={"data": cfg.model_dump(mode="json")}, seed=None,
                      extra={"files_sha256": files})  # fmt: skip
    print(
        f"acquire: {manifest['name'].n_unique()} sources, {manifest.height} files, "
        f"{int(manifest['samples'].sum())} samples -> {args.out}"
    )
    return 0


def _cmd_tokenizer(args: argparse.Namespace) -> int:
    """train the BPE tokenizer on the text of the pre-training sources"""
    from mm1.data.stages import make_tokenizer

    cfg = resolve(args)
    tok = make_tokenizer(cfg.tokenizer, args.manifest, args.out, cfg.data.max_bad_fraction)
    print(f"tokenizer: {tok.vocab_size} tokens -> {tok.path}")
    return 0


def _cmd_pack(args: argparse.Namespace) -> int:
    """draw and pack the run's pre-training sequences from the mixture"""
    from mm1.data.stages import pack

    mixture = pack(resolve(args), args.manifest, args.tokenizer, args.out)
    print(mixture)
    return 0


def _cmd_sft_pack(args: argparse.Namespace) -> int:
    """turn the instruction conversations into SFT sequences (loss on answers; image splitting)"""
    from mm1.data.stages import sft_pack

    print(sft_pack(resolve(args), args.manifest, args.tokenizer, args.out))
    return 0


# mm1 train's optional starting points: flag -> the model part it loads (None: all of it).
INIT_FLAGS = {"--init": None, "--init-encoder": "encoder", "--init-decoder": "language_model"}


def _cmd_train(args: argparse.Namespace) -> int:
    """pre-training (text-only LLM or multimodal) or SFT with megatron-core"""
    from mm1.parallel.launch import relaunch_if_needed
    from mm1.train.loop import RESUME

    cfg = resolve(args)
    init = []  # (folder, the parts it loads or None for all), checked before any process starts
    for flag, part in INIT_FLAGS.items():
        path = getattr(args, flag[2:].replace("-", "_"))
        if path is not None and not path.is_dir():
            what = "is a file" if path.exists() else "does not exist"
            raise errors.UsageError(
                f"{flag} {path} {what}: give a checkpoint folder (the checkpoint/ of a train stage's --out)"
            )
        if path is not None:
            init.append((path, (part,) if part else None))
    init = [*hf_cli.init_from(cfg, args.tokenizer, ("encoder", "connector", "language_model")), *init]
    code = relaunch_if_needed(cfg.parallel, args.argv, out=args.out, resume=args.out / RESUME)
    if code is not None:
        return code
    from mm1.train.trainer import train

    # CheckpointWriteError (disk full and co): exit 1 from main, not 75 (a requeue would fail again)
    result = train(cfg, args.packed, args.tokenizer, args.out, init=init)
    if os.environ.get("RANK", "0") != "0":
        return 0
    first, last = result.metrics["loss"][0], result.metrics["loss"][-1]
    print(f"train: loss {first:.3f} -> {last:.3f} over {len(result.metrics)} steps; checkpoint {result.checkpoint}")
    return 0


def _cmd_encoder(args: argparse.Namespace) -> int:
    """image-encoder pre-training with the CLIP or AIM head (model.encoder.objective)"""
    from mm1.parallel.launch import relaunch_if_needed
    from mm1.train.encoder_trainer import check_layout, train_encoder
    from mm1.train.loop import RESUME

    cfg = resolve(args)
    try:
        check_layout(cfg)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    init = hf_cli.init_from(cfg, args.tokenizer, ("encoder",))
    code = relaunch_if_needed(cfg.parallel, args.argv, out=args.out, resume=args.out / RESUME)
    if code is not None:
        return code
    metrics = train_encoder(cfg, args.manifest, args.tokenizer, args.out, init=init[0][0] if init else None)
    if os.environ.get("RANK", "0") == "0":
        first, last = metrics["loss"][0], metrics["loss"][-1]
        print(f"encoder ({cfg.model.encoder.objective}): loss {first:.3f} -> {last:.3f} over {len(metrics)} steps")
    return 0


def _cmd_upcycle(args: argparse.Namespace) -> int:
    """build an MoE checkpoint from a dense one (each FFN copied into its experts; model.moe from the config)"""
    from mm1.train.checkpoint import read_meta
    from mm1.train.upcycle import upcycle_checkpoint

    cfg = resolve(args)
    if not cfg.model.moe.enabled:
        raise ConfigError(
            "mm1 upcycle needs an MoE target: set model.moe.num_experts (e.g. --set model.moe.num_experts=8)"
        )
    dense = read_meta(args.checkpoint)["model"]
    target = dense.model_copy(update={"moe": cfg.model.moe})  # the parent's model, the config's MoE section
    out = upcycle_checkpoint(args.checkpoint, target, args.out, seed=cfg.train.seed)
    print(
        f"upcycled {args.checkpoint} -> {out}: {cfg.model.moe.num_experts} experts every {cfg.model.moe.layer_freq} layer(s)"
    )
    return 0


def _cmd_figure(args: argparse.Namespace) -> int:
    """the miniature study's figure and results table"""
    from mm1.figures.tiny_study import tiny_study

    result = tiny_study(args.metrics, args.scores, args.out)
    print(f"figure: {result.png}")
    return 0


def _cmd_compare(args: argparse.Namespace) -> int:
    from mm1.figures.compare import compare, load_meta, load_spec, parse_cells

    spec, runs, meta = load_spec(args.spec), parse_cells(args.cells), load_meta(args.meta)
    png, csv, seeds = compare(args.id, spec, runs, meta, args.out)
    print(f"figure {args.id}: {png}, {csv}, {seeds}")
    return 0


def _cmd_lessons(args: argparse.Namespace) -> int:
    from mm1.figures.lessons import lessons, parse_seeds

    csv, md = lessons(args.lessons, parse_seeds(args.seeds), args.out)
    print(f"lessons: {md}, {csv}")
    return 0


def _cmd_power(args: argparse.Namespace) -> int:
    from mm1.figures.power import pilot

    md = pilot(args.seeds, args.metric, args.effects, args.study_seeds, args.out)
    print(f"power: {md}")
    return 0


@dataclass(frozen=True)
class Command:
    """One ``mm1`` subcommand: its name, help, function, arguments, and whether it takes the config flags."""

    name: str
    help: str
    run: Callable[[argparse.Namespace], int] | None
    arguments: Callable[[argparse.ArgumentParser], None]
    configured: bool = False


def commands() -> list[Command]:
    """Every subcommand, registered the same way. The stage commands come from the stage registry
    (mm1.stages): one per command its stages run, with their inputs as options; each runs
    ``_cmd_<name>`` of this module, whose docstring is its help."""
    table = [
        Command("config", "show the resolved config or the JSON schema", _cmd_config, cli_args.config, True),
        Command(
            "presets",
            "CSV of the presets: parameters (total, active) and the MM1 LR law",
            _cmd_presets,
            cli_args.presets,
        ),
        Command("flops", "matmul FLOPs of one training step (one global batch)", _cmd_flops, cli_args.flops, True),
        Command(
            "plan",
            "cluster layout of a run: memory per GPU, FLOPs and time per step; or search one",
            _cmd_plan,
            cli_args.plan,
            True,
        ),
        Command(
            "compare",
            "a paper figure or table: each cell's mean +- 95%% CI over its seed runs",
            _cmd_compare,
            cli_args.compare,
        ),
        Command(
            "lessons",
            "the paper's lessons: each check's effect over seeds, 95%% CI, MDE, Holm p and verdict",
            _cmd_lessons,
            cli_args.lessons,
        ),
        Command(
            "power", "the pilot: per-run sd of the metrics and the seeds per arm they imply", _cmd_power, cli_args.power
        ),
        Command("eval", eval_cli.HELP, None, lambda p: eval_cli.add_subcommands(p, _config_args, resolve)),
    ]
    for name in dict.fromkeys(s.command[0] for s in STAGES.values() if len(s.command) == 1):  # not `eval run`
        run = globals()[f"_cmd_{name.replace('-', '_')}"]
        table.append(Command(name, _help(run), run, cli_args.stage_inputs(name), True))
    table.append(Command("upcycle", _help(_cmd_upcycle), _cmd_upcycle, cli_args.upcycle, True))
    table.append(Command("figure", _help(_cmd_figure), _cmd_figure, cli_args.figure))
    table.append(Command("export-hf", _help(hf_cli.cmd_export_hf), hf_cli.cmd_export_hf, hf_cli.export_args))
    import_hf = _help(hf_cli.cmd_import_hf)
    table.append(
        Command("import-hf", import_hf, lambda a: hf_cli.cmd_import_hf(a, resolve(a)), hf_cli.import_args, True)
    )
    return table


def _help(run: Callable[[argparse.Namespace], int]) -> str:
    return (run.__doc__ or "").split("\n")[0]


LOG_LEVELS = ("ERROR", "WARNING", "INFO", "DEBUG")  # -v: INFO, -vv: DEBUG; the default WARNING


def set_log_level(level: str) -> None:
    """The level of mm1's log lines (downloads, retries, warnings), written to stderr."""
    logging.basicConfig(format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger().setLevel(level)


def parser() -> argparse.ArgumentParser:
    p = errors.Parser(prog="mm1", description="Reproduce the MM1 study, stage by stage.")
    p.add_argument("--debug", action="store_true", help="on an error, also print its traceback (or MM1_DEBUG=1)")
    p.add_argument("--version", action="version", version=f"mm1 {__version__}")
    p.add_argument("-v", "--verbose", action="count", default=0, help="log more: -v info, -vv debug")
    p.add_argument("--log-level", type=str.upper, choices=LOG_LEVELS, help="the log level (overrides -v)")
    sub = p.add_subparsers(dest="command", required=True)
    for command in commands():
        cp = sub.add_parser(command.name, help=command.help)
        if command.configured:
            _config_args(cp)
        command.arguments(cp)
        if command.run is not None:  # mm1 eval: its subcommands set their own
            cp.set_defaults(func=command.run)
    return p


FIGURE_FILES = {"figure": "tiny_study", "lessons": "lessons", "power": "power"}  # compare: its --id


def _artifact(args: argparse.Namespace) -> str | None:
    """The name of what a figure command writes into its shared --out folder (None: the folder is its own)."""
    if args.command == "compare":
        return str(args.id)
    return FIGURE_FILES.get(args.command)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        argv = expand_args_from(argv)
        args = parser().parse_args(argv)
    except errors.UsageError as exc:
        print(f"{exc.prog}: error: {exc}", file=sys.stderr)
        return 2
    args.argv = argv  # a multi-process stage relaunches itself with them
    set_log_level(args.log_level or LOG_LEVELS[min(args.verbose + 1, len(LOG_LEVELS) - 1)])
    prog = " ".join(["mm1", args.command, *([args.eval_command] if getattr(args, "eval_command", None) else [])])
    debug = args.debug or bool(os.environ.get("MM1_DEBUG"))
    try:
        out = getattr(args, "out", None)
        if out is None:
            return args.func(args)
        errors.check_out(out)
        # One run per output folder (the ranks of a job share their launcher's); the figure commands
        # share results/figures, each writing its own files: one run per figure there.
        with outlock.hold(out, _artifact(args)):
            return args.func(args)
    except Exception as exc:
        known = errors.user_error(exc)
        if debug or known is None:
            traceback.print_exc()
        if known is None:
            print(
                f"{prog}: internal error ({type(exc).__name__}): a bug in mm1, not in your input; "
                "please report it with the traceback above",
                file=sys.stderr,
            )
            return 1
        line, code = known
        print(f"{prog}: error: {line}", file=sys.stderr)
        return code


if __name__ == "__main__":
    sys.exit(main())
