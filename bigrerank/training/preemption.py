"""Preemption: SIGUSR1/SIGTERM/SIGINT (Ctrl-C) let the loop finish its step, checkpoint and stop, for a requeue."""
from __future__ import annotations

import logging
import signal

from .. import distributed

log = logging.getLogger("bigrerank.train")
PREEMPTED_EXIT_CODE = 75  # EX_TEMPFAIL: checkpoint written on SIGUSR1/SIGTERM; requeue and resume


class Preemption:
    """Remembers SIGUSR1/SIGTERM/SIGINT (Ctrl-C) so the loop can finish its step, checkpoint and exit; a second
    Ctrl-C aborts at once."""

    SIGNALS = (signal.SIGUSR1, signal.SIGTERM, signal.SIGINT)

    def __init__(self):
        self.requested = False
        self._previous = {sig: signal.signal(sig, self._handle) for sig in self.SIGNALS}

    def _handle(self, signum, _frame):
        if signum == signal.SIGINT and self.requested:
            raise KeyboardInterrupt
        log.warning("signal %s received: checkpointing after this step (exit code %d)%s", signal.Signals(signum).name,
                    PREEMPTED_EXIT_CODE, "; Ctrl-C again to abort at once" if signum == signal.SIGINT else "")
        self.requested = True

    def any_rank(self) -> bool:
        return distributed.all_reduce([float(self.requested)], "max")[0] > 0

    def restore(self) -> None:
        """Give the signals back to whoever handled them before training."""
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
