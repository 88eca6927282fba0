"""One more searched value per method (search.extra): KD's temperature, ALP's alp_scale, as grid axes; sharing
stays exact (ALP at λ = 0 is KD at the study's fixed temperature, whatever its alp_scale)."""

from __future__ import annotations

import optuna
import pytest

from harness.cli import main
from harness.spec.config import grid_points, load_study, point_key
from harness.sweep.sharing import computation, grid_owners, plan
from harness.util.errors import HarnessError

from conftest import TINY_FIXED, sweep_args, write_study

FIXED = TINY_FIXED
SEARCH = {
    "lr": [1e-4],
    "eta": [0.5],
    "lambda": [0.0, 0.2],
    "extra": {"temperature": [1.0, 2.0], "alp_scale": ["1", "sqrt_d"]},
}


def test_extra_axes_enter_the_grid_the_keys_and_sharing(tmp_path, tiny_bert):
    config = load_study(write_study(tmp_path / "x.yaml", tiny_bert, methods=["kd", "alp"], search=SEARCH))
    assert [point_key(p) for p in grid_points(config, "kd")] == [
        "lr=0.0001,eta=0.5,lambda=0,temperature=1",
        "lr=0.0001,eta=0.5,lambda=0,temperature=2",
    ]
    assert len(grid_points(config, "alp")) == 4
    assert plan(config) == {"kd": (2, 2), "alp": (4, 2)}  # both λ = 0 points of ALP are KD's T = 1 trial
    owners = grid_owners(config)
    assert owners[("alp", "lr=0.0001,eta=0.5,lambda=0,alp_scale=sqrt_d")] == "kd"
    assert computation(config, "kd", grid_points(config, "kd")[1]) != computation(
        config, "kd", grid_points(config, "kd")[0]
    )
    plain = load_study(write_study(tmp_path / "p.yaml", tiny_bert, methods=["kd", "alp"]))
    assert "extra" not in str(plain.fingerprint("kd")) and plain.fingerprint("kd") != config.fingerprint("kd")


@pytest.mark.parametrize(
    ("search", "match"),
    [
        ({"extra": {"dropout": [0.1]}}, r"no listed method searches 'dropout' \(allowed: alp_scale, temperature\)"),
        ({"extra": {"temperature": [2.0]}, "sampler": "tpe"}, r"search.extra needs sampler: grid"),
    ],
)
def test_bad_extra_axes_are_one_line_errors(search, match, tmp_path, tiny_bert):
    with pytest.raises(HarnessError, match=match):
        load_study(write_study(tmp_path / "x.yaml", tiny_bert, methods=["kd", "alp"], search={**SEARCH, **search}))


def test_a_sweep_over_the_extra_axes_trains_each_value(tmp_path, tiny_bert, glue_dir):
    study = write_study(tmp_path / "x.yaml", tiny_bert, methods=["kd", "alp"], fixed=FIXED, search=SEARCH)
    storage = f"sqlite:///{tmp_path / 'sweep.db'}"
    assert main(["run", str(study), *sweep_args(storage, glue_dir, tmp_path / "cache")]) == 0
    kd = {t.user_attrs["temperature"]: t for t in optuna.load_study(study_name="tiny/SST-2/kd", storage=storage).trials}
    alp = {
        (t.user_attrs["lambda"], t.user_attrs["alp_scale"]): t
        for t in optuna.load_study(study_name="tiny/SST-2/alp", storage=storage).trials
    }
    assert all(t.state.name == "COMPLETE" for t in [*kd.values(), *alp.values()])
    t1, t2 = (kd[t].user_attrs["epochs"][0]["losses"]["kd"] for t in (1.0, 2.0))
    assert t1 != t2  # the temperature reached the KD term
    assert alp[(0.0, "sqrt_d")].user_attrs["equivalent_of"] == kd[1.0]._trial_id
    one, sqrt_d = (alp[(0.2, s)].user_attrs["epochs"][0]["losses"]["inter"] for s in ("1", "sqrt_d"))
    assert one != sqrt_d and "equivalent_of" not in alp[(0.2, "1")].user_attrs
