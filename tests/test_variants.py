"""Variants in one report: two study files that differ in one fixed value (``alp_scale``), each with a ``label``,
give rows ``alp [1]`` and ``alp [sqrt_d]`` in one report, with the equal-budget table and paired tests across them."""

from __future__ import annotations

import re

from harness.cli import main
from harness.spec.config import load_study

from conftest import TINY_FIXED, run_cli, sweep_args, write_study

FIXED = TINY_FIXED
SEARCH = {"lr": [1e-4], "eta": [0.5], "lambda": [0.2]}


def test_label_is_part_of_the_row_key_not_of_the_fingerprint(tmp_path, tiny_bert):
    plain = load_study(write_study(tmp_path / "a.yaml", tiny_bert, fixed=FIXED, search=SEARCH))
    labelled = load_study(write_study(tmp_path / "b.yaml", tiny_bert, fixed=FIXED, search=SEARCH, label="sqrt_d"))
    assert plain.row_key("alp") == "alp" and labelled.row_key("alp") == "alp [sqrt_d]"
    assert plain.fingerprint("alp") == labelled.fingerprint("alp")


def test_two_labelled_study_files_share_one_report(tmp_path, tiny_bert, glue_dir):
    storage = f"sqlite:///{tmp_path / 'sweep.db'}"
    common = sweep_args(storage, glue_dir, tmp_path / "cache")
    for name, scale in (("v-one", "1"), ("v-sqrt", "sqrt_d")):
        study = write_study(
            tmp_path / f"{name}.yaml",
            tiny_bert,
            name=name,
            label=scale,
            methods=["kd", "alp"],
            fixed={**FIXED, "alp_scale": scale},
            search=SEARCH,
        )
        assert main(["run", str(study), *common]) == 0
    out = tmp_path / "report"
    report = run_cli("report", "--storage", storage, "--out", str(out))
    assert report.returncode == 0, report.stderr
    text = (out / "README.md").read_text()
    for row in ("kd [1]", "alp [1]", "kd [sqrt_d]", "alp [sqrt_d]"):
        assert row in text, row
    assert re.search(r"\| alp \[1\] \| alp \[sqrt_d\] \|", text), "paired test of the two ALP variants"
    assert re.search(r"\| kd \[1\] \| kd \[sqrt_d\] \|", text), "paired test of the two KD variants"
