"""`ganlab <command> [overrides]`: the command line, one table of sub-commands.

`ganlab train` is a Hydra app (ganlab.cli.train, sweeps in ganlab.cli.sweeps); most other commands are
Hydra apps over one of conf/'s top-level configs whose task is a function of the lab (the table below);
`report` and `board` parse their own arguments."""

from __future__ import annotations

import importlib
import os
import re
import sys

from ganlab import __version__
from ganlab.cli.common import hydra_command, report_error
from ganlab.cli.sweeps import SweepStatus  # noqa: F401 (conf/train.yaml's hydra callback, by this name too)
from ganlab.cli.train import register_resolvers, train_cli
from ganlab.errors import GanlabError

USAGE = f"""ganlab {__version__}: a config-driven GAN experiment lab

usage: ganlab <command> [hydra overrides]

commands:
  train    train a GAN: ganlab train model=wgan_gp dataset=mnist train.steps=2000
           (Hydra app: --help, --cfg job, -m/--multirun sweeps, --info, -sc shell completion)
  sample   samples of a trained run: ganlab sample run=RUN_DIR n=10000 out=samples.npz [labels=3] [ema=false] [truncation=0.7]
  eval     metrics of a run or an .npz vs real data: ganlab eval target=RUN_DIR [n=2000] [features=pixels]
  translate  a folder through a CycleGAN or pix2pix G: ganlab translate run=RUN_DIR in=DIR out=DIR [direction=a2b|b2a]
  inpaint  fill holes with an inpaint run: ganlab inpaint run=RUN_DIR in=IMAGE_OR_DIR mask=MASK_OR_DIR out=DIR
  data check  what a dataset holds: ganlab data check dataset=fashion_mnist (counts, sizes, duplicates, balance, bad files)
  interpolate  latent interpolation strips: ganlab interpolate run=RUN_DIR n=8 steps=10 out=strip.png [mode=lerp]
  augment  a labelled synthetic set from a conditional run: ganlab augment run=RUN_DIR n_per_class=1000 out=syn.npz
  report   one row per run of a sweep or of outputs/: ganlab report DIR [--sort METRIC] [--format F] [--plot M.png]
  board    TensorBoard on outputs/, a sweep or a run, on a free local port: ganlab board [DIR] [--port P]
  import   an official pretrained network as a run dir: ganlab import stylegan2 NET.pkl out=RUN_DIR,
           ganlab import cyclegan G_A.pth [b2a=G_B.pth] out=RUN_DIR, ganlab import pix2pix G.pth out=RUN_DIR

config groups (conf/): dataset, model, loss, optimizer, penalty, experiment, hparams_search, debug
  ganlab train --help      lists every option of every group
  ganlab train model=wgan_gp --cfg job    shows the composed recipe without running it
"""

register_resolvers()

# name -> (conf/<config>.yaml, "module:function" run on the composed config, keys whose values are paths)
HYDRA_COMMANDS = {
    "sample": ("sample", "ganlab.sample:sample_run", ("run", "out")),
    "eval": ("eval", "ganlab.evaluate:evaluate", ("target", "out", "inception_weights", "dataset.root")),
    "translate": ("translate", "ganlab.translate:translate_run", ("run", "in", "out")),
    "inpaint": ("inpaint", "ganlab.inpaint:inpaint_run", ("run", "in", "mask", "out")),
    "interpolate": ("interpolate", "ganlab.interpolate:interpolate_run", ("run", "out")),
    "augment": ("augment", "ganlab.augment:augment_run", ("run", "out")),
}
# name -> "module:function" taking the argument list
OWN_COMMANDS = {"report": "ganlab.report:main", "board": "ganlab.board:main"}


def _function(spec: str):
    module, _, name = spec.partition(":")
    return getattr(importlib.import_module(module), name)


def data_cli(args: list[str]) -> int:
    if not args or args[0] != "check":
        raise GanlabError("usage: ganlab data check dataset=NAME [dataset.root=DIR] [cache=false]")
    from ganlab.datacheck import check_data

    return hydra_command("data_check", check_data, args[1:], ("dataset.root", "dataset.root_a", "dataset.root_b"))


def run_command(command: str, args: list[str]) -> int:
    if command == "train":
        return train_cli(args)
    if command == "import":
        from ganlab.importers import import_cli

        return import_cli(args)
    if command == "data":
        return data_cli(args)
    if command in HYDRA_COMMANDS:
        config, spec, path_keys = HYDRA_COMMANDS[command]
        return hydra_command(config, _function(spec), args, path_keys)
    return _function(OWN_COMMANDS[command])(args)


COMMANDS = ("train", *HYDRA_COMMANDS, "data", "import", *OWN_COMMANDS)


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else list(argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(USAGE)
        sys.exit(0 if argv else 2)
    if argv[0] in ("-V", "--version"):
        print(f"ganlab {__version__}")
        sys.exit(0)
    command = argv[0]
    if command in ("-sc", "--shell-completion"):
        # Hydra's completion script (from `ganlab train -sc install=bash`) queries `ganlab -sc
        # query=bash` with the whole line in COMP_LINE: drop the `train` word it sees there.
        line = os.environ.get("COMP_LINE", "")
        os.environ["COMP_LINE"] = re.sub(r"^(\s*\S+)\s+train(\s|$)", r"\1 ", line)
        command, argv = "train", ["train", *argv]
    if command not in COMMANDS:
        report_error(f"unknown command {command!r}; the commands are: {', '.join(COMMANDS)} (see ganlab --help).")
        sys.exit(2)
    try:
        sys.exit(run_command(command, argv[1:]))
    except GanlabError as exc:
        report_error(str(exc))
        sys.exit(2)
