"""The Prefect flow: the six DVC stages as tasks, a metrics gate, and promotion.

Every stage runs *through DVC* (``dvc repro <stage>``), so DVC's cache decides what
reruns and the flow never re-implements a stage. Results are published as artifacts with
stable keys (the UI keeps their history across runs): validation summary, metrics table,
confusion matrix, plot files, pictures (ROC and PR curves, confusion matrix, Grad-CAM overlays
from the exported model: :mod:`pipelines.pictures`), the gate verdict, the promotion.

The gate (:mod:`cxr.ops.gate`) compares the challenger with the promoted champion. Both are
scored again on the current test split from the raw image bytes, through the exported
TFLite file and :func:`cxr.imaging.preprocess.preprocess_bytes` -- the path the service takes -- as a
mapped task: with a Dask task runner the candidates are scored in parallel. A failing
gate ends the flow run Failed, with the reason, and leaves the promoted model untouched.

Run: ``python -m pipelines.flow`` (``make run``); ``--dask`` for a local Dask cluster,
``--dask-address tcp://host:8786`` for a remote one; ``--no-promote`` to gate only.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

STAGES = ("download", "validate", "split", "train", "evaluate", "export")
FLOW_NAME = "cxr-pipeline"


if __name__ == "__main__":  # before Prefect reads its settings
    from pipelines.local_server import use_local_server_if_running

    use_local_server_if_running()

from prefect import flow, get_run_logger, task  # noqa: E402
from prefect.artifacts import create_markdown_artifact, create_table_artifact  # noqa: E402
from prefect.cache_policies import NO_CACHE  # noqa: E402
from prefect.states import Failed  # noqa: E402

from cxr import layout  # noqa: E402
from pipelines import pictures, reports  # noqa: E402


class StageFailed(RuntimeError):
    """A DVC stage exited non-zero; the message carries its last error lines."""


def _dvc() -> str:
    beside = Path(sys.executable).parent / "dvc"
    return str(beside) if beside.exists() else "dvc"


def _stage_env(project: Path) -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(project) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    env.setdefault("GX_ANALYTICS_ENABLED", "false")
    return env


def run_dvc_stage(stage: str, project: str) -> dict:
    """``dvc repro <stage>``, its output streamed into the run's log; ran or skipped."""
    logger = get_run_logger()
    started = time.time()
    proc = subprocess.Popen([_dvc(), "repro", stage], cwd=project, env=_stage_env(Path(project)),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1)
    tail: list[str] = []
    ran = False
    assert proc.stdout is not None
    for line in proc.stdout:
        for part in line.rstrip("\n").split("\r"):
            if part.strip():
                logger.info("%s", part.rstrip())
                tail = (tail + [part.rstrip()])[-15:]
                ran = ran or part.startswith(f"Running stage '{stage}'")
    code = proc.wait()
    seconds = round(time.time() - started, 1)
    if code != 0:
        errors = [ln for ln in tail if ln.startswith(("error", "ERROR"))] or tail[-5:]
        # The stage CLIs exit 2 for a user mistake (DVC then exits 1, saying "exited with 2"):
        # a Failed state with the stage's message -- no traceback, no retry.
        user_error = any(ln.rstrip().endswith("exited with 2") for ln in tail)
        message = (f"stage {stage} failed ({'user error' if user_error else f'exit code {code}'}) after {seconds} s: "
                   + " | ".join(errors))
        if user_error:
            return Failed(message=message)
        raise StageFailed(message)  # anything else is unexpected: retried where retries are set
    return {"stage": stage, "ran": ran, "seconds": seconds}


# Download may fail on a network: retried (not on a user mistake, see run_dvc_stage).
download_task = task(run_dvc_stage, name="dvc-download", retries=2, retry_delay_seconds=5, cache_policy=NO_CACHE)
stage_task = task(run_dvc_stage, name="dvc-stage", cache_policy=NO_CACHE)


def _read_json(path: Path) -> dict:
    return json.loads(path.read_text()) if path.exists() else {}


@task(name="publish-validation", cache_policy=NO_CACHE)
def publish_validation(project: str) -> dict:
    root = Path(project)
    summary = _read_json(layout.path("validate", "summary", root))
    docs = layout.path("validate", "reports", root) / "data_docs" / "index.html"
    create_markdown_artifact(key="cxr-validation", description="Great Expectations summary of the raw data set",
                             markdown=reports.validation_markdown(summary, docs.resolve() if docs.exists() else None))
    return summary


@task(name="publish-metrics", cache_policy=NO_CACHE)
def publish_metrics(project: str):
    from cxr.records.evaluation import Evaluation

    root = Path(project)
    metrics = Evaluation.read(layout.path("evaluate", "metrics", root))
    data = metrics.data
    create_table_artifact(key="cxr-metrics", table=reports.metrics_table(metrics),
                          description=f"Test metrics ({data.test_split}; "
                                      f"{'SYNTHETIC data' if data.synthetic else 'data ' + str(data.dataset_hash)[:12]})")
    create_markdown_artifact(key="cxr-confusion-matrix", markdown=reports.confusion_markdown(metrics),
                             description="Confusion matrices on the test split")
    create_markdown_artifact(key="cxr-plots", markdown=reports.plots_markdown(root.resolve()),
                             description="ROC, PR, confusion and training-curve files (dvc plots show)")
    return metrics


@task(name="publish-pictures", cache_policy=NO_CACHE)
def publish_pictures(project: str) -> int:
    """The curves, the confusion matrix and Grad-CAM overlays of the exported model, as PNGs in one
    markdown artifact; returns its size in bytes."""
    markdown = pictures.project_pictures(project)
    create_markdown_artifact(key=pictures.KEY, markdown=markdown,
                             description="ROC and PR curves, confusion matrix, Grad-CAM overlays (model.tflite)")
    return len(markdown.encode())


@task(name="score-candidate", cache_policy=NO_CACHE)
def score_candidate(name: str, model_dir: str, project: str) -> dict:
    """Test metrics of one exported model, from raw bytes through its TFLite file."""
    from cxr.ops.scoring import score_export

    return {"name": name, **score_export(Path(model_dir), Path(project))}


@task(name="gate", cache_policy=NO_CACHE)
def gate(metrics, project: str, scored: list[dict], champion_tag: str | None) -> dict:
    from cxr import params
    from cxr.ops.gate import GateConfig, decide, verdict_markdown
    from cxr.records.evaluation import GatedFigures

    logger = get_run_logger()
    cfg = GateConfig.from_params(params.section("gate", Path(project) / "params.yaml"))
    champion = next((GatedFigures(**s["figures"]) for s in scored if s["name"] == "champion"), None)
    verdict = decide(metrics.gated(), cfg, champion, champion_tag)
    verdict["rescored"] = scored
    create_markdown_artifact(key="cxr-gate-verdict", markdown=verdict_markdown(verdict),
                             description=verdict["reason"][:250])
    (logger.info if verdict["passed"] else logger.error)("%s", verdict["reason"])
    if verdict.get("advice"):
        logger.error("%s", verdict["advice"])
    return verdict


@task(name="promote", cache_policy=NO_CACHE)
def promote(project: str, verdict: dict) -> str:
    from cxr.ops import registry

    tag = registry.promote(layout.path("export", "out", project), verdict)
    create_markdown_artifact(
        key="cxr-promotion",
        markdown=f"# Promoted `{tag}`\n\n{verdict['reason']}\n\nBentoML store: `{registry.bentoml_home()}`; "
                 f"serve it with `bentoml serve` (service.py looks the promoted tag up).\n",
        description=f"promoted {tag}")
    get_run_logger().info("promoted %s", tag)
    return tag


@flow(name=FLOW_NAME, log_prints=True)
def pipeline(project: str = ".", promote_model: bool = True):
    """download -> validate -> split -> train -> evaluate -> export, gate, promote."""
    from cxr.ops import registry

    project = str(Path(project).resolve())
    logger = get_run_logger()
    timings = []
    for stage in STAGES:
        run_stage = download_task if stage == "download" else stage_task.with_options(name=f"dvc-{stage}")
        state = run_stage(stage, project, return_state=True)
        if not state.is_completed():
            return Failed(message=state.message or f"stage {stage} failed")
        timings.append(state.result())
        if stage == "validate":
            publish_validation(project)
    metrics = publish_metrics(project)
    pictured = publish_pictures(project, return_state=True)
    if not pictured.is_completed():  # pictures are for people: a drawing failure must not decide the gate
        logger.warning("no %s artifact: %s", pictures.KEY, pictured.message)
    create_table_artifact(key="cxr-stage-timings", table=timings, description="dvc repro per stage (ran or cached)")

    champion_tag = registry.promoted_tag()
    candidates = [("challenger", str(layout.path("export", "out", project)))]
    if champion_tag:
        try:
            candidates.append(("champion", str(registry.promoted().path)))
        except Exception as exc:  # noqa: BLE001 - a broken champion must not block the floors
            logger.warning("champion %s cannot be loaded (%s): floors only", champion_tag, exc)
    futures = score_candidate.map([c[0] for c in candidates], [c[1] for c in candidates], project)
    scored = [f.result() for f in futures]
    verdict = gate(metrics, project, scored, champion_tag)
    if not verdict["passed"]:
        return Failed(message=f"{verdict['reason']}; promoted model left as {champion_tag}. {verdict['advice']}")
    if not promote_model:
        return {"verdict": verdict, "promoted": None}
    return {"verdict": verdict, "promoted": promote(project, verdict)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pipelines.flow", description=__doc__.split("\n\n")[0])
    parser.add_argument("--project", default=".", help="the repository root (default: .)")
    parser.add_argument("--no-promote", action="store_true", help="run and gate, but never promote")
    parser.add_argument("--dask", action="store_true", help="run tasks on a local Dask cluster (prefect-dask)")
    parser.add_argument("--dask-address", help="run tasks on an existing Dask scheduler, e.g. tcp://10.0.0.5:8786")
    args = parser.parse_args(argv)
    runner = None
    if args.dask or args.dask_address:
        from prefect_dask import DaskTaskRunner

        runner = (DaskTaskRunner(address=args.dask_address) if args.dask_address else
                  DaskTaskRunner(cluster_kwargs={"n_workers": 2, "threads_per_worker": 1, "processes": True}))
    run = pipeline.with_options(task_runner=runner) if runner else pipeline
    print(f"flow {FLOW_NAME}: task runner {type(run.task_runner).__name__}"
          f"{' at ' + args.dask_address if args.dask_address else ''}", flush=True)
    state = run(project=args.project, promote_model=not args.no_promote, return_state=True)
    if state.is_completed():
        result = state.result()
        print(f"flow {FLOW_NAME}: {result['verdict']['reason']}; promoted: {result['promoted']}")
        return 0
    print(f"flow {FLOW_NAME} {state.name}: {state.message}", file=sys.stderr)
    return 1


if __name__ == "__main__":
    raise SystemExit(main())
