"""`ganlab train`: a Hydra app around ganlab.train.train, with what a run dir needs before Hydra writes into
it (resume protection, a writable dir, torchrun's ranks) and what a run leaves behind (status.json)."""

from __future__ import annotations

import os
import sys
import tempfile
import time
from pathlib import Path

from ganlab.cli.sweeps import default_optimize_metric, failures, optimizing as sweep_optimizes
from ganlab.cli.common import parse_value, quote_paths, report_error
from ganlab.errors import GanlabError

GROUPS = ("model", "dataset", "loss", "optimizer", "penalty", "experiment", "debug")
_RESUME_TIME = "%Y-%m-%d_%H-%M-%S"  # a resumed run's Hydra files go to .hydra/resume-<this time>/
_RUN_TIME = None  # under torchrun: rank 0's start time, so every process names the same run dir


# ------------------------------------------------------------------------ resolvers in conf/
def _hydra_subdir(output_dir: str) -> str:
    """Where Hydra writes a job's files under `resume=auto`: `.hydra/` for a new run, beside it
    (`.hydra/resume-<time>/`) when the dir holds a run to continue, as `resume=true` does."""
    if (Path(output_dir) / "checkpoints" / "last.pt").exists():
        return time.strftime(f".hydra/resume-{_RESUME_TIME}")
    return ".hydra"


def _now(pattern: str) -> str:
    """`${ganlab_now:%H-%M-%S}`: Hydra's `now`, or rank 0's time under torchrun."""
    import datetime

    return (_RUN_TIME or datetime.datetime.now()).strftime(pattern)


def _gpu_count() -> int:
    from ganlab.device import gpu_count

    return gpu_count()


def register_resolvers() -> None:
    # at import of ganlab.cli: a job unpickled in another process (submitit) imports it before Hydra
    # resolves the job's config there
    from omegaconf import OmegaConf

    OmegaConf.register_new_resolver("ganlab_hydra_subdir", _hydra_subdir, replace=True)
    OmegaConf.register_new_resolver("ganlab_now", _now, use_cache=True, replace=True)
    OmegaConf.register_new_resolver("ganlab_gpu_count", _gpu_count, replace=True)


# ------------------------------------------------------------------------------ the task
def _hparams(hc) -> dict:
    """The chosen config groups plus every command-line override: what TensorBoard's HParams shows."""
    hp = {g: str(hc.runtime.choices.get(g)) for g in GROUPS if hc.runtime.choices.get(g) is not None}
    for item in hc.overrides.task:
        key, _, value = item.lstrip("+~").partition("=")
        if key not in GROUPS and key != "resume" and not key.startswith("hydra"):  # resume: how, not what
            hp[key] = parse_value(value)
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


class _Record:
    """status.json of one run, written by rank 0 alone: `running` once every check passed, then how it ended.
    A run being resumed keeps its old record until it starts."""

    def __init__(self, run_dir: Path, hc, cfg):
        from ganlab import distributed
        from ganlab.runinfo import read_status

        self.run_dir, self.hc, self.cfg = run_dir, hc, cfg
        self.main = distributed.is_main()
        self.existing = read_status(run_dir) is not None
        self.started, self.t0 = False, time.monotonic()

    def write(self, **fields) -> None:
        if self.main:
            from ganlab.runinfo import write_status

            write_status(self.run_dir, **fields)

    def start(self, hparams: dict, gpu) -> None:
        import torch

        from ganlab import distributed

        self.write(status="running", overrides=list(self.hc.overrides.task), steps=self.cfg.train.steps, step=0,
                   hparams=hparams, error="", metrics={}, pid=os.getpid(), threads=torch.get_num_threads(),
                   started=time.time(), world=distributed.world(), **({"gpu": gpu} if gpu is not None else {}))
        self.started = True

    def ended(self, status: str, error: str, always: bool = False, **fields) -> None:
        """A run that failed or stopped; `always`: also when it never started (its own record, not a resume's)."""
        if self.started or (always and not self.existing):
            self.write(status=status, error=error, wall_s=time.monotonic() - self.t0, **fields)

    def ok(self, result: dict) -> dict:
        metrics = {k: v for k, v in result.items() if "/" in k}
        self.write(status="interrupted" if result.get("stopped_by") else "ok", step=result["step"],
                   wall_s=time.monotonic() - self.t0, metrics=metrics, train_wall_s=result["wall_s"],
                   train_cpu_s=result["cpu_s"], ended=time.time())
        return metrics


def _train_task(cfg):
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    from ganlab import distributed
    from ganlab.errors import DivergedError
    from ganlab.runinfo import read_status
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
    if not distributed.is_main():
        _quiet_logging()
    optimizing = hc.mode == RunMode.MULTIRUN and sweep_optimizes(hc)
    _split_threads(cfg, hc)
    record = _Record(run_dir, hc, cfg)
    try:
        result = train(cfg, run_dir, hparams=hparams, on_start=lambda: record.start(hparams, gpu))
        if result.get("finished_before"):  # resume=auto on a finished run: its record stands
            return _recorded_result(cfg, read_status(run_dir) or {}, result, optimizing)
    except GanlabError as exc:
        status = "diverged" if isinstance(exc, DivergedError) else "failed"
        record.ended(status, str(exc), always=True, overrides=list(hc.overrides.task), steps=cfg.train.steps)
        if os.environ.get("HYDRA_FULL_ERROR") == "1":
            raise
        report_error(str(exc))
        if hc.mode == RunMode.RUN:
            sys.exit(2)
        # in a sweep, the other jobs go on and the sweep's exit status says that one failed; an
        # optimizing sweeper (Optuna) cannot read a number from this dict: it records a failed trial
        return {"status": status, "error": str(exc)}
    except KeyboardInterrupt:
        record.ended("interrupted", "KeyboardInterrupt")
        raise
    except SystemExit as exc:  # a cluster job preempted after its checkpoint (submitit requeues it)
        record.ended("interrupted", f"preempted: exit {exc.code} to be requeued")
        raise
    except Exception as exc:  # a bug: recorded, then Hydra shows it
        record.ended("failed", f"{type(exc).__name__}: {exc}", always=True)
        raise
    metrics = record.ok(result)
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
            report_error(f"optimize_metric={metric} is not among this run's final values ({', '.join(metrics)}).")
            return {"status": "failed", "error": f"no final value named {metric}"}
        return float(result[metric])
    return result


# ------------------------------------------------------------------- before Hydra starts
def _key(override: str) -> str:
    return override.lstrip("+~").split("=", 1)[0].strip()


def _adopt_saved_overrides(args: list[str], run_dir: Path) -> list[str]:
    """A resumed run continues with its own command line: the run dir's .hydra/overrides.yaml (what Hydra saved
    when it started; what `ganlab import` writes) goes before this command line's overrides, each saved key that
    this line does not set again (and no key of a config group this line chooses anew)."""
    from omegaconf import OmegaConf

    saved_file = run_dir / ".hydra" / "overrides.yaml"
    if not saved_file.is_file():
        return args
    try:
        saved = [str(o) for o in OmegaConf.to_container(OmegaConf.load(saved_file))]
    except Exception:  # an unreadable record: resume with this command line alone, as before
        return args
    given = {_key(a) for a in args if "=" in a}
    groups = {k for k in given if "." not in k}
    adopted = [o for o in saved if "=" in o and _adoptable(o) and _key(o) not in given
               and _key(o).split(".", 1)[0] not in groups - {_key(o)}]
    return [*adopted, *args]


def _adoptable(override: str) -> bool:
    """An override read from a run dir (a file, so data) that may go onto the command line: none that chooses
    code (a `_target_`/`_partial_` key, model.objective, Hydra's own settings and search path, resume)."""
    key = _key(override)
    parts = key.split(".")
    return not (key.startswith("hydra") or key == "resume" or key.endswith("objective")
                or any(p.startswith("_") for p in parts) or "${" in override)


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
    run_dir = Path(run_dir_arg).expanduser() if run_dir_arg else None
    if resuming and value not in ("true", "True") and run_dir_arg is None:
        path = Path(value).expanduser()
        if not path.exists():
            raise GanlabError(f"resume={value}: no such run dir or checkpoint; give a run dir or its checkpoints/last.pt.")
        run_dir = path if path.is_dir() else (path.parent.parent if path.parent.name == "checkpoints" else path.parent)
        args = [*args, f"hydra.run.dir='{run_dir.resolve()}'"]
    multirun = "-m" in args or "--multirun" in args
    if resuming and run_dir is not None and not multirun:
        args = _adopt_saved_overrides(args, run_dir)
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


_INSPECTING = ("--help", "-h", "--hydra-help", "--info", "-c", "--cfg", "-sc", "--shell-completion")


def train_cli(args: list[str]) -> int:
    import hydra

    from ganlab import distributed
    from ganlab.config import config_dir

    failures.clear()  # this call's sweep only
    args = quote_paths(args, ("resume", "hydra.run.dir", "hydra.sweep.dir", "dataset.root"))
    if not any(a in _INSPECTING or a.startswith("--info") for a in args):
        args = _prepare_run_dir(args)
        _check_output_dir(args)
        if distributed.env_world() > 1:
            args = _join_torchrun(args)
    main = hydra.main(config_path=config_dir(), config_name="train", version_base="1.3")(_train_task)
    sys.argv = ["ganlab", *args]
    try:
        main()
    except BaseException:
        distributed.teardown(meet=False)  # a failed rank: the others may never reach the meeting
        raise
    distributed.teardown()
    if failures:
        report_error(f"{len(failures)} job(s) of the sweep failed: " + "; ".join(failures)
                     + " (ganlab report SWEEP_DIR lists every run)")
        return 1
    return 0
