"""The drift monitor: the service's audit trail against the promoted model's validation set.

A Prefect flow (``cxr-monitor``) of four tasks: reference (the model card's validation
probabilities; first, since the promoted model's tag picks its lines of the trail),
read-trail (every rotated file of the trail, the window), compare (:mod:`cxr.ops.drift`),
publish (a markdown artifact ``cxr-drift`` with the figures and a histogram of reference vs
recent probabilities, a table artifact ``cxr-drift-figures``).
A drift beyond ``params.yaml`` ``monitor`` ends the run Failed with the reasons, so that a
schedule pages someone; too few answers to judge ends it Completed under the name
``NotEnoughAnswers``, so that it is seen and not mistaken for an all-clear.

Run: ``python -m pipelines.monitor --audit logs/audit.jsonl`` (``make monitor AUDIT=...``).
Exit code: 0 no drift, 1 drift (or the run failed), 2 a user error, 3 not enough answers.
"""

from __future__ import annotations

import argparse
import base64
import io
import json
import sys
from pathlib import Path

FLOW_NAME = "cxr-monitor"
USER_ERROR = "user error: "
NOT_ENOUGH = "NotEnoughAnswers"
EXIT = {"stable": 0, "drifted": 1, "user": 2, "insufficient": 3}


if __name__ == "__main__":  # before Prefect reads its settings
    from pipelines.local_server import use_local_server_if_running

    use_local_server_if_running()

from prefect import flow, get_run_logger, task  # noqa: E402
from prefect.artifacts import create_markdown_artifact, create_table_artifact  # noqa: E402
from prefect.cache_policies import NO_CACHE  # noqa: E402
from prefect.states import Completed, Failed  # noqa: E402

from cxr import UserError, params  # noqa: E402
from cxr.ops import drift  # noqa: E402


def _user_errors(fn):
    """A user mistake ends the task Failed with its message, no traceback and no retry."""
    import functools

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except UserError as exc:
            get_run_logger().error("%s", exc)
            return Failed(message=f"{USER_ERROR}{exc}")
    return wrapper


@task(name="read-trail", cache_policy=NO_CACHE)
@_user_errors
def read_trail(audit: str, since: str | None, last: int | None, model: str | None) -> drift.Trail:
    source = sys.stdin if audit == "-" else audit
    trail = drift.read_trail(source, since=drift.parse_time(since) if since else None, last=last, model=model)
    summary = trail.summary()
    get_run_logger().info("read %d line(s) from %d file(s): %d in the window, %d malformed", summary["lines"],
                          len(summary["files"]), summary["in_window"], summary["malformed"])
    return trail


@task(name="reference", cache_policy=NO_CACHE)
@_user_errors
def reference(card_path: str | None) -> dict:
    """The card's monitoring reference: ``card_path`` (a model_card.json or the folder holding
    one), else the promoted store entry's, which also names the model whose lines count."""
    from cxr.records.model_card import JSON_NAME, ModelCard

    tag = None
    if card_path is None:
        from cxr.ops import registry

        entry = registry.promoted()
        tag, folder = str(entry.tag), Path(entry.path)
    else:
        folder = Path(card_path)
        folder = folder if folder.is_dir() else folder.parent  # the folder, or the card file in it
    path = folder / JSON_NAME
    ref = drift.reference_from_card(ModelCard.read(folder))
    get_run_logger().info("reference: %d validation probabilities of %s (%s), threshold %s",
                          len(ref["probabilities"]), tag or ref["name"], path, ref["threshold"])
    return {**ref, "tag": tag, "card": str(path)}


@task(name="compare", cache_policy=NO_CACHE)
@_user_errors
def compare(window: drift.Trail, ref: dict) -> dict:
    cfg = drift.DriftConfig.from_params(params.section("monitor"))
    verdict = drift.compare(window, ref, cfg)
    verdict["figures"]["model"] = ref.get("tag") or ref.get("name")
    verdict["figures"]["card"] = ref.get("card")
    logger = get_run_logger()
    (logger.error if verdict["drifted"] else logger.warning if verdict["outcome"] == "insufficient"
     else logger.info)("%s", drift.summary_line(verdict))
    for note in verdict["notes"]:
        logger.warning("%s", note)
    return verdict


# -- the plot --------------------------------------------------------------------------------------

def histogram_png(reference: list[float], recent: list[float], title: str) -> bytes:
    """Reference vs recent shares per probability bin, side by side: drawn with PIL (matplotlib
    is not a dependency of the project)."""
    from PIL import Image, ImageDraw

    width, height, left, bottom, top = 640, 320, 48, 40, 36
    bins = max(len(reference), 1)
    img = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(img)
    plot_w, plot_h = width - left - 16, height - bottom - top
    peak = max([*reference, *recent, 1e-9])
    step = plot_w / bins
    colours = {"reference (validation)": (120, 120, 120), "recent (audit trail)": (214, 96, 40)}
    for i in range(bins):
        for j, (values, colour) in enumerate(zip((reference, recent), colours.values())):
            value = values[i] if i < len(values) else 0.0
            x0 = left + i * step + step * (0.1 + 0.4 * j)
            y0 = top + plot_h * (1 - value / peak)
            draw.rectangle([x0, y0, x0 + step * 0.4, top + plot_h], fill=colour)
    draw.line([left, top + plot_h, left + plot_w, top + plot_h], fill="black")
    draw.line([left, top, left, top + plot_h], fill="black")
    for i in range(bins + 1):
        x = left + i * step
        draw.line([x, top + plot_h, x, top + plot_h + 4], fill="black")
        if i % max(bins // 5, 1) == 0:
            draw.text((x - 8, top + plot_h + 8), f"{i / bins:.1f}", fill="black")
    draw.text((left - 40, top - 4), f"{peak:.2f}", fill="black")
    draw.text((left - 40, top + plot_h - 8), "0", fill="black")
    draw.text((left, 8), title, fill="black")
    x = left + plot_w - 300
    for name, colour in colours.items():
        draw.rectangle([x, 24, x + 10, 32], fill=colour)
        draw.text((x + 14, 22), name, fill="black")
        x += 160
    draw.text((left + plot_w // 2 - 60, height - 16), "probability of PNEUMONIA", fill="black")
    buf = io.BytesIO()
    img.save(buf, format="PNG", optimize=True)
    return buf.getvalue()


def text_bars(reference: list[float], recent: list[float], width: int = 30) -> str:
    """The histogram as text, for where an embedded image is not shown."""
    bins = len(reference)
    peak = max([*reference, *recent, 1e-9])
    lines = ["bin        reference                        recent"]
    for i in range(bins):
        a, b = reference[i], recent[i] if i < len(recent) else 0.0
        lines.append(f"{i / bins:.2f}-{(i + 1) / bins:.2f}  {'#' * round(width * a / peak):<{width}} {a:5.3f}  "
                     f"{'#' * round(width * b / peak):<{width}} {b:5.3f}")
    return "\n".join(lines)


def drift_markdown(verdict: dict, png: bytes) -> str:
    f = verdict["figures"]
    head = {"drifted": "DRIFT", "stable": "no drift", "insufficient": "not enough answers"}[verdict["outcome"]]
    w = f["window"]
    out = [f"# Drift monitor: {head}", "",
           f"Model `{f.get('model')}`, card `{f.get('card')}`, threshold {f['threshold']}. Window: "
           f"{w['in_window']} of {w['lines']} line(s) in {len(w['files'])} file(s), {w['first_time']} .. "
           f"{w['last_time']}; {w['malformed']} malformed skipped.", ""]
    if verdict["reasons"]:
        out += [*(f"- **{r}**" for r in verdict["reasons"]), ""]
    out += ["| figure | recent | reference | limit | drifted |", "|---|---|---|---|---|"]
    for row in drift.figures_table(verdict):
        out.append("| " + " | ".join("" if row[k] is None else str(row[k])
                                     for k in ("figure", "recent", "reference", "limit", "drifted")) + " |")
    if f["refusals_by_reason"]:
        out += ["", "Refusals by reason: " + ", ".join(f"`{k}` {v}" for k, v in f["refusals_by_reason"].items())]
    if verdict["notes"]:
        out += ["", *(f"- {n}" for n in verdict["notes"])]
    hist = f["histogram"]
    out += ["", "## Probabilities: reference vs recent", "",
            f"![reference vs recent probabilities](data:image/png;base64,{base64.b64encode(png).decode()})", "",
            "```", text_bars(hist["reference"], hist["recent"]), "```", ""]
    return "\n".join(out)


@task(name="publish", cache_policy=NO_CACHE)
def publish(verdict: dict, out_dir: str | None) -> dict:
    hist = verdict["figures"]["histogram"]
    png = histogram_png(hist["reference"], hist["recent"],
                        f"{verdict['figures'].get('model')}: {drift.summary_line(verdict)[:80]}")
    written = {}
    if out_dir:
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        (out / "drift.png").write_bytes(png)
        (out / "drift.json").write_text(json.dumps(verdict, indent=2, default=str) + "\n")
        written = {"png": str(out / "drift.png"), "json": str(out / "drift.json")}
    markdown = drift_markdown(verdict, png)
    if written:
        markdown += f"\nFiles: `{written['png']}`, `{written['json']}`\n"
    create_markdown_artifact(key="cxr-drift", markdown=markdown, description=drift.summary_line(verdict)[:250])
    create_table_artifact(key="cxr-drift-figures", table=drift.figures_table(verdict),
                          description="audit trail vs the model card's validation reference")
    return written


@flow(name=FLOW_NAME, log_prints=True)
def monitor(audit: str, card: str | None = None, since: str | None = None, last: int | None = None,
            model: str | None = None, out_dir: str | None = None):
    """read-trail, reference, compare, publish; Failed on drift."""
    ref_state = reference(card, return_state=True)
    if not ref_state.is_completed():
        return Failed(message=ref_state.message)
    ref = ref_state.result()
    if last is None and since is None:
        last = drift.DriftConfig.from_params(params.section("monitor")).window
    trail_state = read_trail(audit, since, last, model or ref.get("tag"), return_state=True)
    if not trail_state.is_completed():
        return Failed(message=trail_state.message)
    verdict_state = compare(trail_state.result(), ref, return_state=True)
    if not verdict_state.is_completed():
        return Failed(message=verdict_state.message)
    verdict = verdict_state.result()
    publish(verdict, out_dir)
    line = drift.summary_line(verdict)
    if verdict["outcome"] == "drifted":
        return Failed(message=line)
    if verdict["outcome"] == "insufficient":
        return Completed(message=line, name=NOT_ENOUGH)
    return Completed(message=line)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pipelines.monitor", description=__doc__.split("\n\n")[0],
                                     epilog="exit code: 0 no drift, 1 drift, 2 user error, 3 not enough answers")
    parser.add_argument("--audit", required=True, metavar="PATH",
                        help="the audit trail (audit.jsonl; its rotated audit.jsonl.N are read too), - for stdin")
    parser.add_argument("--card", metavar="PATH", help="a model_card.json or an export folder "
                                                       "(default: the promoted model in the BentoML store)")
    window = parser.add_mutually_exclusive_group()
    window.add_argument("--since", metavar="ISO", help="only lines from this time on, e.g. 2026-12-01T00:00:00+00:00")
    window.add_argument("--last", type=int, metavar="N", help="only the last N lines (default: monitor.window)")
    parser.add_argument("--model", metavar="TAG", help="only lines of this model tag "
                                                       "(default: the promoted tag when --card is not given)")
    parser.add_argument("--out", metavar="DIR", help="also write drift.png and drift.json here")
    args = parser.parse_args(argv)
    try:
        if args.since:
            drift.parse_time(args.since)
        if args.last is not None and args.last < 1:
            raise UserError(f"--last must be at least 1, got {args.last}")
        drift.DriftConfig.from_params(params.section("monitor"))
    except UserError as exc:
        print(f"error [{FLOW_NAME}]: {exc}", file=sys.stderr)
        return EXIT["user"]
    state = monitor(audit=args.audit, card=args.card, since=args.since, last=args.last, model=args.model,
                    out_dir=args.out, return_state=True)
    message = state.message or state.name
    if state.is_completed():
        print(f"flow {FLOW_NAME} {state.name}: {message}")
        return EXIT["insufficient"] if state.name == NOT_ENOUGH else EXIT["stable"]
    if message.startswith(USER_ERROR):
        print(f"error [{FLOW_NAME}]: {message[len(USER_ERROR):]}", file=sys.stderr)
        return EXIT["user"]
    print(f"flow {FLOW_NAME} {state.name}: {message}", file=sys.stderr)
    return EXIT["drifted"]


if __name__ == "__main__":
    raise SystemExit(main())
