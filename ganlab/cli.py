"""`ganlab <command> [overrides]`: the command line. `ganlab train` is a Hydra app."""

from __future__ import annotations

import os
import re
import sys
import tempfile
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


def _prepare_run_dir(args: list[str]) -> list[str]:
    """Protect what a run dir already holds, before Hydra writes anything into it.

    - `resume=PATH` continues that run in its own dir (it becomes hydra.run.dir);
    - a resume writes Hydra's files to .hydra/resume-<time>/, keeping the run's original .hydra/;
    - a new run into a dir that already holds a checkpoint is refused.
    """
    value = next((a.split("=", 1)[1] for a in args if a.startswith("resume=")), None)
    resuming = value not in (None, "", "false", "False", "null")
    run_dir_arg = next((a.split("=", 1)[1] for a in args if a.startswith("hydra.run.dir=")), None)
    if resuming and value not in ("true", "True") and run_dir_arg is None:
        path = Path(value).expanduser()
        if not path.exists():
            raise GanlabError(f"resume={value}: no such run dir or checkpoint; give a run dir or its checkpoints/last.pt.")
        run_dir = path if path.is_dir() else (path.parent.parent if path.parent.name == "checkpoints" else path.parent)
        args = [*args, f"hydra.run.dir={run_dir.resolve()}"]
    if resuming:
        args = [*args, "hydra.output_subdir=.hydra/resume-${now:%Y-%m-%d_%H-%M-%S}"]
    elif run_dir_arg and "-m" not in args and "--multirun" not in args and \
            (Path(run_dir_arg).expanduser() / "checkpoints" / "last.pt").exists():
        raise GanlabError(f"{run_dir_arg} already holds a run (checkpoints/last.pt); add resume=true to continue it, "
                          "or choose another hydra.run.dir so nothing is overwritten.")
    return args


def _check_output_dir(args: list[str]) -> None:
    """Fail before any work when the run (or sweep) dir cannot be written."""
    multirun = "-m" in args or "--multirun" in args
    key = "hydra.sweep.dir=" if multirun else "hydra.run.dir="
    value = next((a[len(key):] for a in args if a.startswith(key)), "outputs")
    if "${" in value:
        return
    target = Path(value).expanduser().absolute()
    ancestor = target
    while not ancestor.exists() and ancestor != ancestor.parent:
        ancestor = ancestor.parent
    problem = None
    if not ancestor.is_dir():
        problem = f"{ancestor} is not a directory"
    else:
        try:
            os.rmdir(tempfile.mkdtemp(prefix=".ganlab-probe-", dir=ancestor))
        except OSError as exc:
            problem = f"{ancestor} is not writable ({exc.strerror or exc})"
    if problem:
        raise GanlabError(f"cannot write the run dir {target}: {problem}; choose another {key.rstrip('=')}=DIR.")


def train_cli(args: list[str]) -> int:
    import hydra

    from ganlab.config import config_dir

    if not any(a in ("--help", "-h", "--hydra-help", "--info", "-c", "--cfg", "-sc", "--shell-completion") or a.startswith("--info")
               for a in args):
        args = _prepare_run_dir(args)
        _check_output_dir(args)
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
