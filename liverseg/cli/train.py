"""liverseg_train: train the models of a planned pipeline on one cross-validation fold.

Runs under torchrun as well (``torchrun --nproc_per_node N -m liverseg.cli.train ...``: one
process per GPU, :mod:`liverseg.training.distributed`); ``--ddp N`` starts torchrun on this machine.
"""
from __future__ import annotations

import argparse
import sys

from liverseg.cli.common import add_device, run_command, setup_logging
from liverseg.training import distributed
from liverseg.training.run import train
from liverseg.training.settings import PRECISIONS


def build_parser() -> argparse.ArgumentParser:
    """Arguments of liverseg_train."""
    parser = argparse.ArgumentParser(
        prog="liverseg_train",
        description="Train every model of a pipeline (or one, -m) on a fold, as $LIVERSEG_PREPROCESSED/<dataset>/plans.json "
        "says, into $LIVERSEG_RESULTS/<dataset>/<pipeline>/<model>/fold_<k>/: checkpoints, log.txt, progress.png and "
        "the validation cases predicted whole (validation/summary.json). Options not given come from the plan. "
        "Prints the results folders.",
    )
    parser.add_argument("-d", "--dataset", required=True,
                        help="dataset name, folder name or id (e.g. ATLAS, Dataset501_ATLAS, 501)")
    parser.add_argument("-c", "--pipeline", required=True, help="pipeline of plans.json: multiclass, dual_binary, cascade, ...")
    parser.add_argument("-f", "--fold", required=True, help="fold of splits.json (0, 1, ...), or 'all' to train on every case")
    parser.add_argument("-m", "--model", default=None, help="train only this model of the pipeline (e.g. tumour; default: every model)")
    add_device(parser)
    parser.add_argument("--continue", dest="continue_training", action="store_true", help="resume from the newest checkpoint "
                        "of the folder (model, optimiser, schedule, random states, log); with --epochs, extend the schedule")
    parser.add_argument("--epochs", type=int, default=None, help="number of epochs (default: the plan's)")
    parser.add_argument("--iters-per-epoch", dest="iterations_per_epoch", type=int, default=None,
                        help="training iterations per epoch (default: the plan's)")
    parser.add_argument("--val-iters", dest="validation_iterations", type=int, default=None,
                        help="validation iterations per epoch, 0 for none (default: the plan's)")
    parser.add_argument("--lr", dest="learning_rate", type=float, default=None,
                        help="initial learning rate (default: the plan's)")
    parser.add_argument("--batch-size", type=int, default=None, help="patches per iteration (default: the plan's)")
    parser.add_argument("--save-every", type=int, default=None, help="write checkpoint_latest.pt every N epochs (default 1)")
    parser.add_argument("--time-budget", dest="time_budget_minutes", type=float, default=None, metavar="MINUTES",
                        help="end the training epochs within this many minutes by fitting the schedule to them, never "
                        "beyond --epochs (shared by the pipeline's models in proportion to their work; the final validation comes on top); "
                        "default: no limit")
    parser.add_argument("--trainer", default=None, help="registered trainer to use instead of the plan's schedule.trainer "
                        "(default: the plan's, normally 'default'; docs/extending.md registers your own)")
    parser.add_argument("--seed", type=int, default=None, help="seed of the run (default 0); a CPU run with -np 0 is repeatable")
    parser.add_argument("-np", "--num-workers", type=int, default=None, help="background processes for augmentation, 0 runs "
                        "it in the training process (default: 1 on a CPU with 2+ cores, on a GPU one per core but one, "
                        "at most 8)")
    parser.add_argument("--precision", choices=PRECISIONS, default=None, help="auto (default): fp16 mixed precision on a GPU, "
                        "bf16 on a CPU with native bf16 (avx512_bf16/AMX), else fp32; fp32; or bf16 mixed precision")
    parser.add_argument("--init-from", default=None, help="checkpoint whose network weights start this run (same architecture; default: random "
                        "initialisation)")
    parser.add_argument("--init-encoder-from", default=None, metavar="PATH", help="ahnet models: start the encoder from a "
                        "trained 2D model (e.g. the multiclass_2d pipeline's fold folder, or a .pt checkpoint or state dict), "
                        "its kernels given a z axis; the decoder starts from scratch. Checked before training; a continued "
                        "run (--continue) does not transfer again (default: random initialisation)")
    parser.add_argument("--init-stage2-from-stage1", action="store_true", help="cascade: start the second stage from the "
                        "first stage's weights when the networks match")
    parser.add_argument("--no-final-validation", dest="final_validation", action="store_false", default=None,
                        help="skip predicting the validation cases at the end")
    parser.add_argument("--early-stopping", dest="early_stopping_patience", type=int, default=None, metavar="PATIENCE",
                        help="end the run when the validation loss (on the fold's inner validation cases) has not "
                        "improved for PATIENCE epochs (the ATLAS paper used 30); 0 turns it off (default: off)")
    parser.add_argument("--seeds", type=int, default=None, metavar="N", help="train N seeds (--seed, --seed+1, ...) by "
                        "successive halving on the whole-case validation Jaccard and keep the best as the fold's model "
                        "(default: one seed, no selection)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads of the training process (default: on a CPU "
                        "the cores the augmentation workers leave, at least 1; on a GPU every core)")
    parser.add_argument("--ddp", type=int, default=None, metavar="N", help="train with N processes on this machine "
                        "(PyTorch DDP: one per GPU, or N CPU processes): starts torchrun --standalone --nproc_per_node N "
                        "with the other options; the plan's batch (or --batch-size) is split over them. Several machines: "
                        "run torchrun yourself (docs/training.md) (default: one process)")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    return parser


def _without_ddp(argv: list[str]) -> list[str]:
    """The command line without ``--ddp N`` / ``--ddp=N``: what each torchrun process gets."""
    kept, skip = [], False
    for arg in argv:
        if skip:
            skip = False
        elif arg == "--ddp":
            skip = True
        elif not arg.startswith("--ddp="):
            kept.append(arg)
    return kept


def main(argv: list[str] | None = None) -> int:
    """Entry point of liverseg_train."""
    argv = sys.argv[1:] if argv is None else list(argv)
    args = build_parser().parse_args(argv)
    setup_logging(args.verbose)
    if args.ddp is not None:
        return run_command(lambda: distributed.launch(args.ddp, _without_ddp(argv)))
    overrides = {key: getattr(args, key) for key in (
        "epochs", "iterations_per_epoch", "validation_iterations", "learning_rate", "batch_size", "save_every", "seed",
        "num_workers", "threads", "precision", "init_from", "init_encoder_from", "final_validation", "time_budget_minutes",
        "early_stopping_patience")}

    def body() -> int:
        with distributed.process_group(args.device):
            folders = train(args.dataset, args.pipeline, args.fold, model=args.model,
                            init_stage2_from_stage1=args.init_stage2_from_stage1, seeds=args.seeds, trainer=args.trainer,
                            device=args.device,
                            continue_training=args.continue_training or None, **overrides)
            if distributed.is_main():
                print("\n".join(str(f) for f in folders))
        return 0

    return run_command(body)


if __name__ == "__main__":
    raise SystemExit(main())
