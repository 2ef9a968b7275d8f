"""Pruning on the same scale as the search (``search prune``): source, fine-tuning, checks, storage.

A pruned model is stored in the search's storage, in a study named ``<study>:pruned`` (beside
``<study>:baselines``): one COMPLETE trial per pruning run, with the attributes of a search trial
(``spec``/``arch_id``, params, MACs, metrics, history, NetScore, weights, training configuration,
data hash) plus ``kind="pruned"``, ``origin`` (``pruned:trial 3``, ``pruned:baseline mobilenet_v2``,
``pruned:arch ct-l``), ``prune_method``, ``prune_scope``, ``prune_ratio``, ``target_macs``,
``prune_steps``, ``prune_checks`` and ``source``. A pruned COVID-Net CT stores its ``ArchSpec`` and
a state dict; any other baseline stores ``pruned_config`` (channel counts) and a checkpoint that
``torch.load(weights_only=True)`` reads (``search.pruned_models``).
"""

from __future__ import annotations

import copy
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import optuna
import torch
from optuna.storages import BaseStorage
from optuna.trial import FrozenTrial, TrialState
from torch import nn

from search.driver.baselines import config_key
from search.driver.config import RunConfig
from search.driver.storage import optuna_quiet
from search.driver.study import OBJECTIVES, complete_candidates
from search.errors import RunFailed, UsageError
from space.errors import UserInputError

SUFFIX = ":pruned"
KIND_PRUNED = "pruned"
SOURCES = ("trial", "baseline", "arch")


def pruned_study_name(study: str) -> str:
    return study + SUFFIX


def open_pruned_study(storage: BaseStorage, study: str, artifacts: str | None = None) -> optuna.Study:
    """``<study>:pruned``, created on first use with the search's Pareto objectives."""
    names, directions = OBJECTIVES["pareto"]
    s = optuna.create_study(
        storage=storage,
        study_name=pruned_study_name(study),
        directions=directions,  # type: ignore[arg-type]
        load_if_exists=True,
    )
    if "kind" not in s.user_attrs:
        with optuna_quiet():
            s.set_metric_names(names)
        s.set_user_attr("kind", KIND_PRUNED)
        s.set_user_attr("search_study", study)
    if artifacts and not s.user_attrs.get("artifacts"):
        s.set_user_attr("artifacts", artifacts)
    return s


@dataclass(frozen=True)
class PruneRequest:
    """What ``search prune`` was asked: one source, one target, how to prune.

    Attributes:
        source: ``trial`` (a trial of the search study), ``baseline`` (a trained baseline of
            ``<study>:baselines``) or ``arch`` (a reference spec, spec file or baseline name,
            trained from scratch under the study's configuration first).
        name: the trial number, baseline name or architecture.
        target_macs: MACs to reach at the complexity size; or
        target_ratio: the fraction of the source's MACs to remove.
        importance: ``magnitude``, ``taylor`` or ``lamp``.
        scope: ``local`` or ``global`` (``None``: global for LAMP, else local).
        steps: pruning rounds, with fine-tuning after each.
        finetune_epochs: epochs of fine-tuning after each round (``None``: the study's ``epochs``).
    """

    source: str
    name: str
    target_macs: int | None = None
    target_ratio: float | None = None
    importance: str = "magnitude"
    scope: str | None = None
    steps: int = 3
    finetune_epochs: int | None = None

    def __post_init__(self) -> None:
        from search.pruning.core import IMPORTANCES, SCOPES

        if self.source not in SOURCES:
            raise UsageError(f"source must be one of {', '.join(SOURCES)}, got {self.source!r}")
        if self.importance not in IMPORTANCES:
            raise UsageError(f"--importance must be one of {', '.join(IMPORTANCES)}, got {self.importance!r}")
        if self.scope is not None and self.scope not in SCOPES:
            raise UsageError(f"--scope must be one of {', '.join(SCOPES)}, got {self.scope!r}")
        if isinstance(self.steps, bool) or not isinstance(self.steps, int) or self.steps < 1:
            raise UsageError(f"--steps must be an integer of at least 1, got {self.steps!r}")
        e = self.finetune_epochs
        if e is not None and (isinstance(e, bool) or not isinstance(e, int) or e < 1):
            raise UsageError(f"--finetune-epochs must be an integer of at least 1, got {e!r}")
        if (self.target_macs is None) == (self.target_ratio is None):
            raise UsageError("give exactly one of --target-macs and --target-ratio")

    @property
    def origin(self) -> str:
        return f"pruned:{self.source} {self.name}"


@dataclass
class Source:
    """The trained network to prune and where it came from."""

    model: nn.Module
    baseline: str | None
    info: dict[str, Any] = field(default_factory=dict)


# ----------------------------------------------------------------------------- the source
def _trial_model(study: optuna.Study, trial: FrozenTrial, artifacts: str) -> nn.Module:
    """The trial's trained network, rebuilt as an export rebuilds it (the study's artifact store first)."""
    from search.export.load import load_trial_model

    return load_trial_model(study, trial, study.user_attrs.get("artifacts") or artifacts)


def _load_study(storage: BaseStorage, name: str, hint: str) -> optuna.Study:
    try:
        return optuna.load_study(study_name=name, storage=storage)
    except KeyError:
        raise UsageError(f"no study named {name!r} in this storage; {hint}") from None


def _source_info(study: optuna.Study, trial: FrozenTrial) -> dict[str, Any]:
    a = trial.user_attrs
    keys = ("arch_id", "params", "macs", "val_accuracy", "netscore", "baseline")
    return {"study": study.study_name, "trial": trial.number, **{k: a[k] for k in keys if k in a}}


def load_source(request: PruneRequest, config: RunConfig, storage: BaseStorage, evaluator: Any) -> Source:
    """The trained network ``request`` names (``arch``: trained here under the study's config)."""
    if request.source == "trial":
        try:
            number = int(request.name)
        except ValueError:
            raise UsageError(f"--trial takes a trial number, got {request.name!r}") from None
        study = _load_study(storage, config.study, "run `search run` first or pass --study")
        trials = {t.number: t for t in study.get_trials(deepcopy=False)}
        t = trials.get(number)
        if t is None or t not in complete_candidates([t]):
            state = "absent" if t is None else t.user_attrs.get("status") or t.state.name.lower()
            raise UsageError(
                f"trial {number} of study {config.study!r} is {state}; only completed ones prune"
            )
        return Source(
            _trial_model(study, t, config.artifacts_dir), t.user_attrs.get("baseline"), _source_info(study, t)
        )
    if request.source == "baseline":
        from search.driver.baselines import baselines_study_name

        name = baselines_study_name(config.study)
        study = _load_study(storage, name, f"run `search baselines --only {request.name}` first")
        done = [
            t
            for t in complete_candidates(study.get_trials(deepcopy=False))
            if t.user_attrs.get("baseline") == request.name
        ]
        if not done:
            raise UsageError(
                f"baseline {request.name!r} has no completed training in {name!r}: run "
                f"`search baselines --only {request.name}` first, or prune it with --arch {request.name}"
            )
        t = done[-1]
        return Source(_trial_model(study, t, config.artifacts_dir), request.name, _source_info(study, t))
    model, baseline = build_arch(request.name)
    outcome = evaluator.train_model(model, f"source-{request.name}")
    info = {"arch": request.name, "val_accuracy": outcome.val_accuracy, "trained_here": True}
    if baseline:
        info["baseline"] = baseline
    spec = getattr(model, "spec", None)
    if spec is not None:
        info["arch_id"] = spec.arch_id
    return Source(model.cpu(), baseline, info)


def build_arch(name: str) -> tuple[nn.Module, str | None]:
    """A fresh network: a reference spec or spec file (``ct-l``, ``spec.json``), else a baseline."""
    from baselines import BASELINES, create_baseline
    from space import REFERENCES, build, load_spec

    if name in REFERENCES or name.endswith(".json") or Path(name).is_file():
        return build(load_spec(name), 3), None
    if name in BASELINES:
        return create_baseline(name, num_classes=3, in_chans=3), name
    raise UsageError(
        f"--arch {name!r} is no reference spec ({', '.join(REFERENCES.names())}), spec file or "
        f"baseline ({', '.join(BASELINES.names())})"
    )


# ----------------------------------------------------------------------------- data for pruning
def training_batches(evaluator: Any, count: int = 4) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """``count`` batches of the study's training images as training sees them (no augmentation):
    the gradients of Taylor importance."""
    from evaluators.data.cache import load_arrays

    tc = evaluator.train_config
    arrays = load_arrays(evaluator.dataset, "train", tc.image_size, 3, evaluator.cache_dir)
    order = torch.randperm(len(arrays), generator=torch.Generator().manual_seed(tc.seed))
    chunks = order[: count * tc.batch_size].split(tc.batch_size)
    return [(arrays.batch(idx, 3), arrays.labels[idx]) for idx in chunks if idx.numel() >= 2]


def check_images(evaluator: Any, channels: int, count: int = 16) -> torch.Tensor:
    """Real validation images (spread over the split) for the output and ONNX checks."""
    from evaluators.data.cache import load_arrays

    tc = evaluator.train_config
    arrays = load_arrays(
        evaluator.dataset, "val", tc.image_size, channels, evaluator.cache_dir, progress=False
    )
    n = min(count, len(arrays))
    index = torch.linspace(0, len(arrays) - 1, n).round().long().unique()
    return arrays.batch(index, channels)


# ----------------------------------------------------------------------------- the run
@dataclass
class PruneOutcome:
    trial: FrozenTrial
    study: str
    result: Any
    checks: dict[str, Any]


def _fine_tuner(evaluator: Any, config: RunConfig, epochs: int, rounds: list[Any]) -> Callable[..., Any]:
    """Fine-tuning through ``TrainingEvaluator.train_model`` with the study's training settings and
    ``epochs`` epochs; the network keeps its best weights."""
    tuner = copy.copy(evaluator)
    tuner.train_config = replace(config.train, epochs=epochs)
    tuner.on_epoch_progress = evaluator.on_epoch_progress

    def finetune(model: nn.Module, step: int) -> Any:
        outcome = tuner.train_model(model, f"prune-step{step}")
        rounds.append(outcome)
        return outcome

    return finetune


def _history(rounds: list[Any]) -> list[dict[str, Any]]:
    out = []
    for k, o in enumerate(rounds, start=1):
        out += [{**row, "prune_step": k} for row in o.attrs.get("history", [])]
    return out


def _source_attrs(source: Source, macs: int, params: int) -> dict[str, Any]:
    """What the pruned model came from, its complexity at the study's size and its NetScore."""
    from evaluators import netscore

    out = {**source.info, "macs": macs, "params": params}
    if out.get("val_accuracy") is not None:
        out["netscore"] = netscore(max(float(out["val_accuracy"]), 1e-3), params, macs)
    return out


def run_prune(
    request: PruneRequest,
    config: RunConfig,
    storage: BaseStorage,
    evaluator: Any,
    upload: Callable[[Any, str], str] | None,
    *,
    on_step: Callable[[Any], None] | None = None,
    onnx_check: bool = True,
) -> PruneOutcome:
    """Prune the source of ``request`` to its target, fine-tuning between rounds, check the result
    and store it in ``<study>:pruned``.

    Args:
        evaluator: a ``search.driver.objective.TrainingEvaluator`` on the study's data and
            configuration.
        upload: stores a weights file for a trial, returning the artifact id.

    Raises:
        RunFailed: the checks failed (the trial is stored as failed with the reason).
    """
    from evaluators import count_params
    from search.pruning.core import macs_of, target_from

    size = config.complexity_size
    source = load_source(request, config, storage, evaluator)
    before = macs_of(source.model, size)
    target = target_from(before, request.target_macs, request.target_ratio)
    epochs = request.finetune_epochs or config.train.epochs
    study = open_pruned_study(storage, config.study, config.artifacts_dir)
    with optuna_quiet():
        trial = study.ask()
    start = time.time()
    base: dict[str, Any] = {
        "kind": KIND_PRUNED,
        "origin": request.origin,
        "prune_method": request.importance,
        "prune_ratio": 1.0 - target / before,
        "target_macs": target,
        "finetune_epochs": epochs,
        "source": _source_attrs(source, before, count_params(source.model)),
        "config_key": config_key(config, evaluator.data_attrs()["data_hash"]),
        "complexity_size": size,
    }
    for k, v in base.items():
        trial.set_user_attr(k, v)
    tmp = tempfile.TemporaryDirectory(prefix="covidnet-nas-prune-")
    try:
        rounds: list[Any] = []
        result = _prune(request, source, target, size, evaluator, config, epochs, rounds, on_step)
        trial.set_user_attr("prune_scope", result.scope)
        trial.set_user_attr("prune_steps", [s.to_dict() for s in result.steps])
        weights = Path(tmp.name) / "pruned.pt"
        frozen, checks = _check_and_store(
            study,
            trial,
            result,
            source,
            target,
            config,
            evaluator,
            rounds,
            weights,
            upload,
            onnx_check,
            start,
        )
    except KeyboardInterrupt:
        trial.set_user_attr("status", "interrupted")
        study.tell(trial, state=TrialState.FAIL)
        raise
    except (RunFailed, UserInputError, RuntimeError, ValueError) as e:
        trial.set_user_attr("status", "failed")
        trial.set_user_attr("fail_reason", f"{type(e).__name__}: {e}"[:2000])
        study.tell(trial, state=TrialState.FAIL)
        raise
    finally:
        tmp.cleanup()
    return PruneOutcome(frozen, study.study_name, result, checks)


def _prune(
    request: PruneRequest,
    source: Source,
    target: int,
    size: int,
    evaluator: Any,
    config: RunConfig,
    epochs: int,
    rounds: list[Any],
    on_step: Callable[[Any], None] | None,
) -> Any:
    """The pruning rounds, each fine-tuned (its outcome appended to ``rounds``)."""
    from search.pruning.core import accumulate_gradients, prune_to_target

    batches = training_batches(evaluator) if request.importance == "taylor" else []
    return prune_to_target(
        source.model,
        target,
        size=size,
        importance=request.importance,
        scope=request.scope,
        steps=request.steps,
        finetune=_fine_tuner(evaluator, config, epochs, rounds),
        gradients=(lambda m: accumulate_gradients(m, batches)) if batches else None,
        on_step=on_step,
    )


def _check_and_store(
    study: optuna.Study,
    trial: Any,
    result: Any,
    source: Source,
    target: int,
    config: RunConfig,
    evaluator: Any,
    rounds: list[Any],
    weights: Path,
    upload: Callable[[Any, str], str] | None,
    onnx_check: bool,
    start: float,
) -> tuple[FrozenTrial, dict[str, Any]]:
    """Write the stored form, check it (MACs, finite outputs, ONNX parity), and complete the trial
    with its complexity, last round's metrics and the rounds' history."""
    from evaluators import netscore, profile
    from evaluators.device import input_channels
    from search.pruning.checkpoints import stored_form

    size = config.complexity_size
    model, attrs = stored_form(result.model, source.baseline, weights)
    for k, v in attrs.items():
        trial.set_user_attr(k, v)
    images = check_images(evaluator, input_channels(model))
    checks = run_checks(model, target, size, images, onnx=onnx_check)
    trial.set_user_attr("prune_checks", checks)
    if not checks["passed"]:
        raise RunFailed(f"the pruned model failed its checks: {checks['failures']}")
    prof = profile(model, (input_channels(model), size, size))
    last = rounds[-1]
    final = {
        **last.attrs,
        "params": prof.params,
        "macs": prof.macs,
        "flops": prof.flops,
        "peak_activation_bytes": prof.peak_activation_bytes,
        "constraints": (
            float(prof.params - config.max_params) if config.max_params else 0.0,
            float(prof.macs - config.max_macs) if config.max_macs else 0.0,
        ),
        "history": _history(rounds),
        "epochs_run": sum(int(o.attrs.get("epochs_run", 0)) for o in rounds),
        "train_wall_time_s": sum(float(o.attrs.get("train_wall_time_s", 0.0)) for o in rounds),
        "val_accuracy": last.val_accuracy,
        "netscore": netscore(max(last.val_accuracy, 1e-3), prof.params, prof.macs),
    }
    for k, v in final.items():
        trial.set_user_attr(k, v)
    if upload is not None:
        trial.set_user_attr("weights_artifact_id", upload(trial, str(weights)))
    trial.set_user_attr("status", "complete")
    trial.set_user_attr("wall_time_s", time.time() - start)
    frozen = study.tell(trial, [last.val_accuracy, float(prof.params), float(prof.macs)])
    return frozen, checks


def run_checks(
    model: nn.Module, target: int, size: int, images: torch.Tensor, *, onnx: bool = True
) -> dict[str, Any]:
    """MACs within 2 % of the target, finite outputs on real images, ONNX export with parity."""
    from search.export.onnx import check_parity, export_onnx
    from search.pruning.core import TOLERANCE, is_finite, macs_of, within

    measured = macs_of(model, size)
    out: dict[str, Any] = {
        "macs": measured,
        "target_macs": target,
        "tolerance": TOLERANCE,
        "macs_within_target": within(measured, target),
        "finite": is_finite(model, images),
    }
    if onnx:
        with tempfile.TemporaryDirectory(prefix="covidnet-nas-prune-") as tmp:
            path = Path(tmp) / "model.onnx"
            export_onnx(model.eval(), path, tuple(int(v) for v in images.shape[1:]))
            out["onnx"] = check_parity(path, model, images).to_dict()
    failures = [k for k in ("macs_within_target", "finite") if not out[k]]
    if onnx and not out["onnx"]["passed"]:
        failures.append("onnx_parity")
    out["failures"] = failures
    out["passed"] = not failures
    return out
