"""mm1 training as a submitit job that requeues itself on preemption or timeout."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from submitit.helpers import Checkpointable, DelayedSubmission

from mm1.train.trainer import train


class TrainJob(Checkpointable):
    """``train(cfg, packed, tokenizer, out_dir)`` as a submitit job that requeues itself.

    On preemption or timeout submitit calls :meth:`checkpoint` and requeues what it returns: the
    same training with ``train.resume=true``, which continues from the newest resumable checkpoint.
    """

    def __init__(self, cfg, packed: Path, tokenizer: Path, out_dir: Path) -> None:
        self.cfg, self.packed, self.tokenizer, self.out_dir = cfg, Path(packed), Path(tokenizer), Path(out_dir)

    def __call__(self):
        return train(self.cfg, self.packed, self.tokenizer, self.out_dir)

    def checkpoint(self, *args: Any, **kwargs: Any) -> DelayedSubmission:
        train_cfg = self.cfg.train.model_copy(update={"resume": True})
        resumed = TrainJob(self.cfg.model_copy(update={"train": train_cfg}), self.packed, self.tokenizer, self.out_dir)
        return DelayedSubmission(resumed)
