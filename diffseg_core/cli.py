"""Command line: ``train``, ``evaluate`` and ``book`` (the main job).

::

    python -m diffseg_core train    --method unet --dataset monuseg|cxr|hippocampus|qata|synthetic \\
                                    --data DIR --preset smoke|cpu|gpu|paper|auto --out RUN_DIR [--seed N] [--resume]
    python -m diffseg_core evaluate --run RUN_DIR --data DIR [--split test|val|train|all] --json OUT.json \\
                                    [--export-nifti DIR]
    python -m diffseg_core evaluate --official monuseg|cxr|hippocampus --weights FILE --data DIR --json OUT.json
    python -m diffseg_core book     [--preset auto] [--data DIR] [--out _build] [--force]

``--data`` may also come from ``$DIFFSEG_DATA`` and ``--preset`` from ``$DIFFSEG_PRESET``.

Several processes: launched by ``torchrun`` (``torchrun --nproc_per_node N -m diffseg_core train ...``), ``train``
runs DistributedDataParallel on N processes (``nccl`` on GPUs, ``gloo`` on the CPU) and ``evaluate`` splits the
images across them; rank 0 alone checks and writes the run folder and prints (:mod:`diffseg_core.distributed`).

Errors: bad input (a data file, a folder, an option, a checkpoint) ends with one paragraph on stderr,
``error: <file or option>: <what is wrong>; <what to do>``, exit status 2 and no traceback; nothing partial
is left behind (the options, the data and the run folder are checked before anything is written, and a
run that fails before its first checkpoint removes what it created). A failure while running (a full
disk, a diverged loss) exits with status 1, again without a traceback. Every case, with its exact
message, is listed in the book's Troubleshooting appendix (``diffseg_core.troubleshooting``).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path


class UsageError(ValueError):
    """A command-line option is missing, unknown or has a value that cannot work. Exit status 2."""


class _Parser(argparse.ArgumentParser):
    """``argparse`` that raises :class:`UsageError` (one paragraph, no usage dump) instead of exiting."""

    def error(self, message: str) -> None:  # type: ignore[override]
        raise UsageError(f"{message}; see `{self.prog} --help` for the options")


def _parser() -> argparse.ArgumentParser:
    from .config import AUGMENT_POLICIES, DATASETS, PRESETS, TARGETS
    from .data import SPLITS
    from .methods import METHODS, get_method_class

    p = _Parser(prog="python -m diffseg_core", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
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
    t.add_argument("--target", choices=tuple(dict.fromkeys(c for choices in TARGETS.values() for c in choices)),
                   help="cxr only: segment the lung fields (default) or the lesions (with generated LViT-style reports)")
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

    e = sub.add_parser("evaluate", help="score a trained run (or, with --official, the authors' cDAL weights)")
    # --run-dir: the spelling for torchrun, whose own parser takes --run for an abbreviation of its --run-path
    e.add_argument("--run", "--run-dir", dest="run",
                   help="run folder written by train (required unless --official); under torchrun write --run-dir")
    e.add_argument("--data", default=os.environ.get("DIFFSEG_DATA", ""))
    e.add_argument("--split", default="test", choices=(*SPLITS, "all"))
    e.add_argument("--json", required=True, help="where to write the metrics")
    e.add_argument("--checkpoint", default="best", choices=["best", "last"])
    e.add_argument("--limit", type=int, help="score only the first N images (volumes) of the split; recorded in the "
                   "JSON and the protocol (default: every image)")
    _add_official_options(e)
    e.add_argument("--export-nifti", metavar="DIR", default=None,
                   help="volume datasets: write each predicted volume as DIR/<id>.nii.gz with its input's affine and header")

    b = sub.add_parser("book", help="the main job: run every notebook with papermill, then build the book")
    b.add_argument("--preset", default=os.environ.get("DIFFSEG_PRESET", "auto"), choices=(*PRESETS, "auto"))
    b.add_argument("--data", default=os.environ.get("DIFFSEG_DATA", ""))
    b.add_argument("--out", default="_build")
    b.add_argument("--only", nargs="*", help="run only these notebooks (name prefixes); the book is not built")
    b.add_argument("--no-build", action="store_true", help="execute notebooks only")
    b.add_argument("--force", action="store_true",
                   help="re-execute every notebook (by default one is re-executed only when its inputs changed)")
    b.add_argument("--seed", type=int, default=0, help="the SEED parameter of every notebook")
    b.add_argument("--timeout", type=int, default=None, help="per-cell timeout in seconds")
    b.add_argument("--jobs", type=int, default=None,
                   help="chapters executed at once, each kernel with its share of the cores (default: one per "
                        "core up to 4 on a CPU, memory permitting; 1 on a GPU)")
    return p


def _model_overrides(args: argparse.Namespace) -> dict:
    """The model-config fields set by the options the user actually passed; an option of another method is an error."""
    from .methods import METHODS, get_method_class

    out = {}
    for name in METHODS:
        for o in get_method_class(name).cli_options:
            value = getattr(args, o.dest, None)
            if value is None or value is False:   # not given (a value of 0, e.g. --ema-decay 0, is given)
                continue
            if name != args.method:
                raise UsageError(f"{o.flag} is a {name} option; it does not apply to --method {args.method}: leave it "
                                 f"out, or use --method {name}")
            if o.type is int and not o.is_switch and value < o.minimum:
                raise UsageError(f"{o.flag} {value}: must be at least {o.minimum}; give a "
                                 + ("positive number" if o.minimum == 1 else f"number of {o.minimum} or more")
                                 + ", or leave it out for the preset's value")
            out[o.field] = o.const if o.is_switch else value
    return out


def _other_kind(name: str, path: Path) -> str | None:
    """The dataset kind ``path`` holds when it is clearly not ``name`` (``None``: let ``name``'s loader decide)."""
    from .data import dataset_kinds

    if name in ("monuseg", "cxr") and (path / "images").is_dir() and (path / "masks").is_dir():
        return None  # the flat images/ + masks/ layout serves both; the loader checks the pixels
    kinds = [k for k in dataset_kinds(path) if k != name]
    return kinds[0] if kinds and name not in dataset_kinds(path) else None


def _load_data(name: str, data: str, cfg, seed: int, run: str | None = None):
    """Load dataset ``name`` from ``--data`` (``run``: the run folder being evaluated, for the messages)."""
    from .data import find_dataset_root, load_dataset

    if name == "synthetic":
        return load_dataset("synthetic", None, cfg, seed=seed)
    if not data:
        raise UsageError(f"--data is required for --dataset {name}; pass the dataset folder (or set DIFFSEG_DATA)"
                         if run is None else f"--data is required to evaluate {run} (a {name} run); pass a {name} "
                         "folder (or set DIFFSEG_DATA)")
    path = Path(data).expanduser()
    root = find_dataset_root(name, path)
    if root is None and not path.is_dir():
        raise UsageError(f"--data {data}: no {name} dataset found there (no such folder); pass the dataset folder, "
                         "see data/README.md for the expected layouts")
    other = _other_kind(name, path) if root is None else None
    if other is not None:
        if run is None:
            raise UsageError(f"--data {data}: holds a {other} dataset, not a {name} one; use --dataset {other}, or pass "
                             f"a {name} folder")
        raise UsageError(f"--data {data}: holds a {other} dataset, but {run} is a {name} run; evaluate it on a {name} "
                         f"folder, or evaluate a {other} run on this one")
    # an explicitly named folder is handed to the loader even when discovery does not recognise it
    # (e.g. a flat images/ + masks/ folder): the loader then says precisely what is missing
    return load_dataset(name, root or path, cfg, seed=seed)


def _check_output_file(path: str, option: str) -> None:
    """Refuse an output file whose folder cannot be created or written (checked before any work is done)."""
    import tempfile

    target = Path(path)
    if target.is_dir():
        raise UsageError(f"{option} {path}: is a folder; give a file name (e.g. {Path(path) / 'results.json'})")
    probe = target.parent
    while not probe.exists() and probe.parent != probe:
        probe = probe.parent
    try:
        if not probe.is_dir():
            raise OSError(f"{probe} is a file, not a folder")
        fd, tmp = tempfile.mkstemp(prefix=".diffseg-write-test.", dir=probe)
        os.close(fd)
        os.unlink(tmp)
    except OSError as exc:
        raise UsageError(f"{option} {path}: cannot write there ({getattr(exc, 'strerror', None) or exc}); choose "
                         "another path") from exc


def cmd_train(args: argparse.Namespace) -> int:
    from . import distributed
    from .device import pick_device

    with distributed.session(pick_device()) as info:  # a process group only when launched by torchrun
        _train(args, info)
        if info.is_main:
            print(f"run written to {args.out}")
    return 0


def _train(args: argparse.Namespace, info) -> None:
    from . import distributed
    from .checkpoint import RunLock
    from .config import TARGETS, override
    from .methods import get_config
    from .train import RUN_FILES, check_run_folder, run_training

    overrides = _model_overrides(args)
    if args.steps is not None and args.steps < 1:
        raise UsageError(f"--steps {args.steps}: must be at least 1; give the number of training steps, or "
                         "leave it out for the preset's")
    if args.minutes is not None and not args.minutes > 0:
        raise UsageError(f"--minutes {args.minutes}: must be a positive number of minutes; leave it out for "
                         "the preset's time budget")
    if args.target is not None and args.dataset not in (*TARGETS, "synthetic"):
        raise UsageError(f"--target {args.target}: only --dataset cxr offers a choice of target (lung or lesion; "
                         f"--dataset synthetic gives their offline stand-ins); leave --target out for --dataset "
                         f"{args.dataset}")
    cfg = get_config(args.method, args.dataset, args.preset, seed=args.seed, **overrides)
    if args.steps is not None:
        cfg = override(cfg, **{"train.steps": args.steps})
    if args.target is not None:
        cfg = override(cfg, **{"data.target": args.target})
    if args.minutes is not None:
        cfg = override(cfg, **{"train.max_minutes": args.minutes})
    if args.augment is not None:
        cfg = override(cfg, **{"data.augment": args.augment})
    # the run folder first (cheap), then the data (slow), then the training loop's own checks
    out = Path(args.out)

    def check_out() -> None:  # on rank 0 only: the other ranks would find the folder rank 0 has started to write
        check_run_folder(out)
        RunLock(out).check()
        existing = [n for n in RUN_FILES if (out / n).exists()] if out.is_dir() else []
        if args.resume and not (out / "last.pt").is_file():
            raise UsageError(f"--resume: {out} has no checkpoint last.pt to resume from; train into it without "
                             "--resume, or resume the folder you meant")
        if existing and not args.resume:
            raise UsageError(f"--out {out}: already holds a run ({', '.join(existing)}); continue it with --resume, or "
                             "choose another --out (delete the folder to start that run again)")

    distributed.on_main(check_out)
    dataset = _load_data(args.dataset, args.data, cfg.data, cfg.seed)
    wanted = overrides.get("train_images")
    available = len(dataset.split("train"))
    if wanted is not None and wanted > available:
        raise UsageError(f"--train-images {wanted}: the training split of {dataset.root or dataset.name} has only "
                         f"{available} image(s); use --train-images {available} or fewer")
    run_training(cfg, dataset, run_dir=out, resume=args.resume, progress=not args.no_progress,
                 verbose=info.is_main)


def _version_warning(run_dir: Path, quiet: bool = False) -> tuple[dict, dict]:
    """Warn (stderr) when the run was trained with other package versions; returns (changes, training record)."""
    from .provenance import version_changes

    rec: dict = {}
    for name in ("environment.json", "run.json"):
        path = run_dir / name
        if path.is_file():
            try:
                d = json.loads(path.read_text())
            except ValueError:
                continue
            rec = d if name == "environment.json" else d.get("environment", {})
            if rec:
                break
    changes = version_changes(rec.get("versions", {})) if rec else {}
    if changes and not quiet:
        was = ", ".join(f"{k} {a}" for k, (a, _) in changes.items())
        now = ", ".join(f"{k} {b}" for k, (_, b) in changes.items())
        print(f"warning: {run_dir} was trained with {was}; this evaluation runs with {now}. Scores can differ slightly "
              "from an evaluation with the training versions", file=sys.stderr)
    return changes, rec


def cmd_evaluate(args: argparse.Namespace) -> int:
    if getattr(args, "official", None):
        return cmd_evaluate_official(args)
    if not args.run:
        raise UsageError("evaluate needs --run RUN_DIR (the --out folder of a train command), or --official NAME to score the authors' checkpoint")
    from . import distributed
    from .device import pick_device

    with distributed.session(pick_device()):  # under torchrun the images are split across the processes
        return _evaluate(args)


def _evaluate(args: argparse.Namespace) -> int:
    from . import distributed
    from .checkpoint import load_checkpoint, write_json
    from .data import uncapped
    from .device import describe_device, pick_device
    from .evaluate import count_units, describe_protocol, evaluate_cases, limit_cases, result_row
    from .provenance import environment
    from .train import _checkpoint_config, load_run, load_run_config

    if args.limit is not None and args.limit < 1:
        raise UsageError(f"--limit {args.limit}: must be at least 1; leave it out to score every image")
    run_dir = Path(args.run)
    if not run_dir.is_dir():
        raise UsageError(f"--run {run_dir}: no such run folder; pass the --out folder of a train command")
    if (run_dir / "config.json").is_file():
        cfg = load_run_config(run_dir / "config.json")
    elif (run_dir / f"{args.checkpoint}.pt").is_file():
        path = run_dir / f"{args.checkpoint}.pt"
        cfg = _checkpoint_config(load_checkpoint(path), path)
    else:
        raise UsageError(f"--run {run_dir}: not a run folder (no config.json or {args.checkpoint}.pt in it); pass the "
                         "--out folder of a train command")
    _check_output_file(args.json, "--json")
    # every image of the split: the training preset's caps are for training and in-training validation only
    dataset = _load_data(cfg.dataset, args.data, uncapped(cfg.data), cfg.seed, run=str(run_dir))
    available = dataset.split(args.split)
    if not available:
        raise UsageError(f"--split {args.split}: the split is empty in {dataset.root}; use --split all for a folder "
                         "without a split column")
    cases = limit_cases(available, args.limit)
    main = distributed.current().is_main
    method, cfg, run_info = load_run(run_dir, dataset, device=distributed.place(pick_device()), which=args.checkpoint)
    changes, trained_env = _version_warning(run_dir, quiet=not main)
    volumes = "volume" in cases[0].meta
    if args.export_nifti and not volumes:
        raise SystemExit(f"error: --export-nifti needs a volume dataset (hippocampus); {cfg.dataset} has 2-D images")
    chosen = (f"{args.checkpoint}.pt (best validation Dice at step {run_info.get('best_step')})" if args.checkpoint == "best"
              else "last.pt (final weights)")
    trained_on = str(trained_env.get("device", ""))
    note = (f"Trained on {trained_on.split(':')[0]}, where some kernels are not bitwise reproducible."
            if trained_on and not trained_on.startswith("cpu") else "")
    scores = evaluate_cases(method, cases, progress=main, keep_predictions=bool(args.export_nifti))
    predictions = scores.pop("predictions", None)
    n_available = count_units(available)
    scores["protocol"] = describe_protocol(cfg, args.split, scores["n_images"], chosen, volumes,
                                           n_available=n_available, note=note)
    overlap = sorted(set(run_info.get("train_ids", [])) & {c.id for c in cases})
    if overlap and args.split not in ("train", "all") and main:
        print(f"warning: {len(overlap)} of the scored {args.split} cases were used for training ({overlap[0]}, ...); "
              "this score is not a held-out one", file=sys.stderr)
    result = {"method": cfg.method, "dataset": cfg.dataset, "preset": cfg.preset, "split": args.split,
              "data": str(dataset.root) if dataset.root else "synthetic", "data_source": dataset.source,
              **scores, "limit": args.limit, "n_available": n_available, "training_cases_scored": len(overlap),
              "device": describe_device(method.device), "run": str(run_dir),
              "train_seconds": run_info.get("train_seconds"), "steps_done": run_info.get("steps_done"),
              "environment": environment(method.device),
              "version_changes": {k: {"trained": a, "now": b} for k, (a, b) in changes.items()}}
    # the results-table row, as the chapters build theirs (diffseg_core.evaluate.result_row)
    result["row"] = row = result_row(cfg.method, scores, dataset.source, train_time_s=run_info.get("train_seconds"),
                                     steps=run_info.get("steps_done"))

    def write_outputs() -> None:  # rank 0 only (distributed.on_main): the NIfTI files and the JSON
        if args.export_nifti:
            from .data.nifti import export_predictions, volume_sources

            written = export_predictions(predictions, args.export_nifti, volume_sources(cases), method.info.num_classes)
            result["nifti"] = [str(p) for p in written]
            print(f"{len(written)} predicted volumes written to {args.export_nifti} (NIfTI, the inputs' affine and header)")
        write_json(result, args.json)

    distributed.on_main(write_outputs)
    if not main:
        return 0
    print(f"{row['model']} on {dataset.name}/{args.split}: Dice {row['dice_mean']:.4f} (per-image mean), "
          f"{row['dice_global']:.4f} (global); IoU {row['iou_mean']:.4f} / {row['iou_global']:.4f}; "
          f"{row['n_images']} {'volumes' if volumes else 'images'}"
          + (f" of {n_available} (--limit)" if n_available != row["n_images"] else "") + f" -> {args.json}")
    return 0


# ---- evaluate --official: the authors' released cDAL generators (self-contained block) -------------------
def _add_official_options(e: argparse.ArgumentParser) -> None:
    """``evaluate --official NAME --weights FILE --data DIR --json OUT.json`` (see :mod:`diffseg_core.released`)."""
    from .cdal.official import OFFICIAL_CDAL

    g = e.add_argument_group("the authors' cDAL checkpoints (instead of --run)")
    g.add_argument("--official", choices=tuple(OFFICIAL_CDAL),
                   help="score a released cDAL generator with Algorithm 2 and the official T, ensemble and tiling")
    g.add_argument("--weights", help="the official .pth file (default: the weights folder's copy, "
                                     "python -m diffseg_core.weights list)")
    g.add_argument("--ensemble", type=int, help="override the official ensemble size (MoNuSeg 5, CXR 30, Hippocampus 5)")
    g.add_argument("--seed", type=int, default=0, help="seed of our data split and of the sampling noise")


def cmd_evaluate_official(args: argparse.Namespace) -> int:
    from .cdal.official import official_spec
    from .checkpoint import write_json
    from .released import evaluate_official, official_run_config
    from .weights import require_weights

    spec = official_spec(args.official)
    weights = Path(args.weights) if args.weights else require_weights(spec.weights[0]) if spec.weights else None
    if weights is None:
        raise UsageError(f"--official {args.official}: no released file fits this configuration; pass its file with --weights FILE")
    if not weights.is_file():
        raise FileNotFoundError(f"--weights {weights} does not exist")
    cfg = official_run_config(args.official, seed=args.seed)
    dataset = _load_data(spec.dataset, args.data, cfg.data, args.seed)
    result = evaluate_official(args.official, weights, dataset, split=args.split, seed=args.seed,
                               ensemble=args.ensemble, progress=True)
    write_json(result, args.json)
    row = result["row"]
    print(f"{row['model']} on {dataset.name}/{args.split}: Dice {row['dice_mean']:.4f} (per-image mean), "
          f"{row['dice_global']:.4f} (global); IoU {row['iou_mean']:.4f} / {row['iou_global']:.4f}; "
          f"{row['n_images']} {'volumes' if 'volume' in dataset.cases[0].meta else 'images'}; paper: "
          f"{spec.paper} -> {args.json}")
    return 0


def cmd_book(args: argparse.Namespace) -> int:
    from .book import run_main_job

    return run_main_job(preset=args.preset, data_root=args.data, out=args.out, only=args.only,
                        build=not args.no_build, timeout=args.timeout, force=args.force, seed=args.seed,
                        jobs=args.jobs)


def _one_paragraph(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    if isinstance(exc, OSError) and exc.strerror and exc.filename is None and text.startswith("["):
        text = exc.strerror  # CheckpointWriteError(errno, message): the message, without "[Errno 28]"
    return text


def _exit_status(exc: BaseException) -> int | None:
    """2 for bad input, 1 for a failure while running, ``None`` for anything else (a bug: it keeps its traceback)."""
    from .checkpoint import CheckpointError, CheckpointWriteError, RunLocked

    train = sys.modules.get("diffseg_core.train")  # imported by the commands that can raise TrainingDiverged
    if isinstance(exc, CheckpointWriteError) or (train is not None and isinstance(exc, train.TrainingDiverged)):
        return 1  # not bad input: the run stopped and its last checkpoint is kept
    if isinstance(exc, (ValueError, FileNotFoundError, CheckpointError, RunLocked)):  # DataError, ConfigError, UsageError
        return 2
    return None


def main(argv: list[str] | None = None) -> int:
    """Run one command; returns the exit status (0 ok, 2 bad input, 1 failure while running, 130 interrupted)."""
    from .distributed import env_rank

    try:
        args = _parser().parse_args(argv)
        return {"train": cmd_train, "evaluate": cmd_evaluate, "book": cmd_book}[args.command](args)
    except KeyboardInterrupt:
        if env_rank() == 0:
            print("interrupted", file=sys.stderr)
        return 130
    except Exception as exc:
        status = _exit_status(exc)
        if status is None:
            raise
        if env_rank() == 0:  # under torchrun every rank has the same error: rank 0 says it
            print(f"error: {_one_paragraph(exc)}", file=sys.stderr)
        return status
