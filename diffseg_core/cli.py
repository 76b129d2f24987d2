"""Command line: ``train``, ``evaluate`` and ``book`` (the main job).

::

    python -m diffseg_core train    --method unet --dataset monuseg|cxr|hippocampus|qata|synthetic \\
                                    --data DIR --preset smoke|cpu|gpu|paper|auto --out RUN_DIR [--seed N] [--resume]
    python -m diffseg_core evaluate --run RUN_DIR --data DIR [--split test|val|train|all] --json OUT.json
    python -m diffseg_core book     [--preset auto] [--data DIR] [--out _build]

``--data`` may also come from ``$DIFFSEG_DATA`` and ``--preset`` from ``$DIFFSEG_PRESET``.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path


def _parser() -> argparse.ArgumentParser:
    from .config import AUGMENT_POLICIES, DATASETS, PRESETS
    from .data import SPLITS
    from .methods import METHODS, get_method_class

    p = argparse.ArgumentParser(prog="python -m diffseg_core", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)

    t = sub.add_parser("train", help="train a method and write a run folder")
    t.add_argument("--method", required=True, choices=METHODS)
    t.add_argument("--dataset", required=True, choices=DATASETS)
    t.add_argument("--data", default=os.environ.get("DIFFSEG_DATA", ""),
                   help="dataset folder (or a root holding it); not needed for --dataset synthetic")
    t.add_argument("--preset", default=os.environ.get("DIFFSEG_PRESET", "auto"),
                   choices=(*PRESETS, "auto"))
    t.add_argument("--out", required=True, help="run folder (created)")
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--resume", action="store_true", help="continue from RUN_DIR/last.pt")
    t.add_argument("--steps", type=int, help="override the preset's number of training steps")
    t.add_argument("--minutes", type=float, help="wall-clock training budget in minutes (overrides the preset)")
    t.add_argument("--augment", choices=("official", *AUGMENT_POLICIES),
                   help="training augmentation policy (default 'official': the dataset's official pipeline; "
                        + "; ".join(f"{k}: {v}" for k, v in AUGMENT_POLICIES.items()) + ")")
    t.add_argument("--no-progress", action="store_true")
    for name in METHODS:  # each method declares its own options (diffseg_core.methods.base.MethodOption)
        options = get_method_class(name).cli_options
        if not options:
            continue
        g = t.add_argument_group(f"{name} options")
        for o in options:
            if o.is_switch:
                g.add_argument(o.flag, dest=o.dest, action="store_true", help=o.help)
            else:
                g.add_argument(o.flag, dest=o.dest, type=o.type, choices=o.choices, metavar=o.metavar, help=o.help)

    e = sub.add_parser("evaluate", help="score a trained run on a dataset folder")
    e.add_argument("--run", required=True)
    e.add_argument("--data", default=os.environ.get("DIFFSEG_DATA", ""))
    e.add_argument("--split", default="test", choices=(*SPLITS, "all"))
    e.add_argument("--json", required=True, help="where to write the metrics")
    e.add_argument("--checkpoint", default="best", choices=["best", "last"])

    b = sub.add_parser("book", help="the main job: run every notebook with papermill, then build the book")
    b.add_argument("--preset", default=os.environ.get("DIFFSEG_PRESET", "auto"), choices=(*PRESETS, "auto"))
    b.add_argument("--data", default=os.environ.get("DIFFSEG_DATA", ""))
    b.add_argument("--out", default="_build")
    b.add_argument("--only", nargs="*", help="run only these notebooks (name prefixes), then build")
    b.add_argument("--no-build", action="store_true", help="execute notebooks only")
    b.add_argument("--timeout", type=int, default=None, help="per-cell timeout in seconds")
    return p


def _model_overrides(args: argparse.Namespace) -> dict:
    """The model-config fields set by the options the user actually passed; an option of another method is an error."""
    from .methods import METHODS, get_method_class

    out = {}
    for name in METHODS:
        for o in get_method_class(name).cli_options:
            value = getattr(args, o.dest, None)
            if value in (None, False):
                continue
            if name != args.method:
                raise ValueError(f"{o.flag} is a {name} option; it does not apply to --method {args.method}")
            out[o.field] = o.const if o.is_switch else value
    return out


def _load_data(name: str, data: str, cfg, seed: int):
    from .data import find_dataset_root, load_dataset

    if name == "synthetic":
        return load_dataset("synthetic", None, cfg, seed=seed)
    if not data:
        raise SystemExit(f"error: --data is required for --dataset {name} (or set DIFFSEG_DATA)")
    # an explicitly named folder is handed to the loader even when discovery does not recognise it
    # (e.g. a flat images/ + masks/ folder): the loader then says precisely what is missing
    root = find_dataset_root(name, data) or (Path(data) if Path(data).is_dir() else None)
    if root is None:
        raise SystemExit(f"error: no {name} dataset found at {data!r}; see data/README.md for the expected layouts")
    return load_dataset(name, root, cfg, seed=seed)


def cmd_train(args: argparse.Namespace) -> int:
    from .config import override
    from .methods import get_config
    from .train import run_training

    cfg = get_config(args.method, args.dataset, args.preset, seed=args.seed, **_model_overrides(args))
    if args.steps is not None:
        cfg = override(cfg, **{"train.steps": args.steps})
    if args.minutes is not None:
        cfg = override(cfg, **{"train.max_minutes": args.minutes})
    if args.augment is not None:
        cfg = override(cfg, **{"data.augment": args.augment})
    dataset = _load_data(args.dataset, args.data, cfg.data, cfg.seed)
    run_training(cfg, dataset, run_dir=args.out, resume=args.resume, progress=not args.no_progress)
    print(f"run written to {args.out}")
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    from .checkpoint import load_checkpoint, write_json
    from .config import RunConfig
    from .device import describe_device
    from .evaluate import describe_protocol, evaluate_cases, result_row
    from .train import load_run

    run_dir = Path(args.run)
    cfg = RunConfig.from_dict(json.loads((run_dir / "config.json").read_text())) if (run_dir / "config.json").is_file() \
        else RunConfig.from_dict(load_checkpoint(run_dir / f"{args.checkpoint}.pt")["config"])
    dataset = _load_data(cfg.dataset, args.data, cfg.data, cfg.seed)
    cases = dataset.split(args.split)
    if not cases:
        raise SystemExit(f"error: split {args.split!r} of {dataset.root} is empty; use --split all for a folder without a split column")
    method, cfg, run_info = load_run(run_dir, dataset, which=args.checkpoint)
    volumes = "volume" in cases[0].meta
    chosen = (f"{args.checkpoint}.pt (best validation Dice at step {run_info.get('best_step')})" if args.checkpoint == "best"
              else "last.pt (final weights)")
    scores = evaluate_cases(method, cases, progress=True)
    scores["protocol"] = describe_protocol(cfg, args.split, scores["n_images"], chosen, volumes)
    result = {"method": cfg.method, "dataset": cfg.dataset, "preset": cfg.preset, "split": args.split,
              "data": str(dataset.root) if dataset.root else "synthetic", "data_source": dataset.source,
              **scores, "device": describe_device(method.device), "run": str(run_dir),
              "train_seconds": run_info.get("train_seconds"), "steps_done": run_info.get("steps_done")}
    # the results-table row, as the chapters build theirs (diffseg_core.evaluate.result_row)
    result["row"] = row = result_row(cfg.method, scores, dataset.source, train_time_s=run_info.get("train_seconds"),
                                     steps=run_info.get("steps_done"))
    write_json(result, args.json)
    print(f"{row['model']} on {dataset.name}/{args.split}: Dice {row['dice_mean']:.4f} (per-image mean), "
          f"{row['dice_global']:.4f} (global); IoU {row['iou_mean']:.4f} / {row['iou_global']:.4f}; "
          f"{row['n_images']} {'volumes' if volumes else 'images'} -> {args.json}")
    return 0


def cmd_book(args: argparse.Namespace) -> int:
    from .book import run_main_job

    return run_main_job(preset=args.preset, data_root=args.data, out=args.out, only=args.only,
                        build=not args.no_build, timeout=args.timeout)


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        return {"train": cmd_train, "evaluate": cmd_evaluate, "book": cmd_book}[args.command](args)
    except (FileNotFoundError, ValueError) as exc:  # DataError is a ValueError
        print(f"error: {exc}", file=sys.stderr)
        return 2
