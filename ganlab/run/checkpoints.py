"""The run's checkpoint part: the whole training state in one dict, written on ganlab.checkpoint's cadence,
restored on resume, and reloaded by train.on_nan=rollback. A mixin of ganlab.train's run."""

from __future__ import annotations

import logging

import torch
from omegaconf import OmegaConf

from ganlab import distributed
from ganlab.checkpoint import load_checkpoint, write_checkpoints
from ganlab.errors import DivergedError, GanlabError
from ganlab.run.resume import rng_state, set_rng_state
from ganlab.run.runtime import LogSums

log = logging.getLogger("ganlab")


class Checkpoints:
    def diverged(self, at_step: int) -> DivergedError:
        bad = int(self.logs.first_bad) or at_step
        where = (f"the last good checkpoint (step {self.last_ckpt_step}) is kept in {self.ckpt_dir}"
                 if self.last_ckpt_step else "no checkpoint had been written yet")
        tried = f" after {self.rollbacks} rollback(s) (train.max_rollbacks)" if self.rollbacks else ""
        return DivergedError(f"training diverged: a loss became NaN/Inf at step {bad}{tried}; {where}. Lower the "
                             "learning rate (optimizer.lr), change the loss, or set train.on_nan=skip or rollback.")

    def training_state(self, step: int) -> dict:
        # never write a diverged state (one sync, on checkpoint steps only)
        finite = torch.isfinite(torch.stack(torch._foreach_norm(self.all_params))).all() & (self.logs.first_bad == 0)
        if not bool(finite):
            raise self.diverged(step)
        obj = self.objective
        state = {
            **{name: net.state_dict() for name, net in obj.nets.items()},
            **{f"{name}_ema": ema.module.state_dict() for name, ema in obj.ema.items()},
            **{f"opt_{name}": opt.state_dict() for name, opt in obj.optimizers.items()},
            **{f"scaler_{name}": scaler.state_dict() for name, scaler in self.scalers.items()},
            "objective": obj.state_dict(), "step": step, "config": OmegaConf.to_container(self.cfg, resolve=True),
            "rng": rng_state(self.device), "data": self.batches.state_dict(), "best": dict(self.best),
            "health": {"watchdog": self.health.state_dict(), "lr_scale": self.lr_scale, "rollbacks": self.rollbacks},
        }
        if self.dist.world > 1:
            state["dist"] = distributed.checkpoint_record(state["objective"], self.all_params)
        return state

    def checkpoint(self, step: int) -> None:
        if self.dist.world > 1:  # BatchNorm's running statistics are each rank's own: all continue from rank 0's
            distributed.broadcast_buffers([*self.objective.nets.values(), *(e.module for e in self.objective.ema.values())])
        state = self.training_state(step)  # every rank: the checks and the gathers; rank 0 writes
        if self.main:
            write_checkpoints(state, self.ckpt_dir, step, int(self.cfg.train.keep_ckpts))
        self.last_ckpt_step = step

    def restore(self, state: dict) -> None:
        if state.get("imported"):
            return self._start_from_imported(state)
        obj = self.objective
        try:
            for name, net in obj.nets.items():
                net.load_state_dict(state[name])
            for name, scaler in self.scalers.items():
                if state.get(f"scaler_{name}"):
                    scaler.load_state_dict(state[f"scaler_{name}"])
            health = state.get("health") or {}
            self.lr_scale, self.rollbacks = float(health.get("lr_scale", 1.0)), int(health.get("rollbacks", 0))
            for name, opt in obj.optimizers.items():
                opt.load_state_dict(state[f"opt_{name}"])
            self.set_lr_factor(1.0)  # the config's lr (x the rollbacks' lowering) wins over the saved one
            for name, ema in obj.ema.items():
                ema.module.load_state_dict(state.get(f"{name}_ema") or state[name])
            obj.load_state_dict(distributed.objective_state_for_this_rank(state))
            self.batches.load_state_dict(state["data"])
            set_rng_state(state["rng"], self.device)
        except (KeyError, RuntimeError, ValueError) as exc:
            raise GanlabError(f"the checkpoint in {self.ckpt_dir} does not fit this run ({str(exc).splitlines()[0][:200]}); "
                              "resume with the run's own settings or start a new run.") from None
        self.start_step = self.last_ckpt_step = int(state["step"])
        self.best.update(state.get("best") or {})
        self.health.load_state_dict((state.get("health") or {}).get("watchdog"))
        note = distributed.resume_note(state)
        if note and self.main:
            log.warning(note)

    def _start_from_imported(self, state: dict) -> None:
        """A run dir of `ganlab import`: the imported networks (and EMA copies) are the start; optimizers, data
        order and RNGs are fresh, as for a new run (fine-tuning from pretrained weights)."""
        obj = self.objective
        try:
            for name, net in obj.nets.items():
                net.load_state_dict(state[name])
            for name, ema in obj.ema.items():
                ema.module.load_state_dict(state.get(f"{name}_ema") or state[name])
        except (KeyError, RuntimeError) as exc:
            raise GanlabError(f"the imported networks in {self.ckpt_dir} do not fit this run "
                              f"({str(exc).splitlines()[0][:200]}); fine-tune with the run's own model settings "
                              "(ganlab train resume=RUN_DIR adopts them).") from None
        self.start_step = self.last_ckpt_step = int(state["step"])
        if self.main:
            log.info(f"starting from the networks imported from {state['imported'].get('from')} "
                     "(fresh optimizers, data order and RNGs)")

    def roll_back(self, at_step: int, error: DivergedError) -> int:
        """train.on_nan=rollback: reload the last good checkpoint (or the start), lower every learning rate by
        train.rollback_lr_factor and go on; counted, logged and checkpointed. Returns the step reloaded."""
        t = self.cfg.train
        if self.rollbacks >= int(t.max_rollbacks):
            raise error
        bad = int(self.logs.first_bad) or at_step
        if self.last_ckpt_step and (self.ckpt_dir / "last.pt").is_file():
            state, where = load_checkpoint(self.ckpt_dir / "last.pt"), f"checkpoint step {self.last_ckpt_step}"
        else:
            self._initial_state.seek(0)
            state, where = torch.load(self._initial_state, weights_only=True), "the start (step 0)"
        keep = self.health.state_dict(), dict(self.best), self.rollbacks + 1, self.lr_scale * float(t.rollback_lr_factor)
        self.restore(state)
        self.health.load_state_dict(keep[0])
        self.best, self.rollbacks, self.lr_scale = keep[1], keep[2], keep[3]
        self.set_lr_factor(1.0)
        self.logs = LogSums(self.device)
        self.monitor.restart(self.start_step)  # TensorBoard drops what the diverged stretch logged
        msg = (f"a loss became NaN/Inf at step {bad}: rolled back to {where} with every learning rate x{t.rollback_lr_factor} "
               f"(now x{self.lr_scale:.3g} of the config's; rollback {self.rollbacks} of at most {t.max_rollbacks})")
        self.report_health(bad, [self.health.rollback(bad, msg)])
        self.monitor.writer.add_scalar("Health/rollbacks", float(self.rollbacks), bad)
        return self.start_step
