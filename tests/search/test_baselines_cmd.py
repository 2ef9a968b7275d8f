"""`search baselines`: trained under the search's configuration, stored like search trials, skipped
when already done."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import optuna
import pytest

from search.cli import main
from search.driver.artifacts import load_weights
from search.export.load import rebuild

ATTRS = (
    "kind",
    "baseline",
    "display_name",
    "config_key",
    "params",
    "macs",
    "flops",
    "val_accuracy",
    "val_accuracy_uncertainty",
    "netscore",
    "val_metrics",
    "test_metrics",
    "history",
    "train_config",
    "data_hash",
    "weights_artifact_id",
)


@pytest.fixture(autouse=True)
def _cache(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COVIDNET_NAS_CACHE", str(tmp_path_factory.getbasetemp() / "image-cache"))


def test_baselines_are_recorded_with_every_attribute_and_a_rerun_trains_nothing(
    tmp_path: Path, capsys: Any
) -> None:
    url = f"sqlite:///{tmp_path / 'b.db'}"
    argv = ["--quiet", "baselines", "--only", "mobilenet_v2,nasnet_a_mobile", "--epochs", "1"]
    argv += ["--image-size", "32", "--complexity-size", "64", "--storage", url, "--study", "t"]
    argv += ["--out", str(tmp_path), "--artifacts", str(tmp_path / "art")]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "MobileNetV2" in out and "NASNet-A-Mobile" in out and "NetScore" in out
    study = optuna.load_study(study_name="t:baselines", storage=url)
    done = [t for t in study.trials if t.state.name == "COMPLETE"]
    assert sorted(t.user_attrs["baseline"] for t in done) == ["mobilenet_v2", "nasnet_a_mobile"]
    for t in done:
        missing = [k for k in ATTRS if k not in t.user_attrs]
        assert not missing, missing
        assert t.user_attrs["kind"] == "baseline" and t.user_attrs["train_config"]["epochs"] == 1
        model = rebuild(t.user_attrs["builder"], load_weights(study, t))
        assert sum(p.numel() for p in model.parameters()) == t.user_attrs["params"]

    assert main(argv) == 0
    assert capsys.readouterr().out.count("already trained under this configuration") == 2
    assert len(optuna.load_study(study_name="t:baselines", storage=url).trials) == 2

    # another training configuration is another baseline record
    assert main([*argv[:5], "2", *argv[6:], "--only", "mobilenet_v2"]) == 0
    assert len(optuna.load_study(study_name="t:baselines", storage=url).trials) == 3


def test_unknown_baseline_suggests_the_closest(tmp_path: Path, capsys: Any) -> None:
    assert main(["baselines", "--only", "mobilenet_v3", "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "unknown baseline 'mobilenet_v3'; did you mean 'mobilenet_v2'?" in err
