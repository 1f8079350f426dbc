"""Patient-level splitting: no patient and no byte-identical image on two sides."""

import random

import pytest

from cxr import UserError
from cxr.data.manifest import parse_name
from cxr.data.splitting import assign, check_no_leak, summary


def make_rows(n_normal=60, n_pneu=120, with_test=False, seed=0):
    rng = random.Random(seed)
    rows = []
    for label, n, fmt in (("NORMAL", n_normal, "IM-{p:04d}-{i:04d}.jpeg"), ("PNEUMONIA", n_pneu, "person{p}_bacteria_{i}.jpeg")):
        for p in range(n):
            for i in range(rng.randint(1, 4)):
                name = fmt.format(p=p, i=i)
                split = "test" if with_test and p % 5 == 0 else "train"
                facts = parse_name(name)
                rows.append({"path": f"images/{split}/{label}/{name}", "label": label, "source_split": split,
                             "patient_id": facts.patient_id, "subtype": facts.subtype,
                             "sha256": f"{label}{p}-{i}", "bytes": 1})
    return rows


def test_parse_name():
    assert parse_name("person1234_bacteria_3456.jpeg").patient_id == "person1234"
    assert parse_name("person12_virus_34.jpeg").subtype == "virus"
    assert parse_name("IM-0115-0001.jpeg").patient_id == "IM-0115"
    assert parse_name("NORMAL2-IM-0041-0001.jpeg").patient_id == "IM-0041"
    assert parse_name("weird.png").patient_id == "weird"


def test_split_is_patient_level_stratified_and_seeded():
    rows = make_rows()
    a = assign(rows, 0.15, 0.15, seed=1)
    check_no_leak(rows, a)
    assert a == assign(rows, 0.15, 0.15, seed=1)
    assert a != assign(rows, 0.15, 0.15, seed=2)
    s = summary(rows, a)
    for split in ("val", "test"):
        share = s[split]["images"] / len(rows)
        assert 0.10 < share < 0.20
        assert s[split]["NORMAL"] > 0 and s[split]["PNEUMONIA"] > 0
    patients = {split: {r["patient_id"] for r, x in zip(rows, a) if x == split} for split in ("train", "val", "test")}
    assert not (patients["train"] & patients["val"]) and not (patients["train"] & patients["test"])


def test_duplicate_bytes_are_kept_on_one_side():
    rows = make_rows()
    # The same bytes under two different patients must not straddle splits.
    for k in range(0, 40, 2):
        rows[k + 1]["sha256"] = rows[k]["sha256"] = f"dup{k}"
    a = assign(rows, 0.3, 0.3, seed=3)
    check_no_leak(rows, a)


def test_source_test_folder_is_used_unchanged():
    rows = make_rows(with_test=True)
    a = assign(rows, 0.1, 0.5, seed=0)
    assert [x == "test" for x in a] == [r["source_split"] == "test" for r in rows]
    check_no_leak(rows, a)


def test_train_images_of_a_test_patient_are_dropped():
    rows = make_rows(with_test=True)
    test_row = next(r for r in rows if r["source_split"] == "test")
    leak = dict(test_row, path="images/train/x.jpeg", source_split="train", sha256="other")
    a = assign(rows + [leak], 0.1, 0.0, seed=0)
    assert a[-1] == ""
    check_no_leak(rows + [leak], a)


def test_check_no_leak_catches_a_leak():
    rows = make_rows()
    a = assign(rows, 0.2, 0.2, seed=0)
    i = next(i for i, s in enumerate(a) if s == "val")
    j = next(j for j, s in enumerate(a) if s == "train")
    rows[i]["patient_id"] = rows[j]["patient_id"]
    with pytest.raises(AssertionError, match="leak"):
        check_no_leak(rows, a)


@pytest.mark.parametrize("val, test", [(-0.1, 0.1), (0.5, 0.5), (1.0, 0.0)])
def test_bad_fractions(val, test):
    with pytest.raises(UserError, match="split"):
        assign(make_rows(), val, test, seed=0)
