"""The best checkpoint so far: the saved step whose evaluation scored highest on --metric_for_best_model.

Only a checkpoint saved at an evaluated step can be the best (`--load_best_model_at_end` makes every save one).
The record travels in each checkpoint's client state, so a resume continues with the best of the trajectory it
resumes (not of a later, abandoned one); rotation keeps the best tag beside `latest`.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

from . import store

log = logging.getLogger(__name__)
CLIENT_KEY = "best"


@dataclass
class BestCheckpoint:
    metric: str                        # ir_measures name; higher is better
    judged_by: dict                    # the evaluation settings the values come from
    step: int | None = None
    value: float | None = None
    last: tuple[int, dict] | None = field(default=None, repr=False)  # (step, metrics) of the latest evaluation

    @property
    def tag(self) -> str | None:
        return None if self.step is None else store.tag_for(self.step)

    def evaluated(self, step: int, metrics: dict[str, float]) -> None:
        self.last = (step, metrics)

    def metrics_at(self, step: int) -> dict[str, float]:
        """The metrics of the evaluation at `step`, or {} when the latest evaluation was at another step."""
        return dict(self.last[1]) if self.last and self.last[0] == step else {}

    def checkpointed(self, step: int) -> dict | None:
        """A checkpoint is saved at `step`: it becomes the best when evaluated there and strictly better. Returns
        the record to save in its client state (None while there is no best)."""
        value = self.metrics_at(step).get(self.metric)
        if value is not None and (self.value is None or value > self.value):
            self.step, self.value = step, value
        return self.record()

    def record(self) -> dict | None:
        if self.step is None:
            return None
        return {"step": self.step, "metric": self.metric, "value": self.value, "judged_by": self.judged_by}

    def restore(self, resume_dir: Path | None) -> None:
        """Continue with the best recorded by the checkpoint resumed from, if judged the same way."""
        if resume_dir is None:
            return
        saved = (store.read_manifest(resume_dir).get("client_state") or {}).get(CLIENT_KEY)
        if not saved:
            return
        if saved.get("judged_by") != self.judged_by or saved.get("metric") != self.metric:
            log.warning("the best checkpoint recorded in %s (step %s) was judged with other evaluation settings: "
                        "the best is chosen anew from this run's evaluations", resume_dir, saved.get("step"))
            return
        self.step, self.value = saved["step"], saved["value"]
        log.info("best checkpoint so far: step %d (%s %.6g)", self.step, self.metric, self.value)
