"""Nested grids are the same computation: every inter-layer method at λ = 0 is KD, KD at η = 0 is NKD.

This is what lets a sweep train such a point once and share it (:mod:`harness.sweep.sharing`): the test
trains both sides through :meth:`Experiment.run_trial`, the code path of every trial, and asserts
identical per-epoch losses and dev scores, bit for bit, on CPU.
"""

from __future__ import annotations

import pytest

from harness.distill.experiment import Experiment
from harness.spec.config import load_study
from harness.spec.methods import METHODS, get_method

from conftest import TINY_FIXED, write_study

INTER = [m for m in METHODS if get_method(m).inter is not None]
SHARED_TERMS = ("ce", "kd", "total")


@pytest.fixture(scope="module")
def experiment(tmp_path_factory, tiny_bert, glue_dir):
    folder = tmp_path_factory.mktemp("equivalence")
    path = write_study(
        folder / "tiny.yaml",
        tiny_bert,
        methods=list(METHODS),
        fixed={**TINY_FIXED, "epochs": 2},
    )
    return Experiment(load_study(path), glue_dir, folder / "cache", progress=False)


def _run(experiment, method: str, eta: float, lam: float):
    return experiment.run_trial(method, {"lr": 5e-4, "eta": eta, "lambda": lam}, seed=7)


def _same(a, b, terms) -> None:
    assert [e["value"] for e in a.epochs] == [e["value"] for e in b.epochs]
    assert [e["metrics"] for e in a.epochs] == [e["metrics"] for e in b.epochs]
    for ea, eb in zip(a.epochs, b.epochs):
        assert {t: ea["losses"][t] for t in terms} == {t: eb["losses"][t] for t in terms}


@pytest.mark.parametrize("method", INTER)
def test_inter_layer_method_at_lambda_zero_is_kd(experiment, method):
    kd = _run(experiment, "kd", 0.5, 0.0)
    other = _run(experiment, method, 0.5, 0.0)
    _same(kd, other, SHARED_TERMS)
    assert other.epochs[0]["losses"]["inter"] > 0  # the term is computed, only weighted by 0
    moved = _run(experiment, method, 0.3, 0.2)  # and λ > 0 is a different computation
    assert [e["losses"]["total"] for e in moved.epochs] != [e["losses"]["total"] for e in kd.epochs]


@pytest.mark.parametrize("method", ["kd", *INTER])
def test_every_method_at_eta_and_lambda_zero_is_nkd(experiment, method):
    _same(_run(experiment, "nkd", 0.0, 0.0), _run(experiment, method, 0.0, 0.0), ("ce", "total"))
