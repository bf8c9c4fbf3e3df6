"""Where the configs live, and the checks every run makes before doing any work."""

from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig

from ganlab.errors import GanlabError

_PKG = Path(__file__).resolve().parent


def config_dir() -> str:
    """The Hydra primary config dir.

    A wheel (`pip install .`) carries the top-level conf/ as ganlab/conf; an editable install or a
    source checkout has it beside the package. Both are absolute paths, so the CLI works from any
    working directory; users add their own config dirs with `hydra.searchpath`.
    """
    for candidate in (_PKG / "conf", _PKG.parent / "conf"):
        if (candidate / "train.yaml").is_file():
            return str(candidate)
    raise GanlabError(
        f"ganlab's configs were not found (looked in {_PKG / 'conf'} and {_PKG.parent / 'conf'}); "
        "reinstall the package with `pip install .` from a ganlab checkout."
    )


_EXAMPLES = {"optimizer.lr": "2e-4", "optimizer.lr_g": "1e-4", "optimizer.lr_d": "4e-4", "train.max_minutes": "60",
             "model.init_std": "0.02", "penalty.weight": "10", "train.clip_d": "0.01", "train.batch_size": "64",
             "model.z_dim": "100", "model.width": "64", "tricks.instance_noise": "0.1",
             "tricks.ema_rampup": "0.05", "tricks.self_ensemble": "3", "tricks.self_ensemble_every": "2000"}


def _positive(value, name: str, *, integer: bool = True, allow_zero: bool = False) -> None:
    kind = "an integer" if integer else "a number"
    ok_type = isinstance(value, int) if integer else isinstance(value, (int, float))
    if isinstance(value, bool) or not ok_type or value < 0 or (value == 0 and not allow_zero):
        bound = ">= 0" if allow_zero else "> 0"
        example = _EXAMPLES.get(name, "1")
        raise GanlabError(f"{name}={value!r} is not valid: it must be {kind} {bound} (e.g. {name}={example}).")


def _adversarial_only(m, what: str, off: str) -> None:
    """`what` works inside the one-G-one-D objective only: refuse it for families with their own D."""
    if m.objective != "adversarial":
        raise GanlabError(f"{what} is for the one-G-one-D families (model.objective=adversarial); "
                          f"model={m.name} trains with objective {m.objective}: set {off}.")


def validate(cfg: DictConfig) -> None:
    """Reject bad values before any data is read or any model is built."""
    t = cfg.train
    for key in ("steps", "batch_size", "n_critic", "log_every", "sample_every", "ckpt_every", "n_samples"):
        _positive(t[key], f"train.{key}")
    _positive(t.num_workers, "train.num_workers", allow_zero=True)
    if t.max_minutes is not None:
        _positive(t.max_minutes, "train.max_minutes", integer=False)
    _positive(t.keep_ckpts, "train.keep_ckpts", allow_zero=True)
    if t.amp not in ("none", "bf16", "fp16"):
        raise GanlabError(f"train.amp={t.amp!r} is not valid: use none, bf16 or fp16.")
    if not isinstance(t.get("sync_bn", False), bool):
        raise GanlabError(f"train.sync_bn={t.sync_bn!r} is not valid: use true or false.")
    if not isinstance(t.compile, bool):
        raise GanlabError(f"train.compile={t.compile!r} is not valid: use true or false.")
    if t.channels_last not in ("auto", True, False):
        raise GanlabError(f"train.channels_last={t.channels_last!r} is not valid: use auto, true or false.")
    if t.threads is not None:
        _positive(t.threads, "train.threads")
    if t.on_nan not in ("stop", "skip", "rollback"):
        raise GanlabError(f"train.on_nan={t.on_nan!r} is not valid: use stop, skip or rollback.")
    f = t.rollback_lr_factor
    if isinstance(f, bool) or not isinstance(f, (int, float)) or not 0 < f < 1:
        raise GanlabError(f"train.rollback_lr_factor={f!r} is not valid: use a number in (0, 1), e.g. 0.5.")
    _positive(t.max_rollbacks, "train.max_rollbacks")
    from ganlab.health import validate_health

    validate_health(cfg.health)
    if t.progress not in ("auto", "rich", "plain", "none"):
        raise GanlabError(f"train.progress={t.progress!r} is not valid: use auto, rich, plain or none.")
    if not isinstance(cfg.seed, int) or isinstance(cfg.seed, bool):
        raise GanlabError(f"seed={cfg.seed!r} is not valid: it must be an integer (e.g. seed=0).")
    if cfg.device not in ("auto", "cpu", "cuda", "mps") and not str(cfg.device).startswith("cuda:"):
        raise GanlabError(f"device={cfg.device!r} is not valid: use auto, cpu, cuda, cuda:N or mps.")

    opt = cfg.optimizer
    for key in ("lr", "lr_g", "lr_d"):
        if key in opt and opt[key] is not None:
            _positive(opt[key], f"optimizer.{key}", integer=False)
    if "betas" in opt:
        betas = list(opt.betas)
        if len(betas) != 2 or not all(isinstance(b, (int, float)) and 0 <= b < 1 for b in betas):
            raise GanlabError(f"optimizer.betas={betas} is not valid: give two numbers in [0, 1), e.g. [0.5,0.999].")

    m = cfg.model
    _positive(m.z_dim, "model.z_dim")
    _positive(m.width, "model.width")
    if m.get("d_width") is not None:
        _positive(m.d_width, "model.d_width")
    if m.backbone not in ("mlp", "dcgan", "resnet", "auto"):
        raise GanlabError(f"model.backbone={m.backbone!r} is not valid: use mlp, dcgan, resnet or auto.")
    for key, allowed in (("g_norm", ("batch", "none")), ("d_norm", ("batch", "layer", "none")),
                         ("g_act", ("relu", "leaky_relu")), ("cond_d", ("concat", "projection"))):
        if m[key] not in allowed:
            raise GanlabError(f"model.{key}={m[key]!r} is not valid: use one of {', '.join(allowed)}.")
    if m.init_std is not None:
        _positive(m.init_std, "model.init_std", integer=False)
    _positive(m.minibatch_stddev, "model.minibatch_stddev", allow_zero=True)
    _positive(m.pack, "model.pack")
    if m.pack > 1:
        _adversarial_only(m, f"model.pack={m.pack}", "model.pack=1")
        if m.conditional:
            raise GanlabError(f"model.pack={m.pack} packs unlabelled samples: a conditional D judges one sample and "
                              "its label. Set model.conditional=false or model.pack=1.")
        if t.batch_size % m.pack:
            raise GanlabError(f"model.pack={m.pack} needs train.batch_size divisible by it (got {t.batch_size}); "
                              f"e.g. train.batch_size={max(m.pack, t.batch_size // m.pack * m.pack)}.")
    _positive(m.embed_dim, "model.embed_dim")
    for key in ("spectral_norm", "conditional"):
        if not isinstance(m[key], bool):
            raise GanlabError(f"model.{key}={m[key]!r} is not valid: use true or false.")
    if t.lr_decay_from is not None and (not isinstance(t.lr_decay_from, (int, float)) or isinstance(t.lr_decay_from, bool)
                                        or not 0 <= t.lr_decay_from < 1):
        raise GanlabError(f"train.lr_decay_from={t.lr_decay_from!r} is not valid: use a fraction in [0, 1) such as 0.7, "
                          "or null for a constant learning rate.")
    if t.clip_d is not None:
        _positive(t.clip_d, "train.clip_d", integer=False)

    ev = cfg.eval
    if ev.every is not None:
        _positive(ev.every, "eval.every")
    _positive(ev.n, "eval.n")
    if ev.n < 10:
        raise GanlabError(f"eval.n={ev.n} is too small to score: use at least 10 (thousands for real numbers).")
    if ev.mode not in ("min", "max"):
        raise GanlabError(f"eval.mode={ev.mode!r} is not valid: use min or max.")
    from ganlab.metrics import FEATURES, METRICS, check_not_labelled

    if isinstance(ev.metrics, str):
        if ev.metrics != "auto":
            raise GanlabError(f"eval.metrics={ev.metrics!r} is not valid: use auto or a list such as "
                              f"[{', '.join(METRICS)}].")
    else:
        unknown = [m for m in ev.metrics if m not in METRICS]
        if unknown:
            raise GanlabError(f"eval.metrics: {', '.join(map(str, unknown))} unknown; choose from "
                              f"{', '.join(METRICS)} (or auto).")
        check_not_labelled(list(ev.metrics))
    if ev.features not in FEATURES:
        raise GanlabError(f"eval.features={ev.features!r} is not valid: use {', '.join(FEATURES)}.")

    tr = cfg.tricks
    for key in ("label_smoothing", "flip_labels", "jacobian_truncation"):
        value = tr.get(key, 0.0)  # runs saved before a trick existed lack its key
        if not isinstance(value, (int, float)) or isinstance(value, bool) or not 0 <= value < 1:
            raise GanlabError(f"tricks.{key}={value!r} is not valid: use a number in [0, 1), e.g. 0.1.")
    if tr.get("jacobian_truncation"):
        _adversarial_only(m, "tricks.jacobian_truncation", "tricks.jacobian_truncation=0")
    if not isinstance(tr.ema, (int, float)) or isinstance(tr.ema, bool) or not 0 <= tr.ema < 1:
        raise GanlabError(f"tricks.ema={tr.ema!r} is not valid: use a decay in [0, 1) such as 0.999 (0 = off).")
    if tr.get("ema_rampup") is not None:
        _positive(tr.ema_rampup, "tricks.ema_rampup", integer=False)
    _positive(tr.instance_noise, "tricks.instance_noise", integer=False, allow_zero=True)
    if tr.instance_noise_anneal_steps is not None:
        _positive(tr.instance_noise_anneal_steps, "tricks.instance_noise_anneal_steps")
    from ganlab.tricks import parse_diff_augment

    if parse_diff_augment(tr.get("diff_augment")):
        _adversarial_only(m, "tricks.diff_augment", "tricks.diff_augment=null")
    if tr.get("self_ensemble"):
        _positive(tr.self_ensemble, "tricks.self_ensemble", allow_zero=True)
        _positive(tr.self_ensemble_every, "tricks.self_ensemble_every")
        if tr.self_ensemble > 1:
            _adversarial_only(m, "tricks.self_ensemble", "tricks.self_ensemble=0")
    if not isinstance(tr.noisy_labels, bool):
        raise GanlabError(f"tricks.noisy_labels={tr.noisy_labels!r} is not valid: use true or false.")

    for key in ("g_hidden", "d_hidden"):
        for width in m[key]:
            _positive(width, f"model.{key} entries")

    if cfg.penalty.name != "none":
        _positive(cfg.penalty.weight, "penalty.weight", integer=False, allow_zero=True)
    d = cfg.dataset
    if "resolution" in d and d.resolution is not None:
        _positive(d.resolution, "dataset.resolution")
