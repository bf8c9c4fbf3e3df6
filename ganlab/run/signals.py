"""Stopping a run cleanly: SIGTERM/SIGINT and a cluster's preemption signal end it after the current step."""

from __future__ import annotations

import os
import signal
import threading


class StopSignals:
    """SIGTERM/SIGINT ask the loop to stop after the current step (checkpoint, clean exit 0);
    a second SIGINT interrupts at once.

    A cluster job's preemption signal (submitit's: SIGUSR2, or $SUBMITIT_PREEMPT_SIGNAL) is caught
    too when a handler for it is installed (submitit's requeues the job and exits): the loop stops
    after the step and writes a checkpoint, then `hand_on()` gives the signal to that handler, so
    the requeued job (`resume=auto`) loses no steps."""

    def __init__(self):
        self.received: int | None = None
        self._old: dict = {}
        self._chained: dict = {}

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGTERM, signal.SIGINT):
                self._old[sig] = signal.signal(sig, self._handle)
            preempt = getattr(signal, "SIG" + os.environ.get("SUBMITIT_PREEMPT_SIGNAL", "USR2").upper(), None)
            if preempt is not None and preempt not in self._old and callable(signal.getsignal(preempt)):
                self._old[preempt] = self._chained[preempt] = signal.signal(preempt, self._handle)
        return self

    def _handle(self, signum, frame):
        if self.received == signal.SIGINT and signum == signal.SIGINT:
            raise KeyboardInterrupt
        if self.received not in self._chained:  # a preemption, once received, is what hand_on() passes on
            self.received = signum

    def __exit__(self, *exc):
        for sig, old in self._old.items():
            signal.signal(sig, old)
        return False

    def hand_on(self) -> None:
        """After the checkpoint: the preemption handler that was there runs (submitit: requeue, exit)."""
        if self.received in self._chained:
            self._chained[self.received](self.received, None)

