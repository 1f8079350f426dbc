"""bench/sweep.py groups DVC experiments by configuration (seed aside) and reports mean ± sd."""

import json

from bench.sweep import experiments, group, main, spread


def exp(name, seed, mix, auc):
    params = {"params.yaml": {"data": {"train": {"seed": seed, "reacquire": {"class_mix": mix}}}}}
    metrics = {"metrics.json": {"data": {"test": {"roc_auc": auc}, "proxy": {"specificity": auc - 0.3}}}}
    return {"rev": name, "name": name, "data": {"params": params, "metrics": metrics}}


SHOW = [{"rev": "abc", "experiments": [{"revs": [exp("a-s1", 1, None, 0.99), exp("a-s2", 2, None, 0.97),
                                                 exp("b-s1", 1, [0, 1], 0.95)]}]},
        {"rev": "workspace", "experiments": None}]


def test_experiments_are_grouped_by_everything_but_the_seed():
    groups = group(experiments(SHOW))
    assert sorted(len(v) for v in groups.values()) == [1, 2]
    assert [k for k, _ in next(iter(groups))] == ["train.reacquire.class_mix"]


def test_spread_is_mean_and_sample_sd():
    assert spread([0.99, 0.97]) == "0.980 ± 0.014"
    assert spread([0.5]) == "0.500" and spread([None]) == "–"


def test_table_from_a_saved_show(tmp_path, capsys):
    path = tmp_path / "show.json"
    path.write_text(json.dumps(SHOW))
    assert main(["--from-file", str(path), "--names", "a-*", "--json", str(tmp_path / "rows.json")]) == 0
    table = capsys.readouterr().out
    assert "| 2 (1, 2) | 0.980 ± 0.014 |" in table
    assert [r["name"] for r in json.loads((tmp_path / "rows.json").read_text())] == ["a-s1", "a-s2"]
    assert main(["--from-file", str(path), "--names", "zzz"]) == 2
