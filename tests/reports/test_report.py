"""A report built from a stored study: the numbers in its tables are the stored ones, its Pareto set
is the brute-force one, and every file its index.html refers to exists."""

from __future__ import annotations

import json
import math
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import optuna
import pandas as pd
import pytest

from reports.build import NoCompletedTrials, build_report
from reports.collect import StudyNotFound, collect
from reports.pareto import Normaliser, hypervolume
from search.cli import main
from tests.reports.studies import BASELINES, PRUNED, SEARCH, fill_study

CLASSES = ("Normal", "Pneumonia", "COVID-19")


def _stored(url: str) -> dict[tuple[str, int], dict[str, Any]]:
    out = {}
    for name in ("t", "t:baselines", "t:pruned"):
        for t in optuna.load_study(study_name=name, storage=url).trials:
            out[(name, t.number)] = dict(t.user_attrs)
    return out


def _by_label(url: str) -> dict[str, dict[str, Any]]:
    out = {}
    for (study, number), a in _stored(url).items():
        if study.endswith((":baselines", ":pruned")):
            out[a["display_name"]] = a
        elif a.get("origin") == "prototype:ct-l":
            out[f"CT L (prototype, #{number})"] = a
        else:
            out[f"#{number} {a['arch_id']}"] = a
    return out


def _brute_pareto(url: str) -> set[int]:
    cands = [
        (n, (a["val_accuracy"], a["params"], a["macs"]))
        for (s, n), a in _stored(url).items()
        if s == "t" and a.get("status") == "complete"
    ]
    front = set()
    for n, p in cands:
        if not any(q[0] >= p[0] and q[1] <= p[1] and q[2] <= p[2] and q != p for _, q in cands):
            front.add(n)
    return front


def test_collect_reads_every_trial_of_the_study_and_its_baselines(filled: str) -> None:
    c = collect(filled, "t")
    assert c.companions == ["t:baselines", "t:pruned"]
    assert len(c.frame) == len(SEARCH) + 4 + len(BASELINES) + 1  # infeasible, stopped, failed, running
    assert list(c.of_kind("pruned")["label"]) == [PRUNED[0]]
    counts = c.counts()
    assert counts["complete"] == len(SEARCH) and counts["running"] == 1
    assert counts["infeasible"] == counts["stopped_early"] == counts["failed"] == 1
    assert sorted(c.of_kind("baseline")["label"]) == sorted(b[1] for b in BASELINES)
    assert len(c.candidates) == len(SEARCH)
    running = c.frame[c.frame["status"] == "running"].iloc[0]
    assert not running["measured"] and running["params"] == 700_000
    with pytest.raises(StudyNotFound, match="studies here: t, t:baselines, t:pruned"):
        collect(filled, "nope")


def test_the_report_folder_has_every_file(built: tuple[Path, str, Any]) -> None:
    out, _, report = built
    names = {p.name for p in report.files}
    for stem in ("pareto_macs", "pareto_params", "progress"):
        assert {f"{stem}.png", f"{stem}.svg"} <= names
    for stem in ("table3", "table4", "table5", "tradeoff"):
        assert {f"{stem}.md", f"{stem}.csv", f"{stem}.html"} <= names
    assert {"index.html", "interactive.html", "trials.csv", "report.json", "report.md"} <= names
    for p in report.files:
        assert p.is_file() and p.stat().st_size > 0, p
    assert (out / "pareto_macs.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "<svg" in (out / "pareto_macs.svg").read_text()


def test_pareto_set_is_the_brute_force_one(built: tuple[Path, str, Any]) -> None:
    out, url, report = built
    assert set(report.pareto_numbers) == _brute_pareto(url)
    t3 = pd.read_csv(out / "table3.csv")
    on_front = t3[t3["role"].str.contains("Pareto")]
    assert set(on_front["trial"]) == _brute_pareto(url)
    assert json.loads((out / "report.json").read_text())["pareto_trials"] == report.pareto_numbers


def test_table3_numbers_are_the_stored_ones(built: tuple[Path, str, Any]) -> None:
    out, url, _ = built
    stored = _by_label(url)
    t3 = pd.read_csv(out / "table3.csv")
    # the synthetic study is at 64 px: MACs below 0.1 G are reported in M
    assert "MACs (M)" in t3.columns and "FLOPs (M)" in t3.columns
    assert set(t3["model"]) >= {b[1] for b in BASELINES} | {"CT L (prototype, #0)", PRUNED[0]}
    assert t3.set_index("model").loc[PRUNED[0], "role"] == "pruned"
    chance = t3.set_index("model").loc["majority class (constant)"]
    assert chance["val accuracy (%)"] == 55.0 and chance["test accuracy (%)"] == 50.0  # stored data attrs
    t3 = t3[t3["model"] != "majority class (constant)"]
    for _, row in t3.iterrows():
        a = stored[row["model"]]
        assert row["params (M)"] == pytest.approx(a["params"] / 1e6, abs=1e-6)
        assert row["MACs (M)"] == pytest.approx(a["macs"] / 1e6, abs=1e-6)
        assert row["FLOPs (M)"] == pytest.approx(a["flops"] / 1e6, abs=1e-6)
        assert row["val accuracy (%)"] == pytest.approx(a["val_accuracy"])
        assert row["NetScore"] == pytest.approx(a["netscore"])
        test = a["test_metrics"]
        assert row["test accuracy (%)"] == pytest.approx(test["accuracy"])
        assert row["test accuracy (%) 95% CI low"] == pytest.approx(test["accuracy_ci"][0])
        assert row["test accuracy (%) 95% CI high"] == pytest.approx(test["accuracy_ci"][1])
    best = max((a["netscore"], label) for label, a in stored.items() if a.get("status") == "complete")[1]
    assert "best NetScore" in t3.set_index("model").loc[best, "role"]
    md = (out / "table3.md").read_text()
    assert md.count("\n| ") == len(t3) + 3  # header, rule, one line a row, the chance row


def test_tables_4_and_5_are_the_stored_per_class_metrics_with_na(built: tuple[Path, str, Any]) -> None:
    out, url, _ = built
    stored = _by_label(url)
    t4 = pd.read_csv(out / "table4.csv")
    t5 = pd.read_csv(out / "table5.csv")
    raw4 = pd.read_csv(out / "table4.csv", keep_default_na=False)
    for table, metrics in ((t4, ("sensitivity", "ppv")), (t5, ("specificity", "npv"))):
        for _, row in table.iterrows():
            per_class = stored[row["model"]]["test_metrics"]["per_class"]
            for metric in metrics:
                for cls in CLASSES:
                    header = f"{'PPV' if metric == 'ppv' else 'NPV' if metric == 'npv' else metric} {cls} (%)"
                    # a class with no images has no one-vs-rest metric at all (specificity and NPV too)
                    want = per_class[cls][metric] if per_class[cls]["support"] else None
                    got = row[header]
                    if want is None:
                        assert math.isnan(got), (row["model"], header)
                    else:
                        assert got == pytest.approx(want), (row["model"], header)
    assert t4.iloc[0]["sensitivity COVID-19 (%) 95% CI low"] == pytest.approx(
        stored[t4.iloc[0]["model"]]["test_metrics"]["covid_sensitivity_ci"][0]
    )
    # no pneumonia images: undefined, written "n/a" (never 0, never a crash)
    assert set(raw4["sensitivity Pneumonia (%)"]) == {"n/a"}
    raw5 = pd.read_csv(out / "table5.csv", keep_default_na=False)
    assert set(raw5["specificity Pneumonia (%)"]) == set(raw5["NPV Pneumonia (%)"]) == {"n/a"}  # not 100.0
    assert "n/a" in (out / "table4.md").read_text()
    assert '<td class="num na">n/a</td>' in (out / "table4.html").read_text()


def test_tradeoff_table_against_brute_force(built: tuple[Path, str, Any]) -> None:
    out, url, _ = built
    stored = _stored(url)
    # found candidates: the search's trained ones and the pruned models
    cands = {
        (a["display_name"] if s == "t:pruned" else f"#{n} {a['arch_id']}"): a
        for (s, n), a in stored.items()
        if s in ("t", "t:pruned") and a.get("status") == "complete"
    }
    trade = pd.read_csv(out / "tradeoff.csv")
    for name, display, acc, p, m, _ in BASELINES:
        rows = trade[trade["baseline"] == display]
        doms = [
            n
            for n, a in cands.items()
            if (a["val_accuracy"], a["params"], a["macs"]) != (acc, p, m)
            and a["val_accuracy"] >= acc
            and a["params"] <= p
            and a["macs"] <= m
        ]
        assert set(rows["of all"]) == {len(doms)}, name
        if not doms:
            assert list(rows["dominated by"]) == ["none"]
            continue
        for _, r in rows.iterrows():
            assert r["dominated by"] in doms
            a = cands[r["dominated by"]]
            assert r["MACs: x fewer"] == pytest.approx(m / a["macs"], rel=1e-6)
            assert r["params: x fewer"] == pytest.approx(p / a["params"], rel=1e-6)
            assert r["accuracy difference (pp)"] == pytest.approx(a["val_accuracy"] - acc)


def test_progress_ends_at_the_hypervolume_of_all_candidates(built: tuple[Path, str, Any]) -> None:
    out, url, report = built
    ct_l = SEARCH[0]
    norm = Normaliser(ct_l[1], ct_l[2], "CT L")
    points = [(a, p, m) for a, p, m, _ in SEARCH]
    want = hypervolume(points, norm)
    prog = pd.read_csv(out / "progress.csv")
    assert prog["hypervolume"].iloc[-1] == pytest.approx(want)
    assert prog["hypervolume"].is_monotonic_increasing
    searched = [
        a["netscore"] for a in _by_label(url).values() if a.get("kind") == "search" and "netscore" in a
    ]
    assert prog["best_netscore"].iloc[-1] == pytest.approx(max(searched))
    assert report.summary["hypervolume"] == pytest.approx(want, abs=1e-6)
    assert report.summary["trials running"] == 1
    assert report.summary["compute seconds"] == pytest.approx(
        sum(60.0 + i for i in range(len(SEARCH))) + 1 + 20 + 5
    )


def test_trials_csv_flattens_every_attribute(built: tuple[Path, str, Any]) -> None:
    out, url, _ = built
    trials = pd.read_csv(out / "trials.csv")
    assert len(trials) == len(_stored(url))
    row = trials[(trials["study"] == "t") & (trials["number"] == 1)].iloc[0]
    a = _stored(url)[("t", 1)]
    assert row["attr.test_metrics.per_class.COVID-19.sensitivity"] == pytest.approx(
        a["test_metrics"]["per_class"]["COVID-19"]["sensitivity"]
    )
    assert json.loads(row["attr.test_metrics.confusion_matrix"]) == a["test_metrics"]["confusion_matrix"]
    assert row["param.stem_width"] == 33
    assert row["attr.data_hash"] == "abc123"


class _Refs(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.refs: list[str] = []
        self.scripts_with_src: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        d = dict(attrs)
        for key in ("src", "href"):
            if d.get(key):
                self.refs.append(str(d[key]))
        for candidate in (d.get("srcset") or "").split(","):  # "file.png 1.5x, ..."
            if candidate.strip():
                self.refs.append(candidate.split()[0])
        if tag in ("script", "link") and (d.get("src") or d.get("rel") == "stylesheet"):
            self.scripts_with_src.append(str(d.get("src") or d.get("href")))


@pytest.mark.parametrize("page", ["index.html", "interactive.html"])
def test_every_file_the_pages_refer_to_exists_and_nothing_is_remote(
    built: tuple[Path, str, Any], page: str
) -> None:
    out, _, _ = built
    parser = _Refs()
    parser.feed((out / page).read_text())
    assert not parser.scripts_with_src, "scripts and styles must be inline"
    assert not [r for r in parser.refs if "://" in r or r.startswith("//")], "no remote resources"
    for ref in parser.refs:
        assert (out / ref).is_file(), ref
    if page == "index.html":
        assert {
            "pareto_macs.png",
            "pareto_params.png",
            "progress.png",
            "trials.csv",
            "interactive.html",
        } <= set(parser.refs)


def test_interactive_points_carry_their_facts(built: tuple[Path, str, Any]) -> None:
    out, url, _ = built
    text = (out / "interactive.html").read_text()
    a = _stored(url)[("t", 2)]
    assert f"arch_id {a['arch_id']}" in text
    assert f"NetScore {a['netscore']:.1f}" in text
    assert "trial 2 (search, complete)" in text


def test_a_study_without_completed_trials_is_a_clear_error(tmp_path: Path, capsys: Any) -> None:
    url = f"sqlite:///{tmp_path / 'study.db'}"
    study = optuna.create_study(
        storage=url, study_name="empty", directions=["maximize", "minimize", "minimize"]
    )
    study.add_trial(
        optuna.trial.create_trial(state=optuna.trial.TrialState.RUNNING, user_attrs={"kind": "search"})
    )
    with pytest.raises(NoCompletedTrials, match="no completed trial yet"):
        build_report(url, "empty", tmp_path / "r")
    code = main(["report", "--storage", url, "--study", "empty", "--report-dir", str(tmp_path / "r")])
    err = capsys.readouterr().err
    assert code == 2
    assert err.strip().splitlines() == [
        "search: error: study 'empty' has no completed trial yet (1 running); nothing to report"
    ]
    assert not (tmp_path / "r" / "index.html").exists()


def test_cli_report_writes_the_folder_and_usage_errors_exit_2(
    filled: str, tmp_path: Path, capsys: Any
) -> None:
    out = tmp_path / "rep"
    assert main(["--quiet", "report", "--storage", filled, "--study", "t", "--report-dir", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "Pareto members 4" in printed and str((out / "index.html").resolve()) in printed.replace("\n", "")
    assert (out / "index.html").is_file()
    assert main(["report", "--storage", filled, "--study", "nope"]) == 2
    assert "no study named 'nope'" in capsys.readouterr().err
    assert main(["report", "--out", str(tmp_path / "none")]) == 2
    assert "no study database" in capsys.readouterr().err
    assert not (tmp_path / "none").exists()


def test_default_report_dir_is_inside_out(tmp_path: Path) -> None:
    fill_study(f"sqlite:///{tmp_path / 'study.db'}", "covidnet-ct", running=False, baselines=False)
    assert main(["--quiet", "report", "--out", str(tmp_path), "--split", "val"]) == 0
    t4 = pd.read_csv(tmp_path / "report" / "table4.csv")
    assert len(t4) >= 1 and "val split" in (tmp_path / "report" / "table4.md").read_text()


def _uncertainty(values: list[float], ci: list[float] | None = None) -> dict[str, Any]:
    from evaluators.uncertainty import Uncertain

    return Uncertain.of(values, single_run_ci=ci).to_dict()


def test_tradeoff_marks_a_dominance_that_is_not_significant(tmp_path: Path) -> None:
    """Candidates evaluated over folds: one significantly above the baseline (intervals apart), one
    whose interval overlaps the baseline's (marked "no"), one without a stored interval (n/a);
    Table 3 shows mean ± std [interval] only where there were several runs."""
    from optuna.trial import create_trial

    from evaluators.uncertainty import Uncertain
    from tests.reports.studies import _trained_attrs

    url = f"sqlite:///{tmp_path / 'study.db'}"
    directions = ["maximize", "minimize", "minimize"]
    search = optuna.create_study(storage=url, study_name="u", directions=directions)
    bases = optuna.create_study(storage=url, study_name="u:baselines", directions=directions)
    bases.set_user_attr("kind", "baseline")
    # (name, fold accuracies or None, params, MACs)
    cands = [
        ("apart", [89.0, 90.0, 91.0], 1_000_000, 20_000_000),  # [87.5, 92.5] vs the baseline's [75.0, 85.0]
        ("overlap", [80.0, 82.0, 84.0], 500_000, 10_000_000),  # [77.0, 87.0]
        ("plain", None, 800_000, 15_000_000),  # an older trial: no val_accuracy_uncertainty
    ]
    for name, values, p, m in cands:
        acc = sum(values) / len(values) if values else 85.0
        attrs = {**_trained_attrs(acc, p, m, (25, 25), 60.0), "kind": "search", "arch_id": name}
        if values:
            attrs["val_accuracy_uncertainty"] = _uncertainty(values)
        search.add_trial(create_trial(values=[acc, float(p), float(m)], user_attrs=attrs))
    for name, values, ci, p, m in [
        ("big", [78.0, 80.0, 82.0], None, 2_000_000, 40_000_000),
        ("single", [70.0], [60.0, 80.0], 3_000_000, 50_000_000),  # one run: its bootstrap interval
    ]:
        acc = sum(values) / len(values)
        attrs = {**_trained_attrs(acc, p, m, (25, 25), 60.0), "kind": "baseline", "display_name": name}
        attrs.update(
            {"baseline": name, "arch_id": name, "val_accuracy_uncertainty": _uncertainty(values, ci)}
        )
        bases.add_trial(create_trial(values=[acc, float(p), float(m)], user_attrs=attrs))
    out = tmp_path / "report"
    build_report(url, "u", out)

    trade = pd.read_csv(out / "tradeoff.csv", keep_default_na=False)
    sig = {(r["baseline"], r["arch_id"]): r["significant (95 % CIs apart)"] for _, r in trade.iterrows()}
    assert sig[("big", "apart")] == "yes"
    assert sig[("big", "overlap")] == "no: intervals overlap"
    assert sig[("big", "plain")] == "n/a"
    # against the one-run baseline's bootstrap interval [60, 80]: only "overlap" touches it
    assert sig[("single", "apart")] == "yes" and sig[("single", "overlap")] == "no: intervals overlap"
    # the marking is Uncertain.overlaps of the stored intervals
    big = Uncertain.from_dict(_uncertainty([78.0, 80.0, 82.0]))
    assert Uncertain.from_dict(_uncertainty([80.0, 82.0, 84.0])).overlaps(big)
    assert not Uncertain.from_dict(_uncertainty([89.0, 90.0, 91.0])).overlaps(big)
    row = trade[(trade["baseline"] == "big") & (trade["arch_id"] == "apart")].iloc[0]
    lo, hi = big.ci  # type: ignore[misc]
    assert float(row["baseline val accuracy (%) 95% CI low"]) == pytest.approx(lo)
    assert float(row["baseline val accuracy (%) 95% CI high"]) == pytest.approx(hi)
    md = (out / "tradeoff.md").read_text()
    assert "no: intervals overlap" in md and "Not significant: 2 of the 6 listed dominances" in md

    t3 = pd.read_csv(out / "table3.csv", keep_default_na=False).set_index("model")
    assert float(t3.loc["#0 apart", "val accuracy (%) std"]) == pytest.approx(1.0)
    assert t3.loc["#2 plain", "val accuracy (%) std"] == "n/a"
    assert t3.loc["single", "val accuracy (%) std"] == "n/a"  # one run: no spread shown
    assert float(t3.loc["single", "val accuracy (%)"]) == pytest.approx(70.0)
    md3 = (out / "table3.md").read_text()
    u = _uncertainty([89.0, 90.0, 91.0])
    assert f"| 90.0 ± 1.0 [{u['ci'][0]:.1f}, {u['ci'][1]:.1f}] |" in md3
    assert "| 70.0 |" in md3 and "| 85.0 |" in md3
