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
  sample   samples of a trained run: ganlab sample run=RUN_DIR n=10000 out=samples.npz [labels=3] [ema=false] [truncation=0.7]
  eval     metrics of a run or an .npz vs real data: ganlab eval target=RUN_DIR [n=2000] [features=pixels]
  translate  a folder through a CycleGAN: ganlab translate run=RUN_DIR in=DIR out=DIR [direction=a2b|b2a]
  inpaint  fill holes with an inpaint run: ganlab inpaint run=RUN_DIR in=IMAGE_OR_DIR mask=MASK_OR_DIR out=DIR
  data check  what a dataset holds: ganlab data check dataset=fashion_mnist (counts, sizes, duplicates, balance, bad files)
  interpolate  latent interpolation strips: ganlab interpolate run=RUN_DIR n=8 steps=10 out=strip.png [mode=lerp]
  augment  a labelled synthetic set from a conditional run: ganlab augment run=RUN_DIR n_per_class=1000 out=syn.npz
  report   one row per run of a sweep or of outputs/: ganlab report DIR [--sort METRIC] [--format F] [--plot M.png]
  board    TensorBoard on outputs/, a sweep or a run, on a free local port: ganlab board [DIR] [--port P]

config groups (conf/): dataset, model, loss, optimizer, penalty, experiment, hparams_search, debug
  ganlab train --help      lists every option of every group
  ganlab train model=wgan_gp --cfg job    shows the composed recipe without running it
"""

_GROUPS = ("model", "dataset", "loss", "optimizer", "penalty", "experiment", "debug")
_sweep_failures: list[str] = []


_RESUME_TIME = "%Y-%m-%d_%H-%M-%S"  # a resumed run's Hydra files go to .hydra/resume-<this time>/


def _hydra_subdir(output_dir: str) -> str:
    """Where Hydra writes a job's files under `resume=auto`: `.hydra/` for a new run, beside it
    (`.hydra/resume-<time>/`) when the dir holds a run to continue, as `resume=true` does."""
    import time

    if (Path(output_dir) / "checkpoints" / "last.pt").exists():
        return time.strftime(f".hydra/resume-{_RESUME_TIME}")
    return ".hydra"


_RUN_TIME = None  # under torchrun: rank 0's start time, so every process names the same run dir


def _now(pattern: str) -> str:
    """`${ganlab_now:%H-%M-%S}`: Hydra's `now`, or rank 0's time under torchrun."""
    import datetime

    return (_RUN_TIME or datetime.datetime.now()).strftime(pattern)


def _register_resolvers() -> None:
    # at import: a job unpickled in another process (submitit) imports this module before Hydra
    # resolves the job's config there
    from omegaconf import OmegaConf

    OmegaConf.register_new_resolver("ganlab_hydra_subdir", _hydra_subdir, replace=True)
    OmegaConf.register_new_resolver("ganlab_now", _now, use_cache=True, replace=True)
    OmegaConf.register_new_resolver("ganlab_gpu_count", _gpu_count, replace=True)


def _gpu_count() -> int:
    from ganlab.device import gpu_count

    return gpu_count()


_register_resolvers()


def _report_error(message: str) -> None:
    try:
        from rich.console import Console
        from rich.text import Text

        Console(stderr=True, highlight=False, soft_wrap=True).print(Text.assemble(("ganlab: error: ", "bold red"), message))
    except Exception:  # pragma: no cover - rich missing or broken terminal
        print(f"ganlab: error: {message}", file=sys.stderr)


def _parse_value(text: str):
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    return {"true": True, "false": False}.get(text.lower(), text)


def _hparams(hc) -> dict:
    """The chosen config groups plus every command-line override: what TensorBoard's HParams shows."""
    hp = {g: str(hc.runtime.choices.get(g)) for g in _GROUPS if hc.runtime.choices.get(g) is not None}
    for item in hc.overrides.task:
        key, _, value = item.lstrip("+~").partition("=")
        if key not in _GROUPS and key != "resume" and not key.startswith("hydra"):  # resume: how, not what
            hp[key] = _parse_value(value)
    return hp


def _split_threads(cfg, hc) -> None:
    """Parallel local jobs (the joblib launcher) share the cores instead of oversubscribing them."""
    import torch

    target = str(hc.launcher.get("_target_", ""))
    if "joblib" not in target.lower() or cfg.train.threads is not None:
        return
    n_jobs = hc.launcher.get("n_jobs") or -1
    cores = os.cpu_count() or 1
    n_jobs = cores if n_jobs < 0 else n_jobs
    torch.set_num_threads(max(1, cores // max(1, n_jobs)))


def _optimizing(hc) -> bool:
    """Whether the sweep's sweeper optimizes a number the task returns (Optuna, Ax, Nevergrad, ...)."""
    return "BasicSweeper" not in str(hc.sweeper.get("_target_", "BasicSweeper"))


def default_optimize_metric(cfg) -> str | None:
    """What an optimizing sweeper minimizes when optimize_metric is not set: Metrics/reverse_kl (the
    mode histogram's KL to uniform, scored at the end of every run) for the 2D mixtures,
    Metrics/fd (the final Fréchet distance) for images when runs are evaluated (eval.every), else
    None (nothing is scored at the end of an image run)."""
    from ganlab.data.sources import build_source

    try:
        kind = build_source(cfg.dataset).kind  # reads no data
    except GanlabError:
        return None
    if kind == "points":
        return "Metrics/reverse_kl"
    return "Metrics/fd" if cfg.eval.get("every") else None


def _train_task(cfg):
    import time

    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    from ganlab import distributed
    from ganlab.errors import DivergedError
    from ganlab.runinfo import write_status as _write_status
    from ganlab.train import train

    hc = HydraConfig.get()
    run_dir = Path(hc.runtime.output_dir)
    hparams = _hparams(hc)
    gpu = None
    if hc.runtime.choices.get("hydra/launcher") == "local_gpus":  # one job per GPU, before CUDA starts here
        from ganlab.device import lease_gpu

        gpu = lease_gpu()
    if distributed.slurm_env():  # a Slurm job of several tasks (submitit): one DDP run over them
        distributed.setup(str(cfg.device))
    main_rank = distributed.is_main()  # rank 0 alone writes status.json
    if not main_rank:
        _quiet_logging()

    def write_status(*args, **kwargs) -> None:
        if main_rank:
            _write_status(*args, **kwargs)

    optimizing = hc.mode == RunMode.MULTIRUN and _optimizing(hc)
    _split_threads(cfg, hc)
    import torch

    from ganlab.runinfo import read_status

    existing = read_status(run_dir) is not None  # a run being resumed: keep its record until it starts
    started = []

    def on_start() -> None:  # every check passed: this run now owns the record
        write_status(run_dir, status="running", overrides=list(hc.overrides.task), steps=cfg.train.steps,
                     step=0, hparams=hparams, error="", metrics={}, pid=os.getpid(),
                     threads=torch.get_num_threads(), started=time.time(), world=distributed.world(),
                     **({"gpu": gpu} if gpu is not None else {}))
        started.append(True)

    t0 = time.monotonic()
    try:
        result = train(cfg, run_dir, hparams=hparams, on_start=on_start)
        if result.get("finished_before"):  # resume=auto on a finished run: its record stands
            return _recorded_result(cfg, read_status(run_dir) or {}, result, optimizing)
    except GanlabError as exc:
        status = "diverged" if isinstance(exc, DivergedError) else "failed"
        if started or not existing:
            write_status(run_dir, status=status, error=str(exc), wall_s=time.monotonic() - t0,
                         overrides=list(hc.overrides.task), steps=cfg.train.steps)
        if os.environ.get("HYDRA_FULL_ERROR") == "1":
            raise
        _report_error(str(exc))
        if hc.mode == RunMode.RUN:
            sys.exit(2)
        # in a sweep, the other jobs go on and the sweep's exit status says that one failed; an
        # optimizing sweeper (Optuna) cannot read a number from this dict: it records a failed trial
        return {"status": status, "error": str(exc)}
    except KeyboardInterrupt:
        if started:
            write_status(run_dir, status="interrupted", error="KeyboardInterrupt", wall_s=time.monotonic() - t0)
        raise
    except SystemExit as exc:  # a cluster job preempted after its checkpoint (submitit requeues it)
        if started:
            write_status(run_dir, status="interrupted", error=f"preempted: exit {exc.code} to be requeued",
                         wall_s=time.monotonic() - t0)
        raise
    except Exception as exc:  # a bug: recorded, then Hydra shows it
        if started or not existing:
            write_status(run_dir, status="failed", error=f"{type(exc).__name__}: {exc}", wall_s=time.monotonic() - t0)
        raise
    status = "interrupted" if result.get("stopped_by") else "ok"
    metrics = {k: v for k, v in result.items() if "/" in k}
    write_status(run_dir, status=status, step=result["step"], wall_s=time.monotonic() - t0, metrics=metrics,
                 train_wall_s=result["wall_s"], train_cpu_s=result["cpu_s"], ended=time.time())
    return _recorded_result(cfg, {"metrics": metrics}, result, optimizing)


def _quiet_logging() -> None:
    """The other ranks of a DDP run (a submitit job's tasks, whose Hydra set up logging as rank 0's did): no
    lines in the run's train.log, and only warnings on the console."""
    import logging

    root = logging.getLogger()
    for handler in list(root.handlers):
        if isinstance(handler, logging.FileHandler):
            root.removeHandler(handler)
            handler.close()
    root.setLevel(logging.WARNING)


def _recorded_result(cfg, record: dict, result: dict, optimizing: bool = False):
    """What the task returns: the final values, or the one an optimizing sweeper asks for
    (optimize_metric, or the default for the data when an optimizing sweeper runs without it)."""
    metrics = record.get("metrics") or {}
    result = {**result, **metrics}
    metric = cfg.get("optimize_metric") or (default_optimize_metric(cfg) if optimizing else None)
    if metric:  # what an optimizing sweeper (Optuna) minimizes or maximizes
        if metric not in result:
            _report_error(f"optimize_metric={metric} is not among this run's final values ({', '.join(metrics)}).")
            return {"status": "failed", "error": f"no final value named {metric}"}
        return float(result[metric])
    return result


try:
    from hydra.experimental.callback import Callback
except ImportError:  # pragma: no cover
    Callback = object


class SweepStatus(Callback):
    """Before a sweep: an optimizing sweeper (Optuna) without optimize_metric gets the data's default
    metric, or one line naming the fix before any trial runs. After it (any launcher, jobs in this
    process or not): count the runs that failed."""

    def on_multirun_start(self, config, **kwargs) -> None:
        if not _optimizing(config.hydra) or config.get("optimize_metric"):
            return
        direction = config.hydra.sweeper.get("direction", "minimize")
        direction = getattr(direction, "name", direction)  # Optuna's structured config holds an enum
        metric = default_optimize_metric(config)
        if metric is None or str(direction) != "minimize":
            why = ("image runs are scored at the end only with eval.every" if metric is None
                   else f"hydra.sweeper.direction={direction}, while the default {metric} is to be minimized")
            _report_error(f"an optimizing sweeper needs the number to optimize and optimize_metric is not set ({why}): "
                          "add optimize_metric=NAME (e.g. optimize_metric=Metrics/fd eval.every=1000 for images, "
                          "Metrics/reverse_kl for ring8/grid25) and the matching hydra.sweeper.direction.")
            raise SystemExit(2)
        import logging

        logging.getLogger("ganlab").info(f"optimize_metric is not set: the sweeper minimizes {metric}, each run's "
                                         "final value (optimize_metric=NAME picks another)")

    def on_multirun_end(self, config, **kwargs) -> None:
        from ganlab.runinfo import find_runs, read_status

        sweep_dir = Path(config.hydra.sweep.dir)
        if not sweep_dir.is_dir():
            return
        for run in find_runs(sweep_dir):
            st = read_status(run) or {}
            if st.get("status") in ("failed", "diverged"):
                _sweep_failures.append(f"{run.name}: {st.get('error', '')}")


def _quote_paths(args: list[str], keys: tuple[str, ...]) -> list[str]:
    """Paths of sweep runs hold '=' and ',' (`0_model=gan,seed=1`), which Hydra's override grammar
    reads as syntax: quote such values of path keys so `run=`/`resume=` take them as they are."""
    out = []
    for arg in args:
        key, sep, value = arg.partition("=")
        if sep and key in keys and value[:1] not in ("'", '"') and any(c in value for c in "=, []{}()"):
            arg = f"{key}='{value}'"
        out.append(arg)
    return out


def _prepare_run_dir(args: list[str]) -> list[str]:
    """Protect what a run dir already holds, before Hydra writes anything into it.

    - `resume=PATH` continues that run in its own dir (it becomes hydra.run.dir);
    - a resume writes Hydra's files to .hydra/resume-<time>/, keeping the run's original .hydra/;
    - a new run into a dir that already holds a checkpoint is refused;
    - `resume=auto` continues the run dir's run if it holds one, else starts it (per job in a sweep).
    """
    value = next((a.split("=", 1)[1].strip("'\"") for a in args if a.startswith("resume=")), None)
    run_dir_arg = next((a.split("=", 1)[1].strip("'\"") for a in args if a.startswith("hydra.run.dir=")), None)
    if value == "auto":  # each job decides in its own dir: Hydra's files go where a resume puts them
        return [*args, "hydra.output_subdir='${ganlab_hydra_subdir:${hydra.runtime.output_dir}}'"]
    resuming = value not in (None, "", "false", "False", "null")
    if resuming and value not in ("true", "True") and run_dir_arg is None:
        path = Path(value).expanduser()
        if not path.exists():
            raise GanlabError(f"resume={value}: no such run dir or checkpoint; give a run dir or its checkpoints/last.pt.")
        run_dir = path if path.is_dir() else (path.parent.parent if path.parent.name == "checkpoints" else path.parent)
        args = [*args, f"hydra.run.dir='{run_dir.resolve()}'"]
    if resuming:
        args = [*args, f"hydra.output_subdir=.hydra/resume-${{now:{_RESUME_TIME}}}"]
    elif run_dir_arg and "-m" not in args and "--multirun" not in args and \
            (Path(run_dir_arg).expanduser() / "checkpoints" / "last.pt").exists():
        raise GanlabError(f"{run_dir_arg} already holds a run (checkpoints/last.pt); add resume=true to continue it, "
                          "or choose another hydra.run.dir so nothing is overwritten.")
    return args


def _check_output_dir(args: list[str]) -> None:
    """Fail before any work when the run (or sweep) dir cannot be written."""
    multirun = "-m" in args or "--multirun" in args
    key = "hydra.sweep.dir=" if multirun else "hydra.run.dir="
    value = next((a[len(key):].strip("'\"") for a in args if a.startswith(key)), "outputs")
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


def _join_torchrun(args: list[str]) -> list[str]:
    """Under torchrun (WORLD_SIZE > 1): join the process group before Hydra, take rank 0's time for the run
    dir, and keep the other ranks from writing into it (no .hydra/, no train.log)."""
    global _RUN_TIME
    import datetime

    from ganlab import distributed

    if "-m" in args or "--multirun" in args:
        raise GanlabError("torchrun starts the processes of ONE run; launch a sweep without torchrun (its jobs can be DDP "
                          "runs themselves: hydra/launcher=submitit_slurm hydra.launcher.tasks_per_node=N "
                          "hydra.launcher.gpus_per_node=N).")
    device = next((a.split("=", 1)[1] for a in args if a.startswith("device=")), "auto")
    distributed.setup(device)
    _RUN_TIME = distributed.broadcast_object(datetime.datetime.now())
    if not distributed.is_main():
        args = [a for a in args if not a.startswith(("hydra.output_subdir=", "hydra/job_logging="))]
        args += ["hydra.output_subdir=null", "hydra/job_logging=ganlab_rank"]
    return args


def train_cli(args: list[str]) -> int:
    import hydra

    from ganlab import distributed
    from ganlab.config import config_dir

    args = _quote_paths(args, ("resume", "hydra.run.dir", "hydra.sweep.dir", "dataset.root"))
    if not any(a in ("--help", "-h", "--hydra-help", "--info", "-c", "--cfg", "-sc", "--shell-completion") or a.startswith("--info")
               for a in args):
        args = _prepare_run_dir(args)
        _check_output_dir(args)
        if distributed.env_world() > 1:
            args = _join_torchrun(args)
    main = hydra.main(config_path=config_dir(), config_name="train", version_base="1.3")(_train_task)
    sys.argv = ["ganlab", *args]
    try:
        main()
    finally:
        distributed.teardown()
    if _sweep_failures:
        _report_error(f"{len(_sweep_failures)} job(s) of the sweep failed: " + "; ".join(_sweep_failures)
                      + " (ganlab report SWEEP_DIR lists every run)")
        return 1
    return 0


def _hydra_command(config_name: str, run, args: list[str], path_keys: tuple[str, ...]) -> int:
    """A Hydra app over conf/<config_name>.yaml whose task is `run(cfg)`; user errors end in one message."""
    import hydra

    from ganlab.config import config_dir

    def task(cfg):
        try:
            run(cfg)
        except GanlabError as exc:
            if os.environ.get("HYDRA_FULL_ERROR") == "1":
                raise
            _report_error(str(exc))
            sys.exit(2)

    main = hydra.main(config_path=config_dir(), config_name=config_name, version_base="1.3")(task)
    sys.argv = ["ganlab", *_quote_paths(args, path_keys)]
    main()
    return 0


def sample_cli(args: list[str]) -> int:
    from ganlab.sample import sample_run

    return _hydra_command("sample", sample_run, args, ("run", "out"))


def eval_cli(args: list[str]) -> int:
    from ganlab.evaluate import evaluate

    return _hydra_command("eval", evaluate, args, ("target", "out", "inception_weights", "dataset.root"))


def translate_cli(args: list[str]) -> int:
    from ganlab.translate import translate_run

    return _hydra_command("translate", translate_run, args, ("run", "in", "out"))


def inpaint_cli(args: list[str]) -> int:
    from ganlab.inpaint import inpaint_run

    return _hydra_command("inpaint", inpaint_run, args, ("run", "in", "mask", "out"))


def data_cli(args: list[str]) -> int:
    if not args or args[0] != "check":
        raise GanlabError("usage: ganlab data check dataset=NAME [dataset.root=DIR] [cache=false]")
    from ganlab.datacheck import check_data

    return _hydra_command("data_check", check_data, args[1:], ("dataset.root", "dataset.root_a", "dataset.root_b"))


def interpolate_cli(args: list[str]) -> int:
    from ganlab.interpolate import interpolate_run

    return _hydra_command("interpolate", interpolate_run, args, ("run", "out"))


def augment_cli(args: list[str]) -> int:
    from ganlab.augment import augment_run

    return _hydra_command("augment", augment_run, args, ("run", "out"))


def board_cli(args: list[str]) -> int:
    from ganlab.board import main as board_main

    return board_main(args)


def report_cli(args: list[str]) -> int:
    from ganlab.report import main as report_main

    return report_main(args)


COMMANDS = {"train": train_cli, "sample": sample_cli, "eval": eval_cli, "translate": translate_cli,
            "inpaint": inpaint_cli, "interpolate": interpolate_cli, "data": data_cli, "augment": augment_cli, "report": report_cli, "board": board_cli}


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
