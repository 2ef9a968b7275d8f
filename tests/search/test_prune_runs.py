"""`search prune` end to end on the bundled data: trial, baseline and arch sources, what is stored."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import optuna
import pytest
import torch

from evaluators import profile
from search.cli import main
from search.driver.artifacts import load_weights, upload_weights
from search.driver.config import RunConfig
from search.driver.storage import artifact_store, open_storage
from search.driver.study import OBJECTIVES
from search.pruning.checkpoints import from_checkpoint, is_checkpoint
from search.pruning.runs import KIND_PRUNED, pruned_study_name
from space import ArchSpec, build, get_reference

pytest.importorskip("torch_pruning")
pytest.importorskip("onnxruntime")

SIZE = 32


@pytest.fixture(autouse=True)
def _cache(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COVIDNET_NAS_CACHE", str(tmp_path_factory.getbasetemp() / "image-cache"))
    optuna.logging.set_verbosity(optuna.logging.WARNING)


def _flags(out: Path, *extra: str) -> list[str]:
    return [
        "--quiet",
        "prune",
        "--out",
        str(out),
        "--study",
        "s",
        "--image-size",
        str(SIZE),
        "--complexity-size",
        "64",
        "--epochs",
        "1",
        "--finetune-epochs",
        "1",
        "--steps",
        "1",
        *extra,
    ]


def _pruned(out: Path) -> tuple[optuna.Study, Any]:
    study = optuna.load_study(study_name=pruned_study_name("s"), storage=f"sqlite:///{out / 'study.db'}")
    done = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    assert study.user_attrs["kind"] == KIND_PRUNED and len(done) == 1
    return study, done[0]


def _store_trial(out: Path, study_name: str, model: torch.nn.Module, attrs: dict[str, Any]) -> None:
    """A trained-looking trial as `search run` / `search baselines` store it (weights included)."""
    config = RunConfig.make(out=str(out), study="s", image_size=SIZE, complexity_size=64, epochs=1)
    study = optuna.create_study(
        storage=open_storage(config.storage_url),
        study_name=study_name,
        directions=OBJECTIVES["pareto"][1],
        load_if_exists=True,
    )
    study.set_user_attr("run_config", config.to_dict())
    study.set_user_attr("artifacts", config.artifacts_dir)
    trial = study.ask()
    path = out / f"w{trial.number}.pt"
    torch.save(model.state_dict(), path)
    p = profile(model, (3, 64, 64), memory=False)
    for k, v in {
        **attrs,
        "params": p.params,
        "macs": p.macs,
        "val_accuracy": 50.0,
        "status": "complete",
    }.items():
        trial.set_user_attr(k, v)
    trial.set_user_attr(
        "weights_artifact_id", upload_weights(artifact_store(config.artifacts_dir), trial, str(path))
    )
    study.tell(trial, [50.0, float(p.params), float(p.macs)])


def test_ct_l_pruned_to_the_ct_s_budget_is_stored_like_a_search_trial(tmp_path: Path, capsys: Any) -> None:
    target = profile(build(get_reference("ct-s")), (3, 64, 64), memory=False).macs
    assert main(_flags(tmp_path, "--arch", "ct-l", "--target-macs", str(target))) == 0
    printed = capsys.readouterr().out
    assert "pruned:arch ct-l" in printed and "covidnet-ct" not in printed and "'s:pruned'" in printed
    study, trial = _pruned(tmp_path)
    a = trial.user_attrs
    assert a["kind"] == "pruned" and a["origin"] == "pruned:arch ct-l" and a["status"] == "complete"
    assert a["prune_method"] == "magnitude" and a["prune_scope"] == "local" and a["target_macs"] == target
    assert a["prune_ratio"] == pytest.approx(1 - target / a["source"]["macs"])
    assert abs(a["macs"] - target) <= 0.02 * target and a["prune_checks"]["passed"]
    assert a["prune_checks"]["onnx"]["passed"] and a["prune_checks"]["finite"]
    for key in ("val_metrics", "test_metrics", "history", "netscore", "train_config", "data_hash", "flops"):
        assert a[key] is not None, key
    assert a["train_config"]["epochs"] == 1 and [h["prune_step"] for h in a["history"]] == [1]
    assert trial.values == [a["val_accuracy"], a["params"], a["macs"]]

    spec = ArchSpec.from_dict(a["spec"])  # the stored spec rebuilds to the stored size ...
    assert spec.arch_id == a["arch_id"] and spec.name == "ct-l-pruned"
    model = build(spec)
    p = profile(model, (3, 64, 64), memory=False)
    assert (p.params, p.macs) == (a["params"], a["macs"])
    model.load_state_dict(load_weights(study, trial))  # ... and loads the pruned weights, strictly
    with torch.no_grad():
        assert torch.isfinite(model.eval()(torch.rand(2, 3, SIZE, SIZE))).all()

    # `search export --pruned N` exports it (no need to know the ':pruned' companion study)
    dest = tmp_path / "exported"
    export = ["--quiet", "export", "--out", str(tmp_path), "--study", "s", "--pruned", str(trial.number)]
    assert main([*export, "--export-dir", str(dest), "--format", "pt,json", "--latency-repeats", "0"]) == 0
    card = json.loads((dest / "model.json").read_text())
    assert card["arch_id"] == a["arch_id"] and (dest / "weights.pt").is_file()
    assert main([*export, "--export-dir", str(dest), "--format", "json", "--latency-repeats", "0"]) == 2
    assert f"{dest} already exists;" in capsys.readouterr().err


def test_a_search_trial_pruned_with_taylor_importance(tmp_path: Path) -> None:
    spec = get_reference("ct-s")
    _store_trial(
        tmp_path, "s", build(spec), {"kind": "search", "spec": spec.to_dict(), "arch_id": spec.arch_id}
    )
    flags = _flags(
        tmp_path, "--trial", "0", "--target-ratio", "0.4", "--importance", "taylor", "--no-onnx-check"
    )
    assert main(flags) == 0
    study, trial = _pruned(tmp_path)
    a = trial.user_attrs
    assert a["origin"] == "pruned:trial 0" and a["source"]["trial"] == 0 and a["source"]["study"] == "s"
    from reports.collect import collect  # the report names it with its source

    labels = list(collect(f"sqlite:///{tmp_path / 'study.db'}", "s").of_kind("pruned")["label"])
    assert labels == [f"{a['display_name']} (from trial 0)"]
    assert a["prune_method"] == "taylor" and "onnx" not in a["prune_checks"]
    assert abs(a["macs"] - 0.6 * a["source"]["macs"]) <= 0.02 * 0.6 * a["source"]["macs"]
    build(ArchSpec.from_dict(a["spec"])).load_state_dict(load_weights(study, trial))


def test_a_trained_baseline_pruned_by_half_reloads_without_pickle(tmp_path: Path) -> None:
    from baselines import create_baseline

    builder = {"baseline": "mobilenet_v2", "num_classes": 3, "in_chans": 3}
    attrs = {"kind": "baseline", "baseline": "mobilenet_v2", "builder": builder, "arch_id": "mobilenet_v2"}
    _store_trial(tmp_path, "s:baselines", create_baseline("mobilenet_v2"), attrs)
    assert main(_flags(tmp_path, "--baseline", "mobilenet_v2", "--target-ratio", "0.5")) == 0
    study, trial = _pruned(tmp_path)
    a = trial.user_attrs
    assert a["origin"] == "pruned:baseline mobilenet_v2" and "spec" not in a
    assert a["builder"]["baseline"] == "mobilenet_v2" and a["arch_id"].startswith("mobilenet_v2-p")
    ckpt = load_weights(study, trial)  # torch.load(weights_only=True)
    assert is_checkpoint(ckpt) and ckpt["config"] == a["pruned_config"]
    model = from_checkpoint(ckpt)
    p = profile(model, (3, 64, 64), memory=False)
    assert (p.params, p.macs) == (a["params"], a["macs"])
    assert abs(a["macs"] - a["source"]["macs"] / 2) <= 0.02 * a["source"]["macs"] / 2
    # it exports like any trial: checkpoint weights.pt that rebuilds itself, ONNX with parity
    from search.export.bundle import ExportOptions, export_trial
    from search.export.load import rebuild

    images = torch.rand(4, 3, SIZE, SIZE)
    export_trial(study, trial, tmp_path / "exported", images, ExportOptions(latency_repeats=0))
    saved = torch.load(tmp_path / "exported" / "weights.pt", weights_only=True)
    again = rebuild({"baseline": "mobilenet_v2"}, saved)
    assert profile(again, (3, 64, 64), memory=False).params == a["params"]


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--trial", "7", "--target-ratio", "0.5"], "no study named 's'"),
        (["--baseline", "mobilenet_v2", "--target-ratio", "0.5"], "search baselines --only mobilenet_v2"),
        (["--arch", "nope", "--target-ratio", "0.5"], "no reference spec"),
        (["--arch", "ct-s", "--target-ratio", "0.5", "--steps", "0"], "--steps must be"),
    ],
)
def test_usage_errors_are_one_line(tmp_path: Path, capsys: Any, extra: list[str], message: str) -> None:
    assert main(_flags(tmp_path, *extra)) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_exactly_one_source_and_one_target(tmp_path: Path, capsys: Any) -> None:
    for extra in (["--trial", "1", "--arch", "ct-l", "--target-ratio", "0.5"], ["--arch", "ct-l"]):
        with pytest.raises(SystemExit) as e:
            main(_flags(tmp_path, *extra))
        assert e.value.code == 2
    assert "one of the arguments" in capsys.readouterr().err
