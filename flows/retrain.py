"""The ``retrain`` Prefect flow: the ``wbc train`` run (or ``wbc adapt``) -> compare -> promote.

Champion and challenger are scored the same way (ONNX Runtime through the runtime pipeline, on the
challenger's fixed test split), and the challenger becomes current only when it beats the champion's
macro-F1 by more than ``margin`` and passed parity.  A file lock in the registry refuses a second retrain
while one runs (the serve deployment adds a Prefect concurrency limit on top).
"""

from __future__ import annotations

import fcntl
import os
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.cache_policies import NO_CACHE

from training.recipe import SHIPPED as RECIPE
from wbcproc.classes import CLASSES
from wbcproc.registry import Decision, Registry, decide_promotion, version_stamp


class RetrainBusyError(RuntimeError):
    pass


LAST_RUN = "last-retrain.json"
HOW_TO_ADD_CELLS = (
    "reviewed cells go there with "
    "`wbc export-reviewed REPORT.xlsx... --sample SAMPLE_DIR... --lab-data {root}` (docs/adapting.md)"
)


MODES = ("adapt", "train")


def training_extra_missing(mode: str = "train") -> str | None:
    """Why this install cannot retrain in ``mode`` (no PyTorch / no onnx), or None."""
    import importlib.util

    needed = ("onnx",) if mode == "adapt" else ("torch", "torchvision")
    if any(importlib.util.find_spec(m) is None for m in needed):
        what = "onnx" if mode == "adapt" else "PyTorch"
        job = "adaptation" if mode == "adapt" else "retrain"
        return f"the {job} needs the [train] extra ({what}), which this install does not have: pip install 'wbc[train]'"
    return None


def data_fingerprint(roots: list[str]) -> tuple[int, str]:
    """Number of image files under the data roots' class folders and a digest of (path, size, mtime)."""
    import hashlib

    from training.data import expand_roots
    from wbcproc.discovery import IMAGE_EXTENSIONS

    h = hashlib.sha256()
    n = 0
    for root in expand_roots(roots):
        for cls in CLASSES:
            folder = Path(root) / cls
            if not folder.is_dir():
                continue
            for p in sorted(folder.iterdir()):
                if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file():
                    st = p.stat()
                    h.update(f"{p}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
                    n += 1
    return n, h.hexdigest()


def nothing_to_do(data: list[str], runs_dir: str, only_if_new: bool, mode: str = "train") -> str | None:
    """The reason a scheduled retrain has nothing to do (said in the run, which ends Completed), or None.

    A fresh install's weekly retrain used to fail every week with a 123-line FileNotFoundError: the lab's
    data folder does not exist until someone reviews cells, and the runtime install has no PyTorch."""
    missing = training_extra_missing(mode)
    if missing:
        return missing
    absent = [r for r in data if not Path(r).is_dir()]
    if absent:
        return f"no training data yet: {', '.join(absent)} does not exist; " + HOW_TO_ADD_CELLS.format(root=absent[0])
    n, digest = data_fingerprint(data)
    if n == 0:
        return f"no reviewed cells in {', '.join(data)}; " + HOW_TO_ADD_CELLS.format(root=data[0])
    last = Path(runs_dir) / LAST_RUN
    if only_if_new and last.is_file():
        import json

        prev = json.loads(last.read_text())
        if prev.get("digest") == digest:
            return (
                f"nothing new to learn from since the retrain of {prev.get('at')} ({n} cells, unchanged); "
                + HOW_TO_ADD_CELLS.format(root=data[0])
            )
    return None


def _remember(data: list[str], runs_dir: str) -> None:
    from wbcproc.atomic import atomic_write_json

    n, digest = data_fingerprint(data)
    Path(runs_dir).mkdir(parents=True, exist_ok=True)
    atomic_write_json(Path(runs_dir) / LAST_RUN, {"at": datetime.now(UTC).isoformat(), "cells": n, "digest": digest})


@contextmanager
def retrain_lock(registry: Registry):
    registry.root.mkdir(parents=True, exist_ok=True)
    path = registry.root / "retrain.lock"
    fd = os.open(path, os.O_CREAT | os.O_RDWR, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise RetrainBusyError(
                f"another retrain is running (lock {str(path)!r} is held); not starting a second"
            ) from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        yield
    finally:
        os.close(fd)


@task(name="train-evaluate-export", cache_policy=NO_CACHE)
def train_run(opts, cfg) -> dict[str, Any]:
    """The whole ``wbc train`` run (prepare the data, train, calibrate, export, check parity) in one task."""
    from training.run import run_training

    return run_training(opts, cfg, get_run_logger().info)


@task(name="adapt", cache_policy=NO_CACHE)
def adapt_task(data: list[str], out: str, parent: Path, version: str) -> dict[str, Any]:
    from training.adapt import adapt

    return adapt(data, out, parent, version=version, log=get_run_logger().info)


@task(name="compare", cache_policy=NO_CACHE)
def compare(summary: dict[str, Any], registry: Registry, margin: float):
    """Score challenger and champion on the challenger's test split, as the run wrote it to ``split.csv``."""
    from training.data import read_split
    from training.evaluate import evaluate_items

    test_items = read_split(Path(summary["run_dir"]) / "split.csv", "test")
    challenger = evaluate_items(Path(summary["run_dir"]) / "model.onnx", test_items)
    challenger["parity_passed"] = summary["parity_passed"]
    champion = None
    current = registry.current_path()
    if current is None:
        # nothing registered: the model in use ($WBC_MODEL or the shipped default) is the one to beat
        from wbcproc.resolve import resolve_model_path
        from wbcproc.sidecar import ModelError

        try:
            current = resolve_model_path(None)
        except ModelError:
            current = None
    if current is not None:
        champion = evaluate_items(current, test_items)
    return decide_promotion(challenger, champion, margin=margin), challenger, champion


@task(name="promote", cache_policy=NO_CACHE)
def promote(decision, summary: dict[str, Any], registry: Registry) -> str | None:
    version = registry.register(summary["run_dir"])
    if decision.promote:
        registry.promote(version, reason=decision.reason)
    else:
        registry.log_decision(
            {"version": version, "promoted": False, "reason": decision.reason, "at": datetime.now(UTC).isoformat()}
        )
    return version


def _per_source_md(challenger: dict[str, Any], champion: dict[str, Any] | None) -> str:
    rows = ["", "| source | test cells | challenger macro-F1 | current macro-F1 |", "|---|---|---|---|"]
    for src, v in (challenger.get("per_source") or {}).items():
        cur = (champion or {}).get("per_source", {}).get(src)
        shown = "-" if cur is None else f"{cur['macro_f1']:.4f}"
        rows.append(f"| {src} | {v['n']} | {v['macro_f1']:.4f} | {shown} |")
    return "\n".join(rows) + "\n"


def _skipped(reason: str) -> dict[str, Any]:
    get_run_logger().info("nothing to do: %s", reason)
    create_markdown_artifact(markdown=f"# Retrain: nothing to do\n\n{reason}\n", description="Retrain skipped")
    return {"version": None, "promoted": False, "reason": f"nothing to do: {reason}", "skipped": True}


def _adapt_and_compare(data: list[str], runs_dir: str, registry: str | None, margin: float) -> dict[str, Any]:
    from training.adapt import AdaptError
    from wbcproc.resolve import resolve_model_path
    from wbcproc.sidecar import read_sidecar

    reg = Registry(registry) if registry else Registry.default()
    parent = reg.current_path() or resolve_model_path(None)
    stamp = version_stamp()
    with retrain_lock(reg):
        try:
            res = adapt_task(
                data, str(Path(runs_dir) / f"adapt-{stamp}"), parent, f"{read_sidecar(parent).version}+lab.{stamp}"
            )
        except AdaptError as exc:
            return _skipped(str(exc))
        lab = res["metrics"].get("lab_holdout")
        challenger = {"macro_f1": None if lab is None else lab["adapted"]["macro_f1"], "parity_passed": True}
        champion = None if lab is None else {"macro_f1": lab["parent"]["macro_f1"]}
        decision = decide_promotion(challenger, champion, margin=margin)
        if lab is None:  # nothing held out to judge it on: register, never promote
            decision = Decision(False, "no laboratory cell was held out to compare the adapted model on")
        registered = promote(decision, {"run_dir": res["run_dir"]}, reg)
        _remember(data, runs_dir)
    check = res["metrics"].get("original_check")
    create_markdown_artifact(
        markdown=(
            f"# Adaptation {registered}\n\n- parent: `{parent}`\n"
            + (f"- lab held-out cells: {lab['parent']} -> {lab['adapted']}\n" if lab else "- no lab cell held out\n")
            + (f"- original laboratory check: {check['parent']} -> {check['adapted']}\n" if check else "")
            + f"- **promoted: {decision.promote}** - {decision.reason}\n- run: `{res['run_dir']}`\n"
        ),
        description="Adaptation decision",
    )
    return {
        "skipped": False,
        "mode": "adapt",
        "version": registered,
        "promoted": decision.promote,
        "reason": decision.reason,
        "challenger_macro_f1": challenger["macro_f1"],
        "champion_macro_f1": None if champion is None else champion["macro_f1"],
        "run_dir": res["run_dir"],
    }


def _publish(version: str, summary: dict[str, Any], decision, challenger: dict, champion: dict | None) -> None:
    """The run's figures in the Prefect UI: per-class metrics, the confusion matrix and the decision."""
    m = summary["metrics"]
    create_table_artifact(
        key="retrain-metrics",
        table=[
            {
                "class": c,
                "precision": round(v["precision"], 4),
                "recall": round(v["recall"], 4),
                "f1": round(v["f1"], 4),
                "support": v["support"],
            }
            for c, v in m["per_class"].items()
        ],
        description=f"Test-split metrics of {version}: accuracy {m['accuracy']:.4f}, macro-F1 {m['macro_f1']:.4f}",
    )
    create_table_artifact(
        key="retrain-confusion",
        table=[
            {"true": c, **dict(zip(CLASSES, row, strict=True))} for c, row in zip(CLASSES, m["confusion"], strict=True)
        ],
        description="Confusion matrix on the test split (rows true, columns predicted)",
    )
    champ = "none" if champion is None else f"{champion['macro_f1']:.4f}"
    create_markdown_artifact(
        markdown=(
            f"# Retrain {version}\n\n- challenger macro-F1 (ONNX Runtime, test split): {challenger['macro_f1']:.4f}\n"
            f"- current model macro-F1 on the same split: {champ}\n- parity: {summary['parity']}\n"
            f"- **promoted: {decision.promote}** - {decision.reason}\n- run: `{summary['run_dir']}`\n"
            + _per_source_md(challenger, champion)
        ),
        description="Promotion decision",
    )


@flow(name="retrain", log_prints=False)
def retrain_flow(
    data: list[str],
    runs_dir: str,
    registry: str | None = None,
    epochs: int = RECIPE["epochs"],
    image_size: int = RECIPE["image_size"],
    init: str = RECIPE["init"],
    freeze_stages: int = 0,
    device: str = "auto",
    batch_size: int = RECIPE["batch_size"],
    lr: float = RECIPE["lr"],
    seed: int = RECIPE["seed"],
    margin: float = 0.0,
    only_if_new: bool = False,
    mode: str = "train",
) -> dict[str, Any]:
    """Refit the model on ``data`` and promote it only if it beats the current one on the fixed test split.

    With nothing to learn from (no data folder yet, no cells, PyTorch not installed, or - with
    ``only_if_new``, as the weekly deployment runs it - no file added or changed since the last retrain) the
    run ends Completed and says why and where reviewed cells go.

    ``mode="adapt"`` (what the weekly deployment runs: a CPU, seconds) adapts the model in use to the
    laboratory's cells with ``wbc adapt`` instead of training from scratch, and promotes the result only
    when it beats the model in use on the laboratory's held-out cells; ``adapt`` itself refuses a model that
    loses more than one point on the original laboratory's check cells.  ``mode="train"`` is the full recipe
    (a GPU machine, or hours here)."""
    if mode not in MODES:
        raise ValueError(f"retrain mode {mode!r}; expected one of {MODES}")
    reason = nothing_to_do(list(data), runs_dir, only_if_new, mode)
    if reason is not None:
        return _skipped(reason)
    if mode == "adapt":
        return _adapt_and_compare(list(data), runs_dir, registry, margin)
    from training.recipe import TrainConfig, augmentation
    from training.run import RunOptions

    reg = Registry(registry) if registry else Registry.default()
    version = version_stamp()
    opts = RunOptions(data=list(data), out=str(Path(runs_dir) / version), image_size=image_size, version=version)
    cfg = TrainConfig(
        **augmentation(RECIPE["augment"]),
        epochs=epochs,
        batch_size=batch_size,
        lr=lr,
        freeze_stages=freeze_stages,
        init=init,
        device=device,
        seed=seed,
        patience=RECIPE["patience"],
    )
    with retrain_lock(reg):
        summary = train_run(opts, cfg)
        decision, challenger, champion = compare(summary, reg, margin)
        registered = promote(decision, summary, reg)
        _remember(list(data), runs_dir)
    _publish(version, summary, decision, challenger, champion)
    return {
        "skipped": False,
        "version": registered,
        "promoted": decision.promote,
        "reason": decision.reason,
        "challenger_macro_f1": challenger["macro_f1"],
        "champion_macro_f1": None if champion is None else champion["macro_f1"],
        "run_dir": summary["run_dir"],
    }
