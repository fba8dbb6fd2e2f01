"""`mnist-guide`: the course's steps without a notebook: info, train, evaluate, export, serve."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

from mnist_guide import __version__
from mnist_guide.runtime import positive_int


def _cmd_info(args: argparse.Namespace) -> int:
    from mnist_guide.runtime import artifacts_dir, data_dir, describe_environment, format_environment

    info = describe_environment(args.device)
    info["data_dir"] = str(data_dir())
    info["artifacts_dir"] = str(artifacts_dir(create=False))
    print(json.dumps(info, indent=2) if args.json else format_environment(info))
    return 0


def _cmd_train(args: argparse.Namespace) -> int:
    from dataclasses import replace

    from mnist_guide.training import VIT_RECIPE, Recipe, train_course_model, write_metrics

    recipe = VIT_RECIPE if args.model == "vit" else Recipe()
    recipe = replace(
        recipe,
        epochs=args.epochs if args.epochs is not None else recipe.epochs,
        seed=args.seed if args.seed is not None else recipe.seed,
    )
    out = Path(args.out)

    def report(epoch: int, history) -> None:
        if not args.quiet:
            print(
                f"epoch {epoch + 1}/{recipe.epochs}: train loss {history.train_loss[-1]:.4f}, "
                f"test accuracy {history.test_accuracy[-1]:.2%}, {history.epoch_seconds[-1]:.1f} s",
                flush=True,
            )

    run = train_course_model(
        recipe, device=args.device, out=out, resume=args.resume,
        progress=not args.quiet and sys.stderr.isatty(), on_epoch_end=report,
    )
    metrics = write_metrics(out / "metrics.json", run, recipe)
    print(
        f"test accuracy {metrics['test_accuracy']:.2%}, test loss {metrics['test_loss']:.4f}, "
        f"{metrics['epochs']} epochs in {metrics['train_seconds']:.1f} s -> {out / 'checkpoint.pt'}"
    )
    return 0


def _cmd_evaluate(args: argparse.Namespace) -> int:
    from mnist_guide.evaluation import evaluate_checkpoint, format_report

    report = evaluate_checkpoint(args.checkpoint, device=args.device, batch_size=args.batch_size)
    print(json.dumps(report, indent=2) if args.json else format_report(report))
    return 0


def _cmd_export(args: argparse.Namespace) -> int:
    import torch

    from mnist_guide import export
    from mnist_guide.training import load_checkpoint

    model, _ = load_checkpoint(args.checkpoint)
    if args.format == "aoti":
        print("compiling with AOTInductor (about 30 s on a laptop CPU) ...", file=sys.stderr, flush=True)
    out = export.export_model(model, args.format, args.out)
    pixels, tolerance = export.example_pixels(64), export.PARITY_TOLERANCE
    with torch.inference_mode():
        difference = float((export.load_deployed(out)(pixels) - export.make_deployable(model)(pixels)).abs().max())
    if difference > tolerance:
        print(f"mnist-guide: error: {out} differs from the checkpoint by {difference:.1e} (> {tolerance:.0e})", file=sys.stderr)
        return 1
    print(f"wrote {out} ({args.format}, {out.stat().st_size / 1e6:.1f} MB): float32 [N, 1, 28, 28] pixels in [0, 1] "
          f"-> logits [N, 10]; matches the checkpoint within {tolerance:.0e}")
    return 0


def _cmd_serve(args: argparse.Namespace) -> int:
    from mnist_guide.serve import serve

    serve(args.model, host=args.host, port=args.port)
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The `mnist-guide` command line and its subcommands."""
    parser = argparse.ArgumentParser(prog="mnist-guide", description=__doc__)
    parser.add_argument("--version", action="version", version=f"mnist-guide {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")

    info = commands.add_parser("info", help="print versions, device, threads and where files live")
    info.add_argument("--json", action="store_true", help="print a JSON object instead of a table")
    info.add_argument("--device", default=None, help="cpu, cuda or mps (default: the best available)")
    info.set_defaults(handler=_cmd_info)

    train = commands.add_parser("train", help="train the course CNN (or the ViT) and write checkpoint.pt and metrics.json")
    train.add_argument("--out", required=True, help="folder for checkpoint.pt and metrics.json")
    train.add_argument("--model", choices=["cnn", "vit"], default="cnn", help="the course CNN (default) or the Vision Transformer")
    train.add_argument("--epochs", type=positive_int, default=None, help="epochs (default: the course recipe's)")
    train.add_argument("--seed", type=int, default=None, help="random seed (default: 0)")
    train.add_argument("--device", default=None, help="cpu, cuda or mps (default: the best available)")
    train.add_argument("--resume", action="store_true", help="continue from OUT/checkpoint.pt")
    train.add_argument("--quiet", action="store_true", help="no progress bar and no per-epoch lines")
    train.set_defaults(handler=_cmd_train)

    evaluate = commands.add_parser("evaluate", help="score a checkpoint on the MNIST test set (accuracy, precision, recall, F1, confusion matrix)")
    evaluate.add_argument("--checkpoint", required=True, help="a checkpoint file (artifacts/mnist_cnn.pt, or OUT/checkpoint.pt from train)")
    evaluate.add_argument("--json", action="store_true", help="print a JSON object instead of tables")
    evaluate.add_argument("--device", default=None, help="cpu, cuda or mps (default: the best available)")
    evaluate.add_argument("--batch-size", type=positive_int, default=1000, help="test images per batch (default: 1000)")
    evaluate.set_defaults(handler=_cmd_evaluate)

    export = commands.add_parser("export", help="write the model as TorchScript, a torch.export program or an AOTInductor package")
    export.add_argument("--checkpoint", required=True, help="a checkpoint file (artifacts/mnist_cnn.pt, or OUT/checkpoint.pt from train)")
    export.add_argument("--format", required=True, choices=["torchscript", "export", "aoti"], help="torchscript (.pt), export or aoti (.pt2)")
    export.add_argument("--out", required=True, help="the file to write")
    export.set_defaults(handler=_cmd_export)

    serve = commands.add_parser("serve", help="serve an exported model over HTTP: GET /health, POST /predict")
    serve.add_argument("--model", required=True, help="a file written by `mnist-guide export` (any format)")
    serve.add_argument("--host", default="127.0.0.1", help="address to bind (default: 127.0.0.1, this machine only)")
    serve.add_argument("--port", type=int, default=8000, help="TCP port (default: 8000)")
    serve.set_defaults(handler=_cmd_serve)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `mnist-guide` console script."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "handler", None) is None:
        parser.print_help()
        return 0
    try:
        return args.handler(args)
    except BrokenPipeError:
        # The reader went away (`mnist-guide evaluate | head`): stop quietly, as Unix tools do.
        import os

        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except (RuntimeError, ValueError, OSError) as error:
        from mnist_guide.data import MnistDataError
        from mnist_guide.runtime import DeviceUnavailableError
        from mnist_guide.training import CheckpointError

        if isinstance(error, (MnistDataError, CheckpointError, DeviceUnavailableError, ValueError, FileNotFoundError)):
            print(f"mnist-guide: error: {error}", file=sys.stderr)
            return 2
        raise


if __name__ == "__main__":
    sys.exit(main())
