"""`mnist-guide`: the course's steps without a notebook: info, train, evaluate, export, serve."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path

from mnist_guide import __version__


def int_range(low: int, high: int | None = None) -> Callable[[str], int]:
    """An argparse type for a whole number in `low..high` (`high=None`: no upper bound)."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
        if value < low or (high is not None and value > high):
            raise argparse.ArgumentTypeError(f"{value} is outside {low}..{high if high is not None else ''}")
        return value

    return parse


def _cmd_info(args: argparse.Namespace) -> int:
    from mnist_guide.runtime import artifacts_dir, data_dir, describe_environment, format_environment

    info = {**describe_environment(args.device), "data_dir": str(data_dir()), "artifacts_dir": str(artifacts_dir(create=False))}
    print(json.dumps(info, indent=2) if args.json else format_environment(info))
    return 0


def _writable_folder(out: Path) -> None:
    """Refuse, before any work, an `--out` that is a file or a folder this user cannot write to."""
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {out}: is a file, not a folder")
    folder = next(p for p in (out, *out.parents) if p.exists())
    if not os.access(folder, os.W_OK | os.X_OK):
        raise ValueError(f"--out {out}: {folder} is not writable")


def _cmd_train(args: argparse.Namespace) -> int:
    from mnist_guide.training import (
        FAST_RECIPE,
        RECORD_RECIPE,
        VIT_RECIPE,
        Recipe,
        train_course_model,
        write_metrics,
    )

    out = Path(args.out)
    _writable_folder(out)
    if (out / "checkpoint.pt").exists() and not (args.resume or args.force):
        raise ValueError(f"--out {out}: holds a run already; add --resume to continue it or --force to replace it")
    base = VIT_RECIPE if args.model == "vit" else {"record": RECORD_RECIPE, "course": Recipe(), "fast": FAST_RECIPE}[args.recipe]
    recipe = replace(base, **{key: getattr(args, key) for key in ("epochs", "seed") if getattr(args, key) is not None})

    def report(epoch: int, history) -> None:
        print(f"epoch {epoch + 1}/{recipe.epochs}: train loss {history.train_loss[-1]:.4f}, "
              f"test accuracy {history.test_accuracy[-1]:.2%}, {history.epoch_seconds[-1]:.1f} s", flush=True)

    run = train_course_model(recipe, device=args.device, out=out, resume=args.resume,
                             progress=not args.quiet and sys.stderr.isatty(), on_epoch_end=None if args.quiet else report)
    metrics = write_metrics(out / "metrics.json", run, recipe)
    print(f"test accuracy {metrics['test_accuracy']:.2%}, test loss {metrics['test_loss']:.4f}, "
          f"{metrics['epochs']} epochs, {metrics['train_seconds']:.1f} s of training -> {out / 'checkpoint.pt'}")
    return 0


def _cmd_train_parallel(args: argparse.Namespace) -> int:
    from mnist_guide import distributed
    from mnist_guide.models import CNNConfig

    _writable_folder(Path(args.out))
    recipe = distributed.DistributedRecipe(
        epochs=args.epochs, batch_size=args.batch_size, accumulate=args.accumulate, max_steps=args.max_steps,
        max_shift=args.max_shift, dtype=args.dtype, seed=args.seed, model=CNNConfig(norm=args.norm))
    recipe.micro_batch_size(int(os.environ.get("WORLD_SIZE", 1)))  # a batch that does not split: refused before any work
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(logging.Formatter("%(rank_tag)s %(message)s"))
    distributed.logger.addHandler(handler)
    distributed.logger.setLevel(logging.INFO)
    distributed.logger.propagate = False
    try:
        world = distributed.init_world(args.device)
        handler.addFilter(distributed.RankFilter(world.rank, world.world_size))
        distributed.train(recipe, out=args.out, device=args.device, strategy=args.strategy,
                          evaluate_each_epoch=not args.no_eval, log_every=args.log_every)
    finally:
        distributed.logger.removeHandler(handler)
        if distributed.dist.is_initialized():
            distributed.dist.destroy_process_group()
    return 0


def _cmd_evaluate(args: argparse.Namespace) -> int:
    from mnist_guide.evaluation import evaluate_checkpoint, format_report

    report = evaluate_checkpoint(args.checkpoint, device=args.device, batch_size=args.batch_size)
    print(json.dumps(report, indent=2) if args.json else format_report(report))
    return 0


def _cmd_export(args: argparse.Namespace) -> int:
    import torch

    from mnist_guide import export
    from mnist_guide.checkpoint import load_checkpoint

    if Path(args.out).is_dir():
        raise ValueError(f"--out {args.out}: is a folder; name the file to write")
    if args.format == "onnx" and Path(args.out).suffix != ".onnx":
        raise ValueError(f"--out {args.out}: an ONNX file must end in .onnx (that is how `serve` recognises it)")
    model, _ = load_checkpoint(args.checkpoint)
    if args.format == "aoti":
        print("compiling with AOTInductor (about 30 s on a laptop CPU) ...", file=sys.stderr, flush=True)
    out = export.export_model(model, args.format, args.out)
    pixels, tolerance = export.example_pixels(64), export.PARITY_TOLERANCE
    with torch.inference_mode():
        difference = float((export.load_deployed(out)(pixels) - export.make_deployable(model)(pixels)).abs().max())
    if not difference <= tolerance:  # NaN fails too
        print(f"mnist-guide: error: {out} differs from the checkpoint by {difference:.1e} (> {tolerance:.0e})", file=sys.stderr)
        return 1
    print(f"wrote {out} ({args.format}, {out.stat().st_size / 1e6:.1f} MB): float32 [N, 1, 28, 28] pixels in [0, 1] "
          f"-> logits [N, 10]; matches the checkpoint within {tolerance:.0e}")
    return 0


def _cmd_serve(args: argparse.Namespace) -> int:
    from mnist_guide.serve import serve

    serve(args.model, host=args.host, port=args.port, trust=args.trust)
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The `mnist-guide` command line and its subcommands."""
    parser = argparse.ArgumentParser(prog="mnist-guide", description=__doc__)
    parser.add_argument("--version", action="version", version=f"mnist-guide {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    device_help = "cpu, cuda or mps (default: the best available)"

    info = commands.add_parser("info", help="print versions, device, threads and where files live")
    info.add_argument("--json", action="store_true", help="print a JSON object instead of a table")
    info.add_argument("--device", help=device_help)
    info.set_defaults(handler=_cmd_info)

    train = commands.add_parser("train", help="train the course CNN (or the ViT) and write checkpoint.pt and metrics.json")
    train.add_argument("--out", required=True, help="folder for checkpoint.pt and metrics.json")
    train.add_argument("--model", choices=["cnn", "vit"], default="cnn", help="the course CNN (default) or the Vision Transformer")
    train.add_argument("--recipe", choices=["record", "course", "fast"], default="record",
                       help="the CNN's recipe: record (default: longer, for the best accuracy), course (the notebook's, "
                            "shorter) or fast (part of one epoch: 99 %% soonest)")
    train.add_argument("--epochs", type=int_range(1), help="epochs (default: the recipe's)")
    train.add_argument("--seed", type=int_range(0, 2**32 - 1), help="random seed (default: 0)")
    train.add_argument("--device", help=device_help)
    run = train.add_mutually_exclusive_group()
    run.add_argument("--resume", action="store_true", help="continue from OUT/checkpoint.pt")
    run.add_argument("--force", action="store_true", help="replace a run already in OUT")
    train.add_argument("--quiet", action="store_true", help="no progress bar and no per-epoch lines")
    train.set_defaults(handler=_cmd_train)

    parallel = commands.add_parser("train-parallel", help="data-parallel training; run it under torchrun")
    add = parallel.add_argument
    add("--out", required=True, help="folder for checkpoint.pt (written by rank 0 only)")
    add("--epochs", type=int_range(1), default=1)
    add("--max-steps", type=int_range(1), help="stop after this many optimizer steps")
    add("--batch-size", type=int_range(1), default=256, help="the global batch, over all processes")
    add("--accumulate", type=int_range(1), default=1, help="micro-batches per step on each process")
    add("--norm", choices=("batch", "group"), default="batch", help="group: the CNN with GroupNorm")
    add("--strategy", choices=("ddp", "fsdp"), default="ddp", help="ddp: a whole model per process; fsdp: sharded")
    add("--max-shift", type=int_range(0, 4), default=1, help="random shift in pixels, 0-4")
    add("--dtype", choices=("float32", "float64"), default="float32", help="float64 to compare runs exactly")
    add("--seed", type=int_range(0, 2**32 - 1), default=0)
    add("--device", help="cpu or cuda (default: one GPU per process if enough, else cpu)")
    add("--no-eval", action="store_true", help="skip the test-set evaluation after each epoch")
    add("--log-every", type=int_range(1), default=50, help="log progress every N steps")
    parallel.set_defaults(handler=_cmd_train_parallel)

    evaluate = commands.add_parser("evaluate", help="score a checkpoint on the MNIST test set")
    evaluate.add_argument("--checkpoint", required=True, help="a checkpoint file (artifacts/mnist_cnn.pt, or OUT/checkpoint.pt)")
    evaluate.add_argument("--json", action="store_true", help="print a JSON object instead of tables")
    evaluate.add_argument("--device", help=device_help)
    evaluate.add_argument("--batch-size", type=int_range(1), default=1000, help="test images per batch (default: 1000)")
    evaluate.set_defaults(handler=_cmd_evaluate)

    export = commands.add_parser("export", help="write the model as TorchScript, a torch.export program, an AOTInductor package or ONNX")
    export.add_argument("--checkpoint", required=True, help="a checkpoint file (artifacts/mnist_cnn.pt, or OUT/checkpoint.pt)")
    export.add_argument("--format", required=True, choices=["torchscript", "export", "aoti", "onnx"],
                        help="torchscript (.pt), export or aoti (.pt2), onnx (.onnx, run with ONNX Runtime)")
    export.add_argument("--out", required=True, help="the file to write")
    export.set_defaults(handler=_cmd_export)

    serve = commands.add_parser("serve", help="serve an exported model over HTTP: a drawing page at /, GET /health, POST /predict")
    serve.add_argument("--model", required=True, help="a file written by `mnist-guide export` (any format)")
    serve.add_argument("--host", default="127.0.0.1", help="address to bind (default: 127.0.0.1, this machine only)")
    serve.add_argument("--trust", action="store_true",
                       help="load a model file that `mnist-guide export` did not write (it runs code: only files you know)")
    serve.add_argument("--port", type=int_range(1, 65535), default=8000, help="TCP port (default: 8000)")
    serve.set_defaults(handler=_cmd_serve)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `mnist-guide` console script: a user's mistake is one line and exit code 2."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 0
    from mnist_guide.checkpoint import CheckpointError
    from mnist_guide.data import MnistDataError
    from mnist_guide.runtime import DeviceUnavailableError

    try:
        return args.handler(args)
    except BrokenPipeError:  # the reader went away (`mnist-guide evaluate | head`): stop quietly
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except (MnistDataError, CheckpointError, DeviceUnavailableError, ValueError, OSError) as error:
        print(f"mnist-guide: error: {str(error).splitlines()[0] if str(error) else type(error).__name__}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
