"""``search run --inherit prototype``: candidates start from the trained prototype's weights.

The prototype (trial 0, CT L) is trained first under the run's configuration, like any trial; its
weights go to the artifact store once. Every later candidate is built by ``space.inherit`` from
those weights and fine-tuned for the run's epochs. A worker that asks for a candidate before the
prototype has finished (another worker is training it) waits for it; workers on other machines
download it from the artifact store. ``--inherit-from`` takes the prototype's weights from
elsewhere instead: a weights file (a CT L state dict, or any COVID-Net CT with its ``spec.json``
beside it) or ``STUDY:TRIAL`` in the same storage.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
import torch
from optuna.trial import FrozenTrial, TrialState

from search.errors import RunFailed, UsageError

logger = logging.getLogger(__name__)

INHERIT_MODES = ("none", "prototype")


@dataclass(frozen=True)
class Parent:
    """A trained parent: its spec, its weights (CPU) and where they came from."""

    spec: Any
    state: dict[str, torch.Tensor]
    source: str


def _is_prototype(t: FrozenTrial) -> bool:
    return str(t.user_attrs.get("origin", "")).startswith("prototype:")


class ParentSource:
    """Finds, waits for and caches the parent of a run's candidates (one download per worker).

    Args:
        study: the search study.
        inherit_from: ``None`` (the study's prototype trial), a weights file, or ``STUDY:TRIAL``.
        artifacts: the artifact store location, if not the one the study records.
        poll_seconds: how often to look again while another worker trains the prototype.
        timeout_s: give up waiting after this long (the prototype's worker may have died and its
            trial not been retried yet).
    """

    def __init__(
        self,
        study: optuna.Study,
        inherit_from: str | None = None,
        artifacts: str | None = None,
        *,
        poll_seconds: float = 5.0,
        timeout_s: float = 6 * 3600.0,
        say: Callable[[str], None] | None = None,
    ) -> None:
        self.study = study
        self.inherit_from = inherit_from
        self.artifacts = artifacts
        self.poll_seconds = poll_seconds
        self.timeout_s = timeout_s
        self.say = say or logger.info
        self._parent: Parent | None = None

    def check(self) -> None:
        """Refuse a missing ``--inherit-from`` before anything is trained."""
        if self.inherit_from:
            self.get()

    def get(self) -> Parent:
        if self._parent is None:
            self._parent = self._from_elsewhere() if self.inherit_from else self._from_prototype()
        return self._parent

    # ------------------------------------------------------------------ the study's prototype
    def _from_prototype(self) -> Parent:
        from search.export.load import load_trial_model

        waited, said = 0.0, False
        while True:
            trials = self.study.get_trials(deepcopy=False)
            protos = [t for t in trials if _is_prototype(t)]
            done = [
                t
                for t in protos
                if t.state == TrialState.COMPLETE and t.user_attrs.get("status") == "complete"
            ]
            if done:
                t = done[0]
                model = load_trial_model(self.study, t, self.artifacts)
                return Parent(model.spec, _cpu(model.state_dict()), f"prototype trial {t.number}")
            if not protos:
                raise RunFailed(
                    f"study {self.study.study_name!r} has no prototype trial to inherit from; "
                    "create the study with --inherit prototype, or pass --inherit-from"
                )
            if waited >= self.timeout_s:
                raise RunFailed(f"the prototype trial did not complete within {self.timeout_s:.0f} s")
            if not said:
                self.say(
                    "waiting for the prototype (CT L, trial 0) to finish: candidates inherit its weights"
                )
                said = True
            time.sleep(self.poll_seconds)
            waited += self.poll_seconds

    # ------------------------------------------------------------------ a file or another study
    def _from_elsewhere(self) -> Parent:
        text = str(self.inherit_from)
        path = Path(text)
        if path.suffix == ".pt" or path.is_file():
            return _from_file(path)
        study_name, sep, number = text.rpartition(":")
        if not sep or not number.isdigit():
            raise UsageError(f"--inherit-from takes a weights file (.pt) or STUDY:TRIAL, got {text!r}")
        from search.export.load import load_trial_model

        try:
            study = optuna.load_study(study_name=study_name, storage=self.study._storage)
        except KeyError:
            raise UsageError(
                f"--inherit-from {text}: no study named {study_name!r} in this storage"
            ) from None
        trials = {t.number: t for t in study.get_trials(deepcopy=False)}
        t = trials.get(int(number))
        if t is None or t.user_attrs.get("status") != "complete" or not t.user_attrs.get("spec"):
            raise UsageError(
                f"--inherit-from {text}: no completed COVID-Net CT trial {number} in {study_name!r}"
            )
        model = load_trial_model(study, t)
        return Parent(model.spec, _cpu(model.state_dict()), f"{study_name} trial {number}")


def _from_file(path: Path) -> Parent:
    from search.export.load import read_weights_file
    from space import ArchSpec, get_reference

    state = read_weights_file(path, hint=" (--inherit-from)")
    spec_file = path.with_name("spec.json")
    if spec_file.is_file():
        spec = ArchSpec.from_json(spec_file.read_text())
    else:
        spec = get_reference("ct-l")
    from search.export.load import rebuild

    model = rebuild({"spec": spec.to_dict()}, state, f"--inherit-from {path}")
    return Parent(model.spec, _cpu(model.state_dict()), str(path))


def _cpu(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v.detach().to("cpu", copy=True) for k, v in state.items()}


__all__ = ["INHERIT_MODES", "Parent", "ParentSource"]
