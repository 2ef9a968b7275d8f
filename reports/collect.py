"""Reading a study's trials (and its baselines' and pruned models' studies) into one DataFrame.

Only Optuna is used to read: a report never imports the search driver. The search study is
``NAME``; companion studies are every study named ``NAME:<something>`` in the same storage
(``NAME:baselines`` from ``search baselines``, pruned models later). Each trial's ``kind`` user attr
(``search``, ``baseline``, ``pruned``; else the study's ``kind``) decides how it is drawn.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import optuna
import pandas as pd
from optuna.storages import BaseStorage
from optuna.trial import FrozenTrial, TrialState

from reports.metric_views import read_metrics
from space.errors import UserInputError

CT_L_ORIGIN = "prototype:ct-l"
KIND_SEARCH = "search"
KIND_BASELINE = "baseline"
KIND_PRUNED = "pruned"
KIND_FINAL = "final"  # ``<study>:final``: models retrained at full fidelity (``search final``)
STATUSES = ("complete", "stopped_early", "infeasible", "failed", "interrupted", "running", "waiting")
# Optuna's early stop (TrialState.PRUNED) is "stopped_early"; studies of earlier versions stored
# status "pruned", read as the same (``pruned`` alone means channel pruning, KIND_PRUNED)
OLD_STATUSES = {"pruned": "stopped_early"}
# The columns trials.csv starts with; every stored attribute follows as ``attr.<path>``.
CORE_COLUMNS = (
    "study",
    "number",
    "state",
    "status",
    "kind",
    "label",
    "origin",
    "baseline",
    "arch_id",
    "params",
    "macs",
    "flops",
    "complexity_size",
    "val_accuracy",
    "test_accuracy",
    "netscore",
    "netscore_test",
    "wall_time_s",
    "datetime_start",
    "datetime_complete",
    "elapsed_s",
    "measured",
    "candidate",
    "is_ct_l",
    "training",
    "differs",
)


TRAINING_KEYS = (
    "protocol",
    "epochs",
    "image_size",
    "batch_size",
    "lr",
    "momentum",
    "weight_decay",
    "cosine",
    "warmup_epochs",
    "label_smoothing",
    "ema",
    "augment",
    "balanced",
    "patience",
    "cv_folds",
    "repeats",
)


def training_config(config: Mapping[str, Any]) -> dict[str, Any]:
    """The training settings of a run configuration (or a trial's ``train_config``)."""
    return {k: config[k] for k in TRAINING_KEYS if k in config}


def training_text(config: Mapping[str, Any]) -> str:
    """A short name of a training configuration: "proxy, 4 epochs, 64 px"."""
    parts = [str(config["protocol"])] if config.get("protocol") else []
    if config.get("epochs") is not None:
        parts.append(f"{config['epochs']} epochs")
    if config.get("image_size") is not None:
        parts.append(f"{config['image_size']} px")
    return ", ".join(parts) or "not recorded"


def differences(config: Mapping[str, Any], reference: Mapping[str, Any]) -> str:
    """How ``config`` differs from ``reference`` in the training settings both state
    ("epochs 2 (search 1)"), or "" when it does not."""
    keys = [k for k in TRAINING_KEYS if k in config and k in reference]
    return ", ".join(f"{k.replace('_', ' ')} {config[k]} (search {reference[k]})" for k in keys
                     if config[k] != reference[k])  # fmt: skip


class StudyNotFound(UserInputError, LookupError):
    """No study of the given name in the storage; ``names`` lists the studies there."""

    def __init__(self, name: str, names: list[str]) -> None:
        super().__init__(f"no study named {name!r}; studies here: {', '.join(names) or 'none'}")
        self.names = names


@dataclass
class Collection:
    """Every trial of a search study and its companion studies, one row each.

    Attributes:
        study: the search study's name.
        frame: one row per trial: the ``CORE_COLUMNS``, then ``val_view``/``test_view``
            (``reports.metrics.MetricsView`` or ``None``) and ``attrs`` (the raw user attrs).
        study_attrs: the search study's user attrs (``objective``, ``run_config``, ...).
        companions: names of the companion studies read.
        started: when the search study's first trial started.
        companion_attrs: each companion study's user attrs, by name (``final_config``, ...).
    """

    study: str
    frame: pd.DataFrame
    study_attrs: dict[str, Any] = field(default_factory=dict)
    companions: list[str] = field(default_factory=list)
    started: datetime | None = None
    companion_attrs: dict[str, dict[str, Any]] = field(default_factory=dict)

    def of_kind(self, kind: str) -> pd.DataFrame:
        return self.frame[self.frame["kind"] == kind]

    @property
    def search(self) -> pd.DataFrame:
        return self.frame[self.frame["study"] == self.study]

    @property
    def proxy_measured(self) -> pd.DataFrame:
        """Every measured model but the final stage's (whose figures come from another training)."""
        f = self.frame
        return f[f["measured"] & (f["kind"] != KIND_FINAL)]

    @property
    def candidates(self) -> pd.DataFrame:
        """The search's measured, feasible candidates: the points of its Pareto front."""
        return self.frame[self.frame["candidate"]]

    def majority_rate(self, split: str, study: str | None = None) -> float | None:
        """The majority-class rate (%) of ``split`` stored by ``study`` (default: the search's):
        the accuracy of always predicting the largest class."""
        attrs = self.study_attrs if study is None else self.companion_attrs.get(study, {})
        rates = (attrs.get("data") or {}).get("majority_rate") or {}
        return _float(rates.get(split))

    @property
    def class_names(self) -> tuple[str, ...]:
        """The classes' display names the search's data gave (its ``classes.txt``), else COVIDx
        CT's (the stored metrics keep COVIDx CT's names as keys)."""
        from evaluators.data.classes import CLASS_NAMES

        names = (self.study_attrs.get("data") or {}).get("class_names")
        return tuple(names) if names and len(names) == len(CLASS_NAMES) else CLASS_NAMES

    def counts(self) -> dict[str, int]:
        """Trials of the search study by status (running and waiting ones included)."""
        out = dict.fromkeys(STATUSES, 0)
        for status in self.search["status"]:
            out[status] = out.get(status, 0) + 1
        return out


def collect(storage: str | BaseStorage, study: str) -> Collection:
    """Read the search study ``study`` and its companion studies from ``storage``.

    Raises:
        StudyNotFound: there is no study of that name.
    """
    summaries = optuna.get_all_study_summaries(storage, include_best_trial=False)
    names = [s.study_name for s in summaries]
    if study not in names:
        raise StudyNotFound(study, names)
    companions = sorted(n for n in names if n.startswith(study + ":"))
    main = optuna.load_study(study_name=study, storage=storage)
    trials = main.get_trials(deepcopy=False)
    starts = [t.datetime_start for t in trials if t.datetime_start is not None]
    started = min(starts) if starts else None
    rows = [_row(t, study, KIND_SEARCH, started) for t in trials]
    companion_attrs: dict[str, dict[str, Any]] = {}
    for name in companions:
        other = optuna.load_study(study_name=name, storage=storage)
        companion_attrs[name] = dict(other.user_attrs)
        default_kind = str(other.user_attrs.get("kind", name.split(":", 1)[1].rstrip("s") or "other"))
        rows += [_row(t, name, default_kind, started) for t in other.get_trials(deepcopy=False)]
    reference = training_config(main.user_attrs.get("run_config") or {})
    for r in rows:
        trained = training_config(r["attrs"].get("train_config") or {})
        r["training"] = training_text(trained) if trained else "not recorded"
        # the final stage has its own single configuration (reports.final); compared there, not here
        r["differs"] = differences(trained, reference) if r["kind"] != KIND_FINAL and r["measured"] else ""
    frame = pd.DataFrame(rows, columns=[*CORE_COLUMNS, "val_view", "test_view", "attrs", "trial_params"])
    return Collection(study, frame, dict(main.user_attrs), companions, started, companion_attrs)


def _status(t: FrozenTrial) -> str:
    stored = t.user_attrs.get("status")
    if isinstance(stored, str) and stored:
        return OLD_STATUSES.get(stored, stored)
    return {
        TrialState.COMPLETE: "complete",
        TrialState.PRUNED: "stopped_early",
        TrialState.FAIL: "failed",
        TrialState.RUNNING: "running",
        TrialState.WAITING: "waiting",
    }[t.state]


def _row(t: FrozenTrial, study: str, default_kind: str, started: datetime | None) -> dict[str, Any]:
    from evaluators import netscore

    a = t.user_attrs
    kind = str(a.get("kind") or default_kind)
    status = _status(t)
    params, macs = _count(a.get("params")), _count(a.get("macs"))
    val_acc = _float(a.get("val_accuracy"))
    val_view = read_metrics(a.get("val_metrics"))
    test_view = read_metrics(a.get("test_metrics"))
    test_acc = test_view.accuracy if test_view is not None else None
    measured = t.state == TrialState.COMPLETE and status == "complete" and val_acc is not None
    sizes_ok = params is not None and macs is not None and params > 0 and macs > 0
    ns_test = None
    if params and macs and sizes_ok and test_acc and 0 < test_acc <= 100:
        ns_test = netscore(test_acc, params, macs)
    is_ct_l = a.get("origin") == CT_L_ORIGIN
    elapsed = None
    if started is not None and t.datetime_complete is not None:
        elapsed = (t.datetime_complete - started).total_seconds()
    return {
        "study": study,
        "number": t.number,
        "state": t.state.name,
        "status": status,
        "kind": kind,
        "label": _label(t.number, kind, a, is_ct_l),
        "origin": a.get("origin"),
        "baseline": a.get("baseline"),
        "arch_id": a.get("arch_id"),
        "params": params,
        "macs": macs,
        "flops": _count(a.get("flops")),
        "complexity_size": _count(a.get("complexity_size")),
        "val_accuracy": val_acc,
        "test_accuracy": test_acc,
        "netscore": _float(a.get("netscore")) if measured else None,
        "netscore_test": ns_test,
        "wall_time_s": _float(a.get("wall_time_s")),
        "datetime_start": t.datetime_start,
        "datetime_complete": t.datetime_complete,
        "elapsed_s": elapsed,
        "measured": bool(measured and sizes_ok),
        "candidate": bool(measured and sizes_ok and kind == KIND_SEARCH),
        "is_ct_l": is_ct_l,
        "val_view": val_view,
        "test_view": test_view,
        "attrs": dict(a),
        "trial_params": dict(t.params),
    }


def _label(number: int, kind: str, a: Mapping[str, Any], is_ct_l: bool) -> str:
    if kind == KIND_BASELINE:
        return str(a.get("display_name") or a.get("baseline") or f"baseline #{number}")
    if is_ct_l:
        return f"CT L (prototype, #{number})"
    if kind == KIND_PRUNED:  # a channel-pruned model, named with its source (``origin``)
        source = str(a.get("origin") or "").removeprefix("pruned:").strip()
        name = str(a.get("display_name") or f"pruned #{number}")
        return f"{name} (from {source})" if source and source not in name else name
    if kind == KIND_FINAL:
        return str(a.get("display_name") or f"{kind} #{number}")
    return f"#{number} {a.get('arch_id', '?')}"


def _float(v: Any) -> float | None:
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
        return None
    return float(v)


def _count(v: Any) -> int | None:
    f = _float(v)
    return int(f) if f is not None else None


# ----------------------------------------------------------------------------- trials.csv
def flatten(value: Any, prefix: str = "attr") -> dict[str, Any]:
    """Nested dicts to ``prefix.a.b`` columns; lists become JSON text (one cell each)."""
    out: dict[str, Any] = {}
    if isinstance(value, Mapping):
        for k, v in value.items():
            out.update(flatten(v, f"{prefix}.{k}"))
    elif isinstance(value, (list, tuple)):
        out[prefix] = json.dumps(value, default=str)
    else:
        out[prefix] = value
    return out


def trials_table(collection: Collection) -> pd.DataFrame:
    """One row per trial: the core columns, the parameters (``param.*``) and every stored attribute."""
    core = collection.frame[list(CORE_COLUMNS)].reset_index(drop=True)
    extra = pd.DataFrame(
        [
            {**flatten(p, "param"), **flatten(a)}
            for p, a in zip(collection.frame["trial_params"], collection.frame["attrs"])
        ]
    ).reset_index(drop=True)
    extra = extra[sorted(extra.columns)] if len(extra.columns) else extra
    return pd.concat([core, extra], axis=1)
