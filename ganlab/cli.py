"""`ganlab <command> [overrides]`: the command line. `ganlab train` is a Hydra app."""

from __future__ import annotations

import os
import re
import sys
from pathlib import Path

from ganlab import __version__
from ganlab.errors import GanlabError

USAGE = f"""ganlab {__version__}: a config-driven GAN experiment lab

usage: ganlab <command> [hydra overrides]

commands:
  train    train a GAN: ganlab train model=wgan_gp dataset=mnist train.steps=2000
           (Hydra app: --help, --cfg job, -m/--multirun sweeps, --info, -sc shell completion)

config groups (conf/): dataset, model, loss, optimizer, penalty
  ganlab train --help      lists every option of every group
  ganlab train model=wgan_gp --cfg job    shows the composed recipe without running it
"""

_failed_jobs: list[str] = []


def _report_error(message: str) -> None:
    try:
        from rich.console import Console
        from rich.text import Text

        Console(stderr=True, highlight=False, soft_wrap=True).print(Text.assemble(("ganlab: error: ", "bold red"), message))
    except Exception:  # pragma: no cover - rich missing or broken terminal
        print(f"ganlab: error: {message}", file=sys.stderr)


def _train_task(cfg):
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    from ganlab.train import train

    hc = HydraConfig.get()
    run_dir = Path(hc.runtime.output_dir)
    try:
        return train(cfg, run_dir)
    except GanlabError as exc:
        if os.environ.get("HYDRA_FULL_ERROR") == "1":
            raise
        _report_error(str(exc))
        try:
            (run_dir / "error.txt").write_text(str(exc) + "\n")
        except OSError:
            pass
        if hc.mode == RunMode.RUN:
            sys.exit(2)
        # in a sweep, the other jobs go on; the sweep's exit status says that one failed
        _failed_jobs.append(f"{hc.job.num}: {exc}")
        return {"status": "failed", "error": str(exc)}


def train_cli(args: list[str]) -> int:
    import hydra

    from ganlab.config import config_dir

    main = hydra.main(config_path=config_dir(), config_name="train", version_base="1.3")(_train_task)
    sys.argv = ["ganlab", *args]
    main()
    if _failed_jobs:
        _report_error(f"{len(_failed_jobs)} job(s) of the sweep failed: " + "; ".join(_failed_jobs))
        return 1
    return 0


COMMANDS = {"train": train_cli}


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
        _report_error(f"unknown command {command!r}; the commands are: {', '.join(COMMANDS)} (see ganlab --help).")
        sys.exit(2)
    try:
        sys.exit(COMMANDS[command](argv[1:]))
    except GanlabError as exc:
        _report_error(str(exc))
        sys.exit(2)
