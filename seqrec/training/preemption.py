"""Stopping on a signal without losing work: SIGTERM / SIGUSR1 -> agree -> checkpoint -> exit 143.

A signal handler only sets a flag. At every optimizer-step boundary the ranks agree on the
flags with one all-reduce (MAX) over a small CPU tensor, so a signal that reached only some ranks
(or reached them at different steps) still stops all of them at the same step; then every rank
takes part in the checkpoint and the process exits with PREEMPTED_EXIT_CODE.

Exit codes of a training process (`train/train.py`, `seqrec train`):

    0    finished (all epochs / max_steps / early stopping / train.max_minutes)
    143  stopped by SIGTERM or SIGUSR1 after saving a complete checkpoint: run it again with
         `--resume auto` (the SLURM scripts requeue the job). 143 = 128 + SIGTERM, what a shell
         reports for a process killed by SIGTERM, so "terminated" means "requeue" either way.
    2    a user error (bad config, data or checkpoint), printed as one line
"""

from __future__ import annotations

import logging
import signal
import threading
from types import FrameType
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch.distributed

log = logging.getLogger(__name__)

PREEMPTED_EXIT_CODE = 143
STOP_SIGNALS = (signal.SIGTERM, signal.SIGUSR1)

# Why a run stops early, ordered: when ranks disagree the highest code wins (all-reduce MAX).
NO_STOP, STOP_TIME_BUDGET, STOP_SIGNAL = 0, 1, 2


class StopFlag:
    """Sets a flag on SIGTERM / SIGUSR1; `agree()` turns per-rank flags into one decision.

    Use as a context manager so the previous handlers come back when training ends.
    """

    def __init__(
        self, group: torch.distributed.ProcessGroup | None = None, signals: tuple[int, ...] = STOP_SIGNALS
    ):
        self.group = group  # gloo group of all ranks (None = single process)
        self.signals = signals
        self.signal_name: str | None = None
        self._previous: dict[int, Any] = {}

    # ---- signal handling --------------------------------------------------------------------
    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.signal_name is None:
            self.signal_name = signal.Signals(signum).name
            # Logging from a handler is safe enough here: the handler runs between bytecodes.
            log.warning("received %s: will save a checkpoint and stop at the next step", self.signal_name)

    def __enter__(self) -> StopFlag:
        if threading.current_thread() is threading.main_thread():  # handlers only install there
            for sig in self.signals:
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()

    def request(self, reason: str = "request") -> None:
        """Ask for a stop from code (tests, hooks), as if a signal had arrived."""
        self.signal_name = self.signal_name or reason

    @property
    def requested(self) -> bool:
        return self.signal_name is not None

    # ---- agreement --------------------------------------------------------------------------
    def agree(self, time_budget_spent: bool = False) -> int:
        """The stop code all ranks agree on (NO_STOP, STOP_TIME_BUDGET or STOP_SIGNAL).

        Collective: every rank calls it at the same step boundary. One all-reduce of one integer
        on the CPU; it never waits for queued GPU work.
        """
        local = STOP_SIGNAL if self.requested else STOP_TIME_BUDGET if time_budget_spent else NO_STOP
        if self.group is None:
            return local
        import torch
        import torch.distributed as dist

        flag = torch.tensor([local], dtype=torch.int32)
        dist.all_reduce(flag, op=dist.ReduceOp.MAX, group=self.group)
        return int(flag.item())
