"""The explainability audit of a study's trial or of an exported model: load, explain, write, store.

``search explain`` and ``search report`` both come here. The model is rebuilt as ``search export``
rebuilds it (``search.export``): from a trial's stored spec (or baseline builder) and weights, or
from an export folder's ``spec.json`` + ``weights.pt`` (attribution needs PyTorch, so
``model.onnx`` alone is not enough). The measurement itself is ``evaluators.explain``; the pictures
are ``reports.explain_grid``.

Where the summary is stored: Optuna refuses to change a finished trial's user attrs
(``UpdateFinishedTrialError``), so the summary of trial N lives in the study's user attr
``explain_summary:N`` as ``{method: summary}``; ``stored_summaries`` reads it (and a trial attr
``explain_summary``, should a future driver write one while the trial runs).
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import FrozenTrial
from torch import nn

from evaluators.data.classes import CLASS_NAMES
from search.errors import UsageError

ATTR = "explain_summary"
GRID_IMAGES = 8  # images in the grid of `search explain` (most attribution outside first)


@dataclass
class LoadedModel:
    """A network ready to explain.

    Attributes:
        model: the network with its weights, in eval mode.
        layer: Grad-CAM's layer (the last convolutional stage), ``None`` where unknown.
        image_size: the side it was trained at.
        name: what to call it (``trial 3 (a1b2c3d4e5)``, or the export folder).
        data_dirs: the data it was trained on, where recorded (for ``--split`` without ``--data``).
        class_names: the classes' display names its data gave (``classes.txt``), else COVIDx CT's.
    """

    model: nn.Module
    layer: nn.Module | None
    image_size: int
    name: str
    data_dirs: list[str] | None = None
    class_names: tuple[str, ...] = CLASS_NAMES


def study_attr_key(trial: FrozenTrial) -> str:
    return f"{ATTR}:{trial.number}"


def _layer(model: nn.Module, description: dict[str, Any]) -> nn.Module | None:
    stage = getattr(model, "last_conv_stage", None)
    if isinstance(stage, nn.Module):
        return stage
    if description.get("baseline"):
        from baselines import last_conv_stage

        return last_conv_stage(model, str(description["baseline"]))
    return None


def _size(value: Any, where: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 8:
        raise UsageError(f"image size must be an integer of at least 8, got {value!r} ({where})")
    return value


def load_exported(folder: str | Path, image_size: int | None = None) -> LoadedModel:
    """An export folder of ``search export``: ``spec.json`` + ``weights.pt`` (+ ``model.json``)."""
    from search.export.load import load_exported, read_card

    path = Path(folder)
    if not path.is_dir():
        raise UsageError(f"{path}: no such model folder")
    spec, weights = path / "spec.json", path / "weights.pt"
    if not spec.is_file() or not weights.is_file():
        has_onnx = (path / "model.onnx").is_file()
        missing = " and ".join(p.name for p in (spec, weights) if not p.is_file())
        hint = (
            "; attribution needs PyTorch: export with --format onnx,pt,json"
            if has_onnx
            else " (not an export of `search export`)"
        )
        raise UsageError(f"{path}: no {missing} in this folder{hint}")
    card = read_card(path)
    architecture = card.get("architecture") if isinstance(card.get("architecture"), dict) else None
    model = load_exported(spec, weights, architecture)
    description = architecture or json.loads(spec.read_text())
    size = image_size or (card.get("input") or {}).get("image_size")
    if not size:
        raise UsageError(f"no model.json in {path} says the input size; pass --image-size N")
    data_dirs = (card.get("data") or {}).get("data_dirs") or None
    names = tuple((card.get("input") or {}).get("class_names") or CLASS_NAMES)
    return LoadedModel(
        model.eval(), _layer(model, description), _size(size, str(path)), str(path), data_dirs, names
    )


def load_trial(
    study: optuna.Study, trial: FrozenTrial, artifacts: str | None = None, image_size: int | None = None
) -> LoadedModel:
    """A trial's network with its stored weights (as ``search export`` rebuilds it)."""
    from search.export.load import description_of, image_size_of, load_trial_model

    model = load_trial_model(study, trial, artifacts)
    size = image_size or image_size_of(study, trial)
    data_dirs = (study.user_attrs.get("run_config") or {}).get("data") or None
    name = f"trial {trial.number} ({trial.user_attrs.get('arch_id', '?')})"
    from search.export.bundle import class_names_of

    names = class_names_of(study, trial)
    return LoadedModel(model, _layer(model, description_of(trial)), _size(size, name), name, data_dirs, names)


def split_inputs(data: Sequence[str | Path] | None, split: str, n: int | None) -> tuple[list[Any], str]:
    """``n`` images of ``split`` of the data folders (classes in turn) and a description."""
    from evaluators.data.covidx import load_dataset
    from evaluators.explain import inputs_from_samples

    dataset = load_dataset(list(data) if data else None, splits=(split,))
    inputs = inputs_from_samples(dataset.split(split), n)
    where = ", ".join(str(d) for d in dataset.dirs)
    return inputs, f"{len(inputs)} images of the {split} split of {where}"


@dataclass(frozen=True)
class ExplainRun:
    """What ``write_explanations`` wrote."""

    results: list[Any]
    summary: Any  # evaluators.explain.ExplainSummary (at most SUMMARY_IMAGES listed)
    out_dir: Path
    grid: Path
    overlays: list[Path]
    json_path: Path


def _slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", Path(name).stem)[:60] or "image"


def run_explain(
    loaded: LoadedModel,
    inputs: Sequence[Any],
    *,
    method: str = "gradcam",
    source: str = "",
    steps: int | None = None,
    device: str = "cpu",
    on_image: Callable[[Any], None] | None = None,
) -> tuple[list[Any], Any]:
    """Explain ``inputs`` with ``loaded``; returns the per-image results and the ``ExplainSummary``."""
    from evaluators.device import resolve_device
    from evaluators.explain import IG_STEPS, explain_images, summarize

    if not inputs:
        raise UsageError("no images to explain")
    try:
        dev = resolve_device(device)
    except ValueError as e:
        raise UsageError(str(e)) from None
    results = explain_images(
        loaded.model,
        inputs,
        method=method,
        image_size=loaded.image_size,
        layer=loaded.layer,
        steps=steps or IG_STEPS,
        device=dev,
        on_image=on_image,
        class_names=loaded.class_names,
    )
    return results, summarize(results, loaded.image_size, source)


def write_explanations(
    loaded: LoadedModel,
    results: Sequence[Any],
    summary: Any,
    out_dir: str | Path,
    grid_images: int = GRID_IMAGES,
) -> ExplainRun:
    """Write ``overlays/NNN-<image>.png`` (most attribution outside first), ``grid.png`` (the first
    ``grid_images`` of them) and ``explain.json`` (the summary and every image)."""
    from evaluators.explain import order_most_outside, summarize
    from reports.explain_grid import grid_title, save_grid, save_overlay

    ordered = order_most_outside(results)
    out = Path(out_dir)
    (out / "overlays").mkdir(parents=True, exist_ok=True)
    overlays = [
        save_overlay(r, out / "overlays" / f"{rank:03d}-{_slug(r.name)}.png")
        for rank, r in enumerate(ordered, start=1)
    ]
    grid = save_grid(ordered[: max(1, grid_images)], out / "grid.png", grid_title(loaded.name, summary))
    full = summarize(results, loaded.image_size, summary.source, keep=len(results))
    doc = {
        "model": loaded.name,
        "method": summary.method,
        "image_size": loaded.image_size,
        "view": "the whole slice resized to image_size, the body box mapped into it (evaluators.explain)",
        "summary": full.to_dict(),
        "images": [r.to_dict() for r in ordered],
    }
    json_path = out / "explain.json"
    json_path.write_text(json.dumps(doc, indent=2) + "\n")
    return ExplainRun(list(results), summary, out, grid, overlays, json_path)


def store_summary(study: optuna.Study, trial: FrozenTrial, summary: Any) -> str:
    """Keep ``summary`` with the trial (in the study's attr ``explain_summary:N``, see the module
    docstring); returns the attr's name."""
    key = study_attr_key(trial)
    current = dict(study.user_attrs.get(key) or {})
    current[summary.method] = summary.to_dict()
    study.set_user_attr(key, current)
    return key


def stored_summaries(study: optuna.Study, trial: FrozenTrial) -> dict[str, dict[str, Any]]:
    """Method -> stored summary dict of ``trial`` (empty where it was never explained)."""
    out = dict(trial.user_attrs.get(ATTR) or {})
    out.update(study.user_attrs.get(study_attr_key(trial)) or {})
    return out


def explain_for_report(
    study: optuna.Study,
    trial: FrozenTrial,
    data: Sequence[str | Path] | None,
    n: int,
    out_dir: str | Path,
    *,
    method: str = "gradcam",
    artifacts: str | None = None,
    stem: str | None = None,
    device: str = "cpu",
    store: bool = False,
) -> tuple[Path, Any]:
    """The report's hook: explain ``n`` test images of ``data`` (``None``: the study's data) with
    ``trial``'s model and draw them as one grid ``<stem>.png`` in ``out_dir``.

    Args:
        store: also keep the summary with the trial (``store_summary``); a report only reads.

    Returns:
        The grid's path and the ``ExplainSummary``.
    """
    from evaluators.explain import order_most_outside
    from reports.explain_grid import grid_title, save_grid

    loaded = load_trial(study, trial, artifacts)
    inputs, source = split_inputs(data or loaded.data_dirs, "test", n)
    results, summary = run_explain(loaded, inputs, method=method, source=source, device=device)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    grid = save_grid(
        order_most_outside(results),
        out / f"{stem or f'explain_trial{trial.number}'}.png",
        grid_title(loaded.name, summary),
    )
    if store:
        store_summary(study, trial, summary)
    return grid, summary


def report_explainer(
    storage: Any,
    study_name: str,
    *,
    n: int = 4,
    method: str = "gradcam",
    device: str = "cpu",
    on_skip: Callable[[str], None] | None = None,
) -> Callable[[Any, Path], list[Any]]:
    """For ``reports.build.build_report(explain=...)``: given the report's table rows (with their
    ``role``), explain the best-NetScore candidate and CT L on ``n`` test images each and return
    ``ExplainEntry`` rows.

    Args:
        on_skip: called with one line where a model cannot be explained (no stored weights, the
            data or the ``[explain]`` extra missing), which is then left out; without it, raise.
    """
    from reports.explain_grid import ExplainEntry
    from search.errors import RunFailed

    def explain(rows: Any, out_dir: Path) -> list[Any]:
        study = optuna.load_study(study_name=study_name, storage=storage)
        by_number = {t.number: t for t in study.get_trials(deepcopy=False)}
        entries = []
        for _, row in rows.iterrows():
            roles = [r.strip() for r in str(row.get("role", "")).split(",")]
            wanted = [r for r in roles if r == "best NetScore" or r.startswith("CT L")]
            if not wanted or row.get("study") != study_name or int(row["number"]) not in by_number:
                continue
            trial = by_number[int(row["number"])]
            try:
                grid, summary = explain_for_report(
                    study, trial, None, n, out_dir, method=method, device=device
                )
            except (ImportError, ValueError, UsageError, RunFailed) as e:
                if on_skip is None:
                    raise
                on_skip(f"explainability audit of trial {trial.number} skipped: {e}")
                continue
            entries.append(
                ExplainEntry(
                    label=str(row.get("label") or f"trial {trial.number}"),
                    role=", ".join(wanted),
                    number=trial.number,
                    arch_id=str(row.get("arch_id") or ""),
                    test_accuracy=_num(row.get("test_accuracy")),
                    val_accuracy=_num(row.get("val_accuracy")),
                    summary=summary,
                    grid=grid.name,
                )
            )
        return entries

    return explain


def _num(v: Any) -> float | None:
    try:
        f = float(v)
    except (TypeError, ValueError):
        return None
    return f if f == f else None
