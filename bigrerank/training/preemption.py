"""Preemption: SIGUSR1/SIGTERM let the loop finish its step, checkpoint and stop, for a requeue."""
from __future__ import annotations

import logging
import signal

from .. import distributed

log = logging.getLogger("bigrerank.train")
PREEMPTED_EXIT_CODE = 75  # EX_TEMPFAIL: checkpoint written on SIGUSR1/SIGTERM; requeue and resume


class Preemption:
    """Remembers SIGUSR1/SIGTERM so the loop can finish its step, checkpoint and exit."""

    SIGNALS = (signal.SIGUSR1, signal.SIGTERM)

    def __init__(self):
        self.requested = False
        self._previous = {sig: signal.signal(sig, self._handle) for sig in self.SIGNALS}

    def _handle(self, signum, _frame):
        log.warning("signal %s received: checkpointing after this step", signal.Signals(signum).name)
        self.requested = True

    def any_rank(self) -> bool:
        return distributed.all_reduce([float(self.requested)], "max")[0] > 0

    def restore(self) -> None:
        """Give the signals back to whoever handled them before training."""
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
