"""The small checks every config group's validation shares: each bad value ends in one GanlabError that
names the key, what it must be, and an example. The checks themselves live beside what they check
(ganlab.run.validate, ganlab.models, ganlab.optim, ganlab.metrics, ganlab.tricks, ganlab.losses,
ganlab.data.sources, ganlab.health); ganlab.config.validate runs them all."""

from __future__ import annotations

from ganlab.errors import GanlabError

EXAMPLES = {"optimizer.lr": "2e-4", "optimizer.lr_g": "1e-4", "optimizer.lr_d": "4e-4", "train.max_minutes": "60",
            "model.init_std": "0.02", "penalty.weight": "10", "train.clip_d": "0.01", "train.batch_size": "64",
            "model.z_dim": "100", "model.width": "64", "tricks.instance_noise": "0.1",
            "tricks.ema_rampup": "0.05", "tricks.self_ensemble": "3", "tricks.self_ensemble_every": "2000",
            "model.minibatch_disc": "100", "model.minibatch_disc_dim": "5", "tricks.feature_matching": "10"}


def positive(value, name: str, *, integer: bool = True, allow_zero: bool = False) -> None:
    kind = "an integer" if integer else "a number"
    ok_type = isinstance(value, int) if integer else isinstance(value, (int, float))
    if isinstance(value, bool) or not ok_type or value < 0 or (value == 0 and not allow_zero):
        bound = ">= 0" if allow_zero else "> 0"
        example = EXAMPLES.get(name, "1")
        raise GanlabError(f"{name}={value!r} is not valid: it must be {kind} {bound} (e.g. {name}={example}).")


def one_of(value, name: str, allowed: tuple, how: str | None = None) -> None:
    """`value` must be one of `allowed`; the message lists them (or says `how`)."""
    if value not in allowed:
        raise GanlabError(f"{name}={value!r} is not valid: use {how or ', '.join(map(str, allowed))}.")


def boolean(value, name: str) -> None:
    if not isinstance(value, bool):
        raise GanlabError(f"{name}={value!r} is not valid: use true or false.")


def fraction(value, name: str, use: str = "a number in [0, 1), e.g. 0.1") -> None:
    """A number in [0, 1); the message says `use ...`."""
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not 0 <= value < 1:
        raise GanlabError(f"{name}={value!r} is not valid: use {use}.")


def adversarial_only(m, what: str, off: str) -> None:
    """`what` works inside the one-G-one-D objective only: refuse it for families with their own D."""
    if m.objective != "adversarial":
        raise GanlabError(f"{what} is for the one-G-one-D families (model.objective=adversarial); "
                          f"model={m.name} trains with objective {m.objective}: set {off}.")
