"""The benchmarks' pure helpers (statistics, ratios, tables, stage-time parsing). No timing
assertions: the benchmarks themselves are scripts (bench/, docs/performance.md)."""

from __future__ import annotations

import numpy as np
import pytest

from bench.pipeline import parse_stage_times
from bench.report import fmt_bytes, fmt_num, fmt_ratio, latency_summary, percentile, ratio, render_table, verdict
from bench.seed_server import multipart_file


def test_percentile_matches_numpy_linear():
    rng = np.random.default_rng(0)
    xs = list(rng.exponential(30.0, 101))
    for q in (0, 1, 50, 95, 99, 100):
        assert percentile(xs, q) == pytest.approx(float(np.percentile(xs, q)))
    assert percentile([], 50) is None
    assert percentile([7.0], 99) == 7.0
    with pytest.raises(ValueError):
        percentile([1.0], 101)


def test_latency_summary_throughput_and_ms():
    s = latency_summary([0.010, 0.020, 0.030, 0.040], errors=1, wall_s=2.0)
    assert s["requests"] == 5 and s["ok"] == 4 and s["errors"] == 1
    assert s["images_per_s"] == pytest.approx(2.0)
    assert s["p50_ms"] == pytest.approx(25.0)
    assert s["max_ms"] == pytest.approx(40.0)
    empty = latency_summary([], errors=3, wall_s=0.0)
    assert empty["images_per_s"] == 0.0 and empty["p99_ms"] is None


def test_ratio_and_formatting():
    assert ratio(60.0, 5.0) == pytest.approx(12.0)
    assert ratio(1.0, 0.0) is None and ratio(None, 1.0) is None
    assert fmt_ratio(12.0) == "12.00x"
    assert fmt_ratio(0.456) == "0.46x"
    assert fmt_ratio(250.0) == "250x"
    assert fmt_ratio(None) == "n/a" and fmt_ratio(float("nan")) == "n/a"
    assert fmt_num(None) == "-" and fmt_num(3) == "3" and fmt_num(2.345, 2) == "2.35"
    assert fmt_num(0.00002, 2) == "2.0e-05"
    assert fmt_bytes(512) == "512 B" and fmt_bytes(8880120) == "8.5 MiB"
    assert verdict(61, 60) == "MET" and verdict(149, 150, higher_is_better=False) == "MET"
    assert verdict(None, 1) == "not measured" and verdict(59.9, 60) == "NOT MET"


def test_render_table_is_markdown():
    text = render_table([{"server": "service", "img/s": 61.234, "errors": 0}, {"server": "baseline", "img/s": None}],
                        ["server", ("img/s", "images/s"), "errors"])
    lines = text.splitlines()
    assert lines[0].split("|")[1:-1] == [" server   ", " images/s ", " errors "]
    assert set(lines[1]) <= {"|", "-"}
    assert "61.2" in lines[2] and "| -" in lines[3]
    assert len({len(line) for line in lines}) == 1  # aligned


def test_parse_stage_times_from_dvc_output():
    events = [(0.5, "Stage 'download' didn't change, skipping"), (1.0, "Running stage 'split':"),
              (1.1, "> python -m stages.split"), (11.0, "Running stage 'train':"), (70.0, "Updating lock file")]
    times = parse_stage_times(events, end=71.0)
    assert times == {"split": pytest.approx(10.0), "train": pytest.approx(60.0)}
    assert parse_stage_times([], end=1.0) == {}


def test_seed_server_multipart_parsing():
    body = (b"--XyZ\r\nContent-Disposition: form-data; name=\"image\"; filename=\"a.jpeg\"\r\n"
            b"Content-Type: image/jpeg\r\n\r\n\xff\xd8\xff\r\nbytes\r\n--XyZ--\r\n")
    assert multipart_file(body, "multipart/form-data; boundary=XyZ") == b"\xff\xd8\xff\r\nbytes"
    assert multipart_file(body, "multipart/form-data; boundary=XyZ", field="other") is None
    assert multipart_file(body, "application/json") is None


def test_loadgen_builds_form_and_raw_requests_the_servers_can_read():
    from bench.loadgen import answered, build_requests

    payloads = [("a.jpeg", b"\xff\xd8\xffJPEG\r\n--not-a-boundary"), ("b.png", b"\x89PNG\r\n\x1a\nPNG")]
    forms = build_requests(payloads, "predict")
    assert [path for path, _, _ in forms] == ["/predict", "/predict"]
    for (name, data), (_, body, headers) in zip(payloads, forms):
        assert multipart_file(body, headers["Content-Type"]) == data  # what the seed-style server parses
        assert f'filename="{name}"'.encode() in body
    raw = build_requests(payloads, "predict_raw")
    assert raw == [("/predict_raw", payloads[0][1], {"Content-Type": "image/jpeg"}),
                   ("/predict_raw", payloads[1][1], {"Content-Type": "image/png"})]
    with pytest.raises(ValueError):
        build_requests(payloads, "explain")
    assert answered(200, b'{"label": "NORMAL", "probability": 0.1}')
    assert not answered(200, b'{"error": "x"}') and not answered(500, b'{"probability": 1}')


def test_serving_rounds_combine_to_medians():
    from bench.serving import combine

    def run(ips, p99, errors=0):
        level = {"requests": 10, "ok": 10 - errors, "errors": errors, "wall_s": 1.0, "images_per_s": ips,
                 "p50_ms": 10.0, "p95_ms": 20.0, "p99_ms": p99, "max_ms": p99}
        return {"levels": {32: level}, "steady": dict(level), "rss_before": 100, "rss_after": 200, "env": {},
                "ready_s": 2.0}

    out = combine([run(60.0, 100.0), run(90.0, 300.0, errors=1), run(70.0, 200.0)])
    assert out["levels"][32]["images_per_s"] == 70.0
    assert out["levels"][32]["p99_ms"] == 200.0
    assert out["levels"][32]["errors"] == 1 and out["levels"][32]["requests"] == 30
    assert out["per_round_images_per_s"][32] == [60.0, 90.0, 70.0]
    assert out["rounds"] == 3 and out["rss_after"] == 200


def test_seed_study_judges_each_run_by_the_projects_rule_and_floors():
    """A run whose threshold lets a NORMAL film through the floor fails; margins are figure - floor."""
    from bench.seed_study import judge, table

    rule = {"target_recall": 0.9, "threshold_rule": "empirical", "threshold_confidence": 0.95}
    floors = {"min_recall": 0.9, "min_specificity": 0.6, "min_roc_auc": 0.9}
    val = {"labels": [0] * 10 + [1] * 10, "p": [0.1] * 10 + [0.5, 0.6, 0.7, 0.8, 0.9, 0.9, 0.9, 0.9, 0.9, 0.9]}
    good = {"path": "default", "seed": 1, "train_s": 1.0, "val": val,
            "test": {"labels": [0] * 5 + [1] * 5, "p": [0.1, 0.1, 0.1, 0.2, 0.3, 0.8, 0.9, 0.9, 0.9, 0.9]}}
    bad = {**good, "seed": 2, "path": "one-core",
           "test": {"labels": [0] * 5 + [1] * 5, "p": [0.9, 0.9, 0.9, 0.1, 0.1, 0.8, 0.9, 0.9, 0.9, 0.9]}}
    g, b = judge(good, rule, floors), judge(bad, rule, floors)
    assert g["passed"] and g["margins"]["specificity"] == 0.4 and g["threshold"] == b["threshold"]
    assert not b["passed"] and b["specificity"] == 0.4 and b["margins"]["specificity"] == -0.2
    md = table([g, b], floors)
    assert "| default | 1 | 1 |" in md and "| one-core | 1 | 0 |" in md


def test_aspect_response_moves_films_as_training_and_the_proxy_do():
    """The bench measures the transforms the project uses: t = 0 is the film as acquired, t = 1 is
    the counterfactual's training-transform and held-out aspect change, byte for byte."""
    import io

    from PIL import Image

    from bench.aspect_response import moved
    from cxr.shift.acquisition import ClassAcquisition, counterfactual

    facts = ClassAcquisition(aspect=(1.2, 1.5), detail_gain=(0.8, 1.5))
    rng = np.random.default_rng(3)
    img = Image.fromarray(rng.integers(0, 256, (96, 96), dtype=np.uint8), "L")
    buf = io.BytesIO()
    img.save(buf, "PNG")
    for label in (0, 1):
        assert np.array_equal(np.asarray(moved(img, label, facts, 0.0)), np.asarray(img))
        for held_out in (False, True):
            want = counterfactual(buf.getvalue(), label, facts, ("aspect",), held_out=held_out)
            assert np.array_equal(np.asarray(moved(img, label, facts, 1.0, held_out)), np.asarray(want))
    assert not np.array_equal(np.asarray(moved(img, 0, facts, 1.0)), np.asarray(moved(img, 0, facts, 1.0, True)))


def test_aspect_response_softening_keeps_the_shape():
    """Softening along the height leaves vertical stripes (constant along the height) as they are and
    blurs horizontal ones; along the width the other way round. The image keeps its size."""
    from PIL import Image

    from bench.aspect_response import softened

    stripes = np.tile((np.arange(64) // 2 % 2 * 255).astype(np.uint8), (64, 1))  # columns alternate
    vertical, horizontal = Image.fromarray(stripes, "L"), Image.fromarray(stripes.T.copy(), "L")
    assert softened(vertical, "y", 1.25).size == (64, 64)
    assert np.array_equal(np.asarray(softened(vertical, "y", 1.25)), stripes)
    assert np.array_equal(np.asarray(softened(horizontal, "x", 1.25)), stripes.T)
    assert np.abs(np.asarray(softened(horizontal, "y", 1.25), float) - stripes.T).mean() > 10
    assert np.abs(np.asarray(softened(vertical, "x", 1.25), float) - stripes).mean() > 10


def test_aspect_estimate_reads_back_what_the_features_carry():
    """Features that carry t (plus noise) read it back, on the training films and on probes; features
    that do not, read every probe as the mean."""
    from bench.aspect_estimate import read_back

    rng = np.random.default_rng(0)
    t = rng.uniform(-0.5, 1.5, 200)
    carry = lambda v: np.stack([v, rng.normal(size=len(v))], 1) + rng.normal(0, 0.05, (len(v), 2))  # noqa: E731
    train = {"carries t": carry(t), "noise": rng.normal(size=(200, 2))}
    probes = {"at 1": {"carries t": carry(np.ones(50)), "noise": rng.normal(size=(50, 2))}}
    rows = {row["features"]: row for row in read_back(train, t, probes)}
    r2, sd = (float(v) for v in rows["carries t"]["healthy train, cross-validated: R^2 / error sd"].split(" / "))
    assert r2 > 0.95 and sd < 0.1
    assert abs(float(rows["carries t"]["at 1"].split(" ± ")[0]) - 1.0) < 0.1
    assert float(rows["noise"]["healthy train, cross-validated: R^2 / error sd"].split(" / ")[0]) < 0.1
    assert abs(float(rows["noise"]["at 1"].split(" ± ")[0]) - t.mean()) < 0.15


def test_posthoc_figures_choose_on_validation_and_read_the_proxy_at_that_threshold():
    """The threshold comes from validation alone (the evaluate stage's rule on probabilities); the
    carved and proxy figures are read at it, the proxy's PNEUMONIA films being the carved split's."""
    from bench.posthoc import figures, logit

    val_y = np.array([0] * 50 + [1] * 100)
    val_z = logit(np.r_[np.linspace(0.01, 0.3, 50), np.linspace(0.4, 0.99, 100)])
    test_y = np.array([0] * 4 + [1] * 4)
    test_z = logit(np.array([0.05, 0.1, 0.2, 0.45, 0.5, 0.7, 0.9, 0.95]))
    proxy_z = logit(np.array([0.5, 0.6, 0.2, 0.1, 0.5, 0.7, 0.9, 0.95]))
    row = figures("x", {"val": val_z, "test": test_z, "proxy": proxy_z}, {"val": val_y, "test": test_y}, 0.99,
                  "empirical")
    assert 0.3 < float(row["threshold"]) < 0.41
    assert row["carved spec"] == "0.750" and row["carved recall"] == "1.000"
    assert row["proxy spec"] == "0.500"
    assert float(row["carved AUC"]) == 1.0 and float(row["proxy AUC"]) < 1.0
    assert np.allclose(1 / (1 + np.exp(-logit(np.array([0.2, 0.7])))), [0.2, 0.7])


def test_lung_fields_boxes_are_judged_and_cropped_as_the_docstring_says():
    """A lung box pair is used only when both are found, similar in size and side by side; the
    thorax crop fills the film with the two boxes (a missing or implausible left lung guessed beside
    the right one); a film with no usable box is left whole and counted."""
    from bench.lung_fields import cropped, lung_mask, plausible, thorax

    right = np.array([20, 30, 80, 160], float)
    beside = np.array([124, 30, 76, 150], float)
    patch = np.array([120, 20, 20, 40], float)
    assert plausible(right, beside)
    assert not plausible(right, patch)                                   # a small patch off the lung
    assert not plausible(right, np.array([40, 30, 80, 160], float))      # on top of the right one
    assert not plausible(np.full(4, -1.0), beside)

    mask = lung_mask(np.r_[right, beside], 224)
    assert mask.sum() == 80 * 160 + 76 * 150 and mask[100, 60] and mask[100, 150] and not mask[100, 110]
    assert lung_mask(np.r_[right, patch], 224) is None

    x0, y0, x1, y1 = thorax(np.r_[right, beside], 224, pad=0.0)
    assert (x0, y0, x1, y1) == (20, 30, 200, 190)
    assert thorax(np.r_[right, patch], 224, pad=0.0) == (20, 30, 196, 190)  # the left lung guessed past the spine
    assert thorax(np.r_[right + [40, 0, 0, 0], patch], 224, pad=0.0)[2] == 224  # clipped to the film
    assert thorax(np.full(8, -1.0), 224) is None
    assert thorax(np.r_[[20, 30, 30, 40], [60, 30, 30, 40]], 224) is None  # under 0.4 of the film

    film = np.zeros((224, 224), np.uint8)
    film[30:190, 20:200] = 200                                           # the thorax, bright
    films, whole = cropped(np.stack([film, film]), np.stack([np.r_[right, beside], np.full(8, -1.0)]))
    assert whole == 1
    assert films[0][12:-12, 12:-12].min() > 150                            # the thorax fills the frame
    assert np.array_equal(films[1], film)                                # no box: the film whole


def test_squash_estimator_reads_a_change_of_shape_and_canonical_undoes_it():
    """Fitted within films, the estimate follows a squash applied to unseen films with a slope near 1,
    though every film carries a large offset of its own; a film is moved towards the target by minus
    its estimate, clipped."""
    from bench.canonical_aspect import CANONICAL_LIMIT, SquashEstimator, canonical, squashed

    rng = np.random.default_rng(0)
    d, films, views = 40, 300, 3
    direction = rng.normal(size=d)
    label_axis = rng.normal(size=d)

    def make(n):
        own = rng.normal(size=(n, 1, d)) * 3 + rng.integers(0, 2, (n, 1, 1)) * 5 * label_axis  # constant per film
        u = rng.uniform(-0.35, 0.35, (n, views))
        u[:, 0] = 0.0
        return own + u[..., None] * direction + rng.normal(size=(n, views, d)) * 0.05, u

    x, u = make(films)
    est = SquashEstimator.fit(x, u, alpha=1.0)
    x_new, u_new = make(200)
    change = est(x_new[:, 1]) - est(x_new[:, 0])
    assert np.polyfit(u_new[:, 1], change, 1)[0] == pytest.approx(1.0, abs=0.05)
    assert np.polyfit(u_new[:, 2], est(x_new[:, 2]) - est(x_new[:, 0]), 1)[0] == pytest.approx(1.0, abs=0.05)

    film = np.zeros((224, 224), np.uint8)
    film[72:152, 72:152] = 255                                           # a bright square in the middle
    same = squashed(film[None], np.zeros(1))
    assert np.array_equal(same[0], film)

    def shape(img):  # the bright patch's height over its width
        return (img[:, 112] > 128).sum() / (img[112] > 128).sum()

    looks_wide, looks_squashed = canonical(np.stack([film, film]), np.array([-5.0, 0.2]), target=0.0)
    assert shape(looks_wide) > 1.2 and shape(looks_squashed) < 0.9       # moved towards the target, either way
    clipped = squashed(film[None], np.array([CANONICAL_LIMIT]))[0]
    assert shape(looks_wide) == shape(clipped)                            # -5 is clipped to the limit


def test_subtype_pooling_keeps_side_and_focus_that_the_average_loses():
    from bench.subtype_pooling import WAYS, pooled, scores

    rng = np.random.default_rng(0)
    n, channels = 120, 4
    y = np.arange(n) % 2
    maps = rng.normal(0, 0.1, (n, 7, 7, channels)).astype(np.float32)
    # bacterial (1): one strong focus on either side; viral (0): the same total spread over both sides
    side = rng.integers(0, 2, n)
    for i in range(n):
        if y[i]:
            maps[i, 3, 1 if side[i] else 5, 0] += 4.9
        else:
            maps[i, :, :, 0] += 0.1
    feats = {how: pooled(maps, how) for how in WAYS}
    assert feats["average"].shape == (n, channels) and feats["left, right halves"].shape == (n, 2 * channels)
    assert feats["upper, middle, lower thirds"].shape == (n, 3 * channels)
    # the stronger half is the same whichever side the focus is on
    focus = feats["stronger, weaker half"][y == 1, 0]
    assert focus.min() > feats["stronger, weaker half"][y == 0, 0].max()
    thirds = [np.arange(0, 40), np.arange(40, 80), np.arange(80, 120)]
    split = {name: (maps[idx], y[idx]) for name, idx in zip(("train", "val", "test"), thirds)}
    auc = scores(split)
    assert auc["max"][1] > 0.95 and auc["average"][1] < 0.8
