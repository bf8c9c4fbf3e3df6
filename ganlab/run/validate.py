"""The checks of train.* (what the loop reads), run before any data is read or any model is built."""

from __future__ import annotations

from ganlab.checks import boolean, fraction, one_of, positive
from ganlab.errors import GanlabError


def validate_train(t) -> None:
    for key in ("steps", "batch_size", "n_critic", "log_every", "sample_every", "ckpt_every", "n_samples"):
        positive(t[key], f"train.{key}")
    positive(t.num_workers, "train.num_workers", allow_zero=True)
    if t.max_minutes is not None:
        positive(t.max_minutes, "train.max_minutes", integer=False)
    positive(t.keep_ckpts, "train.keep_ckpts", allow_zero=True)
    one_of(t.amp, "train.amp", ("none", "bf16", "fp16"), "none, bf16 or fp16")
    boolean(t.get("sync_bn", False), "train.sync_bn")
    boolean(t.compile, "train.compile")
    one_of(t.channels_last, "train.channels_last", ("auto", True, False), "auto, true or false")
    if t.threads is not None:
        positive(t.threads, "train.threads")
    one_of(t.on_nan, "train.on_nan", ("stop", "skip", "rollback"), "stop, skip or rollback")
    f = t.rollback_lr_factor
    if isinstance(f, bool) or not isinstance(f, (int, float)) or not 0 < f < 1:
        raise GanlabError(f"train.rollback_lr_factor={f!r} is not valid: use a number in (0, 1), e.g. 0.5.")
    positive(t.max_rollbacks, "train.max_rollbacks")
    one_of(t.progress, "train.progress", ("auto", "rich", "plain", "none"), "auto, rich, plain or none")
    if t.lr_decay_from is not None:
        fraction(t.lr_decay_from, "train.lr_decay_from", "a fraction in [0, 1) such as 0.7, or null for a constant "
                 "learning rate")
    if t.clip_d is not None:
        positive(t.clip_d, "train.clip_d", integer=False)
