"""Studies filled through Optuna's API with the attributes `search run` and `search baselines` store
(the trials a report reads), without training anything."""

from __future__ import annotations

import datetime as dt
from typing import Any

import optuna
from optuna.distributions import IntDistribution
from optuna.trial import TrialState, create_trial

from evaluators import netscore

CLASSES = ("Normal", "Pneumonia", "COVID-19")
T0 = dt.datetime(2025, 1, 6, 9, 0, 0)


def _pct(num: int, den: int) -> float | None:
    return 100.0 * num / den if den else None


def metrics_dict(
    cm: list[list[int]], acc_ci: tuple[float, float], covid_ci: tuple[float, float] | None
) -> dict:
    """``EvalResult.to_dict()``'s layout for a confusion matrix (rows true, columns predicted)."""
    n = sum(map(sum, cm))
    per_class = {}
    for k, name in enumerate(CLASSES):
        tp = cm[k][k]
        fn = sum(cm[k]) - tp
        fp = sum(row[k] for row in cm) - tp
        tn = n - tp - fn - fp
        per_class[name] = {
            "name": name,
            "support": tp + fn,
            "sensitivity": _pct(tp, tp + fn),
            "ppv": _pct(tp, tp + fp),
            "specificity": _pct(tn, tn + fp),
            "npv": _pct(tn, tn + fn),
            "f1": _pct(2 * tp, 2 * tp + fp + fn),
        }
    f1s = [c["f1"] for c in per_class.values() if c["f1"] is not None]
    return {
        "n": n,
        "accuracy": 100.0 * sum(cm[k][k] for k in range(3)) / n,
        "accuracy_ci": list(acc_ci),
        "covid_sensitivity_ci": list(covid_ci) if covid_ci else None,
        "macro_f1": sum(f1s) / len(f1s) if f1s else None,
        "class_names": list(CLASSES),
        "per_class": per_class,
        "confusion_matrix": cm,
        "per_source": {},
        "bootstrap": 1000,
        "seed": 0,
    }


def _cm(normal_ok: int, covid_ok: int, n_normal: int = 30, n_covid: int = 30) -> list[list[int]]:
    # no pneumonia images, like the bundled data: its sensitivity is undefined
    return [[normal_ok, 0, n_normal - normal_ok], [0, 0, 0], [n_covid - covid_ok, 0, covid_ok]]


def _trained_attrs(acc: float, params: int, macs: int, test_ok: tuple[int, int], seconds: float) -> dict:
    test = metrics_dict(_cm(*test_ok), (0.0, 0.0), None)
    a, c = test["accuracy"], test["per_class"]["COVID-19"]["sensitivity"]
    test["accuracy_ci"] = [a - 9.0, min(100.0, a + 7.5)]
    test["covid_sensitivity_ci"] = [c - 14.0, min(100.0, c + 10.0)]
    val = metrics_dict(_cm(25, 25), (75.0, 92.0), (70.0, 96.0))
    val["accuracy"] = acc
    return {
        "params": params,
        "macs": macs,
        "flops": 2 * macs,
        "peak_activation_bytes": 123456,
        "complexity_size": 64,
        "constraints": [0.0, 0.0],
        "val_accuracy": acc,
        "netscore": netscore(acc, params, macs),
        "val_metrics": val,
        "test_metrics": test,
        "history": [{"epoch": 1, "loss": 0.7, "val_accuracy": acc, "lr": 5e-4, "seconds": seconds}],
        "best_epoch": 1,
        "epochs_run": 1,
        "train_wall_time_s": seconds - 1.0,
        "wall_time_s": seconds,
        "train_config": {"epochs": 1, "image_size": 32},
        "data_hash": "abc123",
        "data_sizes": {"train": 100, "val": 60, "test": 60},
        "status": "complete",
    }


# (val accuracy, params, MACs, (test normal correct, test covid correct)) of the search's trained candidates
SEARCH = [
    (80.0, 1_408_803, 32_250_000, (25, 24)),  # 0: the CT L prototype
    (82.0, 900_000, 20_000_000, (26, 25)),
    (75.0, 300_000, 8_000_000, (22, 23)),
    (70.0, 1_000_000, 25_000_000, (20, 22)),  # dominated by 1
    (84.0, 2_000_000, 40_000_000, (27, 26)),
    (78.0, 600_000, 15_000_000, (24, 24)),
    (74.0, 350_000, 9_000_000, (22, 22)),  # dominated by 2
]
BASELINES = [
    ("mobilenet_v2", "MobileNetV2", 78.0, 2_228_000, 25_500_000, (24, 23)),  # dominated by 1 and 5
    ("squeezenet1_1", "SqueezeNet 1.1", 72.0, 724_000, 22_600_000, (21, 22)),  # dominated by 1, 2, 5
    ("efficientnet_b0", "EfficientNet-B0", 86.0, 4_011_000, 32_600_000, (28, 27)),  # not dominated
]


# what ``search run`` stores about the data (the test set's 60 images are half of each class)
DATA = {
    "data_hash": "abc123",
    "data_sources": ["mini"],
    "data_sizes": {"train": 100, "val": 60, "test": 60},
    "majority_rate": {"train": 52.0, "val": 55.0, "test": 50.0},
}


def _add(study: optuna.Study, trial: Any, start: dt.datetime, seconds: float) -> None:
    trial.datetime_start = start
    if trial.state != TrialState.RUNNING:
        trial.datetime_complete = start + dt.timedelta(seconds=seconds)
    study.add_trial(trial)


# a model pruned from the CT L prototype (`search prune`), in the study's ":pruned" companion
PRUNED = ("CT L (pruned, from trial 0)", "pruned:trial 0", 79.0, 500_000, 11_000_000, (24, 23))


def fill_study(
    url: str,
    study_name: str = "t",
    *,
    running: bool = True,
    baselines: bool = True,
    pruned: bool = True,
    search_attrs: dict[int, dict] | None = None,
    baseline_epochs: int = 1,
    old_attrs: bool = True,
) -> optuna.Study:
    """A search study as `search run` leaves it (plus one running trial), its baselines (trained for
    ``baseline_epochs``; the search's trials for 1) and a pruned model. ``search_attrs`` adds user
    attrs to search trials by number. ``old_attrs``: the trial stopped early stores what versions
    before the rename stored (status "pruned")."""
    study = optuna.create_study(
        storage=url, study_name=study_name, directions=["maximize", "minimize", "minimize"]
    )
    study.set_user_attr("objective", "pareto")
    study.set_user_attr("kind", "search")
    study.set_user_attr("run_config", {"epochs": 1, "image_size": 32, "complexity_size": 64})
    study.set_user_attr("data", DATA)
    clock = T0
    for i, (acc, p, m, ok) in enumerate(SEARCH):
        attrs = {"kind": "search", "arch_id": f"a{i:09d}", "spec": {"name": f"cand{i}", "stages": [1, 2]}}
        attrs.update(_trained_attrs(acc, p, m, ok, 60.0 + i))
        if i == 0:
            attrs["origin"] = "prototype:ct-l"
        attrs.update((search_attrs or {}).get(i, {}))
        trial = create_trial(
            values=[acc, float(p), float(m)],
            params={"stem_width": 32 + i},
            distributions={"stem_width": IntDistribution(16, 64)},
            user_attrs=attrs,
        )
        _add(study, trial, clock, 60.0 + i)
        clock += dt.timedelta(seconds=61.0 + i)
    over = {"kind": "search", "arch_id": "over000000", "params": 9_000_000, "macs": 90_000_000}
    over.update(
        {"flops": 180_000_000, "complexity_size": 64, "constraints": [1.0, 0.0], "status": "infeasible"}
    )
    _add(study, create_trial(values=[0.0, 9e6, 9e7], user_attrs=over), clock, 1.0)
    clock += dt.timedelta(seconds=2)
    stopped = {
        "kind": "search",
        "arch_id": "stop000000",
        "params": 500_000,
        "macs": 12_000_000,
        "flops": 24_000_000,
    }
    stopped.update(
        {"complexity_size": 64, "status": "pruned", "pruned_val_accuracy": 55.0, "wall_time_s": 20.0}
    )
    stopped["prune_reason"] = "dominated by a finished candidate at epoch 1"
    if not old_attrs:
        stopped["status"] = "stopped_early"
        stopped["stopped_val_accuracy"] = stopped.pop("pruned_val_accuracy")
        stopped["stop_reason"] = stopped.pop("prune_reason")
    _add(study, create_trial(state=TrialState.PRUNED, user_attrs=stopped), clock, 20.0)
    clock += dt.timedelta(seconds=21)
    failed = {
        "kind": "search",
        "arch_id": "fail000000",
        "status": "failed",
        "fail_reason": "RunFailed: NaN loss",
    }
    _add(study, create_trial(state=TrialState.FAIL, user_attrs=failed), clock, 5.0)
    clock += dt.timedelta(seconds=6)
    if running:
        busy = {"kind": "search", "arch_id": "busy000000", "params": 700_000, "macs": 16_000_000}
        _add(study, create_trial(state=TrialState.RUNNING, user_attrs=busy), clock, 0.0)
    if baselines:
        bstudy = optuna.create_study(
            storage=url, study_name=f"{study_name}:baselines", directions=["maximize", "minimize", "minimize"]
        )
        bstudy.set_user_attr("kind", "baseline")
        for name, display, acc, p, m, ok in BASELINES:
            attrs = {"kind": "baseline", "baseline": name, "display_name": display, "arch_id": name}
            attrs.update(_trained_attrs(acc, p, m, ok, 90.0))
            attrs["train_config"] = {"epochs": baseline_epochs, "image_size": 32}
            _add(bstudy, create_trial(values=[acc, float(p), float(m)], user_attrs=attrs), clock, 90.0)
    if pruned:
        pstudy = optuna.create_study(
            storage=url, study_name=f"{study_name}:pruned", directions=["maximize", "minimize", "minimize"]
        )
        pstudy.set_user_attr("kind", "pruned")
        display, origin, acc, p, m, ok = PRUNED
        attrs = {"kind": "pruned", "origin": origin, "display_name": display, "arch_id": "prun000000"}
        attrs.update(_trained_attrs(acc, p, m, ok, 120.0))
        _add(pstudy, create_trial(values=[acc, float(p), float(m)], user_attrs=attrs), clock, 120.0)
    return study


# (role, display name, source trial, proxy accuracy, final runs, params, MACs) of a ``<study>:final``
FINAL = [
    ("candidate", "trial 1", 1, 82.0, (85.0, 84.0, 86.0), 900_000, 20_000_000),
    ("candidate", "trial 4", 4, 84.0, (88.0, 87.0, 89.0), 2_000_000, 40_000_000),
    ("candidate", "trial 5", 5, 78.0, (80.0, 79.0, 81.0), 600_000, 15_000_000),
    ("prototype", "CT L", 0, 80.0, (86.0, 85.5, 86.5), 1_408_803, 32_250_000),
    ("reference", "CT S", None, None, (82.0, 81.0, 83.0), 447_099, 9_500_000),
    ("baseline", "MobileNetV2", None, 78.0, (84.0, 83.0, 85.0), 2_228_000, 25_500_000),
]
# proxy order 78, 80, 82, 84 -> final 80, 86, 85, 88: 5 of 6 pairs concordant, Kendall tau-b 2/3
FINAL_TAU = 2 / 3


def fill_final(url: str, study_name: str = "t", epochs: int = 3) -> optuna.Study:
    """``<study>:final`` as ``search final`` leaves it (every model trained 3 times)."""
    from evaluators.uncertainty import Uncertain

    study = optuna.create_study(
        storage=url, study_name=f"{study_name}:final", directions=["maximize", "minimize", "minimize"]
    )
    study.set_user_attr("kind", "final")
    study.set_user_attr("search_study", study_name)
    study.set_user_attr("data", DATA)
    study.set_user_attr(
        "final_config", {"protocol": "final", "epochs": epochs, "image_size": 64, "repeats": 3, "cv_folds": 1}
    )
    for role, name, source, proxy, runs, p, m in FINAL:
        u = Uncertain.of(runs)
        acc = u.mean
        attrs = _trained_attrs(acc, p, m, (25, 25), 200.0)
        attrs.update(
            {
                "kind": "final",
                "role": role,
                "display_name": name,
                "source_trial": source,
                "proxy_val_accuracy": proxy,
                "arch_id": f"f-{name.replace(' ', '')}",
                "final_split": "test",
                "final_accuracy": acc,
                "final_accuracy_uncertainty": u.to_dict(),
                "final_netscore": netscore(acc, p, m),
                "train_config": {"epochs": epochs, "image_size": 64},
            }
        )
        trial = create_trial(values=[acc, float(p), float(m)], user_attrs=attrs)
        _add(study, trial, T0 + dt.timedelta(hours=1), 200.0)
    return study


# two baselines drawn almost on CT L (their labels would lie over each other's)
CROWDED = [("ResNet-18", 80.4, 1_420_000, 32_600_000), ("CT S", 79.7, 1_400_000, 31_900_000)]


def add_crowded_baselines(url: str, study_name: str = "t") -> None:
    base = optuna.load_study(study_name=f"{study_name}:baselines", storage=url)
    for name, acc, params, macs in CROWDED:
        attrs = {"kind": "baseline", "baseline": name, "display_name": name, "arch_id": name}
        attrs.update(_trained_attrs(acc, params, macs, (24, 24), 90.0))
        base.add_trial(create_trial(values=[acc, float(params), float(macs)], user_attrs=attrs))
