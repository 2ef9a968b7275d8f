"""``search final``: retrain the chosen candidates of a study, CT L, CT S and the baselines at full fidelity.

The final configuration starts from the search study's own (data, complexity size, artifact
store), takes the ``final`` protocol's training settings (``evaluators.training.PROTOCOLS``) and
then the flags given; it is stored with ``<study>:final`` and a later run with other settings is
refused. Models already finished under it are not trained again, so the same command resumes, and
several workers on one PostgreSQL storage share the models.
"""

from __future__ import annotations

import argparse
import time
from typing import Any

from search.commands._common import add_setting_flags, count_type, given_settings, warn
from search.console import console, print_table
from search.errors import UsageError

# The search's own settings a final run takes from the study (the training ones are its own).
# harmonise: a model is finalised on the inputs it was searched on; cv_by/cv_score: a search
# validated on held-out sources is finalised on held-out sources (flags override all of them)
FROM_SEARCH = ("data", "complexity_size", "artifacts", "skip_bad", "space", "harmonise", "cv_by", "cv_score")


def register(sub: argparse._SubParsersAction) -> None:
    from search.driver.config import SETTINGS

    p = sub.add_parser(
        "final",
        help="retrain chosen candidates with CT L, CT S and the baselines at full fidelity (<study>:final)",
        description="Train the chosen trials of a search study together with CT L, CT S and the paper's "
        "four baselines under one final training configuration (default: the 'final' protocol) into the "
        "study <study>:final, which reads the test split. Resumable and distributed like search run.",
    )
    p.add_argument(
        "--trial", type=int, action="append", default=[], metavar="N", help="finalise trial N (repeat)"
    )
    p.add_argument(
        "--top", type=int, default=0, metavar="K", help="finalise the K trials of highest NetScore"
    )
    p.add_argument("--pick", choices=("pareto",), help="finalise the search's Pareto set")
    p.add_argument(
        "--pareto-max-macs",
        type=count_type,
        metavar="N",
        help="finalise the Pareto members with at most N MACs at the complexity size (e.g. 0.99G)",
    )
    p.add_argument(
        "--baselines",
        metavar="A,B",
        help="comma-separated baselines to finalise beside CT L and CT S (default: the paper's four; "
        "'none' for none)",
    )
    p.add_argument("--config", metavar="FILE.yaml", help="final training settings; flags override it")
    training = {k: s for k, s in SETTINGS.items() if s.owner.__name__ in ("TrainConfig", "CVConfig")}
    add_setting_flags(p, {k: SETTINGS[k] for k in ("out", "storage", "study", "heartbeat")})
    add_setting_flags(p, training, defaults=_final_defaults())
    p.set_defaults(func=run_final_command)


def _final_defaults() -> dict[str, Any]:
    from search.driver.config import RunConfig

    return RunConfig.make(protocol="final").to_dict()


def _baseline_names(text: str | None) -> list[str]:
    from baselines import BASELINES
    from search.driver.final import FINAL_BASELINES

    if text is None:
        return list(FINAL_BASELINES)
    if text.strip().lower() == "none":
        return []
    names = [n.strip() for n in text.split(",") if n.strip()]
    for n in names:
        if n not in BASELINES:
            raise UsageError(BASELINES.unknown_message(n))
        if n in ("covidnet_ct_l", "covidnet_ct_s"):
            raise UsageError(f"{n} is always finalised (as CT L / CT S); name other baselines")
    return names


def final_config(args: argparse.Namespace, stored: dict[str, Any]) -> Any:
    """The final stage's configuration: the search's data and complexity settings, the ``final``
    protocol's training settings, then the YAML file and the flags."""
    from search.driver.config import SETTINGS, RunConfig, read_yaml

    values: dict[str, Any] = {k: stored[k] for k in FROM_SEARCH if k in stored}
    if "data" in values:
        values["data"] = tuple(values["data"])
    values["protocol"] = "final"
    if args.config:
        values.update(read_yaml(args.config))
    values.update(given_settings(args, SETTINGS))
    try:
        return RunConfig.make(**values)
    except ValueError as e:
        raise UsageError(str(e)) from None


def run_final_command(args: argparse.Namespace) -> int:
    import optuna

    from search.commands._common import config_from_args
    from search.driver.artifacts import upload_weights
    from search.driver.baselines import baselines_study_name, config_key
    from search.driver.config import RunConfig
    from search.driver.final import open_final_study, pick_candidates, plan_entries, run_final
    from search.driver.objective import TrainingEvaluator
    from search.driver.storage import artifact_store, load_existing_study, open_storage

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    place_flags = {k: v for k, v in vars(args).items() if k in ("out", "storage", "study")}
    where = config_from_args(argparse.Namespace(**place_flags))
    _, search = load_existing_study(where.storage, where.out_dir, where.study)
    stored = dict(search.user_attrs.get("run_config") or {})
    if not (args.trial or args.top or args.pick or args.pareto_max_macs is not None):
        raise UsageError("choose what to finalise: --pick pareto, --top K, --trial N or --pareto-max-macs N")
    if args.top < 0:
        raise UsageError(f"--top must be at least 0, got {args.top}")
    candidates = pick_candidates(
        search.get_trials(deepcopy=False),
        pareto=args.pick == "pareto",
        top=args.top,
        numbers=args.trial,
        pareto_max_macs=args.pareto_max_macs,
    )
    names = _baseline_names(args.baselines)
    artifacts = search.user_attrs.get("artifacts") or stored.get("artifacts")
    place = {"out": where.out, "storage": where.storage, "study": where.study, "artifacts": artifacts}
    final = final_config(args, stored).replace(**place)
    storage = open_storage(final.storage_url, final.heartbeat, final.max_retry)
    evaluator = TrainingEvaluator(final, read_test=_tested(final))
    proxy_key = None
    proxy_baselines = None
    if stored:
        proxy_key = config_key(RunConfig.make(**stored), evaluator.data_attrs()["data_hash"])
        try:
            proxy_baselines = optuna.load_study(study_name=baselines_study_name(where.study), storage=storage)
        except KeyError:
            proxy_baselines = None
    entries = plan_entries(search, candidates, names, proxy_baselines, proxy_key)
    study = open_final_study(storage, final.storage_url, where.study, final, evaluator.data_attrs())
    store = artifact_store(study.user_attrs.get("artifacts") or final.artifacts_dir)
    t = final.train
    runs = final.cv.runs_for(len(evaluator.dataset.sources))
    scored = "test split" if _tested(final) else "out-of-fold validation"
    if final.cv.by_source:
        scored = f"{final.cv.score} of the held-out sources' train+val"
    console().print(
        f"final stage of {where.study!r}: {len(entries)} models ({len(candidates)} candidates, CT L, CT S, "
        f"{len(names)} baselines), protocol {t.protocol}, {t.epochs} epochs at {t.image_size} px, "
        f"{runs} run{'s' if runs != 1 else ''} each; {scored} scored; "
        f"majority-class rate {_majority(evaluator, final)}",
        soft_wrap=True,
    )
    rows: list[list[Any]] = []

    def on_done(outcome: Any) -> None:
        e = outcome.entry
        if outcome.error:
            warn(f"{e.display_name:<18} failed: {outcome.error}")
            return
        a = outcome.trial.user_attrs
        u = a["final_accuracy_uncertainty"]
        ci = f"[{u['ci'][0]:.1f}, {u['ci'][1]:.1f}]" if u.get("ci") else ""
        proxy = f"{e.proxy_val_accuracy:.1f}" if e.proxy_val_accuracy is not None else "-"
        state = "already finalised" if outcome.skipped else f"{a.get('wall_time_s', 0):.0f} s"
        console().print(
            f"{e.display_name:<18} {a['final_split']} {a['final_accuracy']:5.1f} % {ci}  ({state})"
        )
        rows.append(
            [
                e.display_name,
                e.role,
                f"{a['params']:,}",
                f"{a['macs'] / 1e9:.3f} G",
                proxy,
                f"{a['final_accuracy']:.1f}",
                ci,
                f"{a['final_netscore']:.1f}",
            ]
        )

    started = time.time()
    outcomes = run_final(
        final,
        entries,
        study,
        storage,
        evaluator,
        lambda trial, path: upload_weights(store, trial, path),
        on_done=on_done,
    )
    print_table(
        f"final stage of {where.study!r} ({time.time() - started:.0f} s)",
        ["model", "role", "params", "MACs", "proxy val %", "final %", "95 % interval", "NetScore"],
        rows,
    )
    failed = [o for o in outcomes if o.error]
    if failed:
        warn(f"{len(failed)} models failed; rerun the same command to retry them")
        return 1
    place_flag = f"--storage {where.storage}" if where.storage else f"--out {where.out}"
    from search.console import invocation

    console().print(f"report: {invocation()} report {place_flag} --study {where.study}")
    return 0


def _tested(final: Any) -> bool:
    """Whether the final stage scores the test split (a plain split) rather than held-out folds or
    held-out sources."""
    return final.cv.folds == 1 and not final.cv.by_source


def _majority(evaluator: Any, final: Any) -> str:
    rates = evaluator.data_attrs()["majority_rate"]
    split = "test" if _tested(final) else "val"
    return f"{rates[split]:.1f} % ({split})" if split in rates else "n/a"
