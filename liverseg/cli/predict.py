"""liverseg_predict: segment liver and tumours in a folder of scans with trained models, plus a lesion report."""
from __future__ import annotations

import argparse
from pathlib import Path

from liverseg.cli.common import add_device, run_command, setup_logging
from liverseg.inference.device import configure_threads
from liverseg.inference.models import CHECKPOINT_CHOICES
from liverseg.inference.predictor import Predictor
from liverseg.inference.run import predict_folder


def build_parser() -> argparse.ArgumentParser:
    """Arguments of liverseg_predict."""
    parser = argparse.ArgumentParser(
        prog="liverseg_predict",
        description="Predict label maps (0 background, 1 liver, 2 tumour) with exactly the input's grid and header, a "
        "lesion report per case (<case>.lesions.json) and lesions.csv/cases.csv for the run. Input: a folder of "
        "images (<case>_0000.nii.gz per channel, or <case>.nii.gz), an image file, or a DICOM series folder. "
        "Models: -d/-c/-f or -m; with neither, the best configuration of the only trained dataset "
        "(inference.json from liverseg_find_best, else the plan's recommended pipeline with every trained fold); "
        "-c a b predicts with an ensemble of pipelines. See docs/prediction.md.",
    )
    parser.add_argument("-i", "--input", required=True, help="folder of images, one image file, or a DICOM series folder")
    parser.add_argument("-o", "--output", required=True, help="output folder (created if needed)")
    models = parser.add_argument_group("models")
    models.add_argument("-d", "--dataset", default=None, help="dataset name, folder name or id under $LIVERSEG_RESULTS (default: the only trained one)")
    models.add_argument("-m", "--model-folder", default=None, help="a results folder instead of -d: <Dataset>, "
                        "<Dataset>/<pipeline>, <Dataset>/<pipeline>/<model> (that model alone) or a fold folder (default: none, use -d)")
    models.add_argument("-c", "--pipeline", nargs="+", default=None, help="pipeline (multiclass, dual_binary, cascade, "
                        "...), or several: an ensemble averaging their label probabilities; default: inference.json's "
                        "(written by liverseg_find_best), else the plan's recommended one")
    models.add_argument("-f", "--folds", nargs="+", default=None, help="folds to ensemble (e.g. 0 1 2 3 4, or all); "
                        "default: every fold trained for each model")
    models.add_argument("--checkpoint", choices=CHECKPOINT_CHOICES, default=None, help="best (default: checkpoint_best.pt, "
                        "else checkpoint_latest.pt) or latest (the weights at the end of training)")
    inference = parser.add_argument_group("inference")
    add_device(inference)
    inference.add_argument("--no-tta", dest="tta", action="store_false", help="no test-time mirroring (4-8x faster, "
                           "slightly less accurate)")
    inference.add_argument("--step", type=float, default=0.5, help="window step as a fraction of the patch (default "
                           "%(default)s; larger = fewer windows, faster)")
    inference.add_argument("--batch-windows", type=int, default=2, help="windows per forward pass (default %(default)s)")
    inference.add_argument("--fp32", action="store_true", help="full precision instead of bf16 (CPUs with bf16 "
                           "instructions) or fp16 (GPUs) autocast")
    inference.add_argument("--threads", type=int, default=None, help="torch threads (default: the CPUs this process may use)")
    outputs = parser.add_argument_group("outputs")
    outputs.add_argument("--postprocessing", default="auto", help="none, plan, auto (default: the chosen configuration's "
                         "steps) or a JSON file of steps (docs/postprocessing.md)")
    outputs.add_argument("--save-probabilities", action="store_true", help="also write <case>.npz (float16 probabilities)")
    outputs.add_argument("--lesion-maps", action="store_true", help="also write <case>_lesions.nii.gz (lesion k has value k)")
    run = parser.add_argument_group("run")
    run.add_argument("-np", "--num-workers", type=int, default=1, help="threads reading and preprocessing the next cases "
                     "while the network runs (0: one case after the other; default %(default)s)")
    run.add_argument("--continue", dest="continue_", action="store_true", help="skip cases whose outputs are complete")
    run.add_argument("--part-id", type=int, default=0, help="this job's part (0-based) of --num-parts (default %(default)s)")
    run.add_argument("--num-parts", type=int, default=1, help="split the sorted cases into this many parts (e.g. a SLURM "
                     "array: --part-id $SLURM_ARRAY_TASK_ID --num-parts $SLURM_ARRAY_TASK_COUNT; default %(default)s)")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of liverseg_predict."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.dataset is not None and args.model_folder is not None:
        parser.error("give either -d (a dataset) or -m (a results folder), not both")
    setup_logging(args.verbose)

    def body() -> int:
        configure_threads(args.threads)
        predictor = Predictor.from_folder(
            Path(args.model_folder) if args.model_folder is not None else args.dataset, _pipeline(args.pipeline), args.folds,
            args.checkpoint, device=args.device, tta=args.tta, step=args.step, batch_windows=args.batch_windows,
            use_bf16=False if args.fp32 else "auto", postprocessing=args.postprocessing, progress=args.verbose)
        summary = predict_folder(args.input, args.output, predictor, num_workers=args.num_workers,
                                 continue_=args.continue_, part_id=args.part_id, num_parts=args.num_parts,
                                 save_probabilities=args.save_probabilities, lesion_maps=args.lesion_maps)
        print(f"{len(summary.predicted)} predicted, {len(summary.skipped)} skipped, {len(summary.failed)} failed: "
              f"{summary.output}")
        summary.raise_for_failures()
        return 0

    return run_command(body)


def _pipeline(names: list[str] | None) -> str | list[str] | None:
    """One name as a name, several as an ensemble."""
    return names[0] if names is not None and len(names) == 1 else names


if __name__ == "__main__":
    raise SystemExit(main())
