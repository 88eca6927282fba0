"""Method plug-ins (harness.spec.plugins, register_method, MethodLoss): the one registration call, plug-ins that live
outside the package (tests/plugins/) run end to end, sharing at λ = 0, the cache-vs-live choice, the sha256 check,
and the bad inputs that stop with one line and write nothing."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import optuna
import pytest

from harness.cli import main
from harness.spec.methods import (
    BUILTIN_METHODS,
    METHODS,
    STATES,
    get_method,
    needs_live_teacher,
    register_method,
    teacher_states,
)
from harness.util.errors import HarnessError

from conftest import TINY_FIXED, run_cli, sweep_args, write_study

pytestmark = pytest.mark.usefixtures("restore_registry")
PLUGINS = Path(__file__).resolve().parent / "plugins"
FIXED = TINY_FIXED
SEARCH = {"lr": [1e-4], "eta": [0.5], "lambda": [0.0, 0.2]}


def _study(tmp_path: Path, tiny_bert: Path, plugin: str, methods: list[str], **more) -> Path:
    """A study file in ``tmp_path`` beside a copy of ``tests/plugins/<plugin>.py`` (found from the file's folder)."""
    shutil.copy(PLUGINS / f"{plugin}.py", tmp_path / f"{plugin}.py")
    more.setdefault("fixed", FIXED)
    more.setdefault("search", SEARCH)
    return write_study(tmp_path / "tiny.yaml", tiny_bert, methods=methods, plugins=[plugin], **more)


def _trials(storage: str, method: str) -> list[optuna.trial.FrozenTrial]:
    return optuna.load_study(study_name=f"tiny/SST-2/{method}", storage=storage).get_trials()


# ----------------------------------------------------------------------------------------------- the registry
@pytest.mark.parametrize("key", list(METHODS))
def test_every_registered_method_is_a_complete_declaration(key):
    """Built-ins went through register_method like plug-ins: a λ-searching method has a loss, states are known."""
    spec = get_method(key)
    assert set(spec.states) <= set(STATES)
    assert (spec.loss is not None) == spec.searches_lambda
    assert not spec.searches_lambda or spec.searches_eta
    assert spec.plugin is None or key not in BUILTIN_METHODS
    assert spec.declaration()["key"] == key


def test_live_teacher_follows_the_declared_states():
    assert teacher_states(get_method("kd")) == ("logits",)
    assert not needs_live_teacher(get_method("alp"))
    assert needs_live_teacher(get_method("alp"), alp_tokens="all")
    assert not needs_live_teacher(get_method("ckd"), alp_tokens="all")


@pytest.mark.parametrize(
    ("call", "match"),
    [
        ({"name": "alp"}, r"method 'alp' is already registered by the built-in methods"),
        ({"name": "x1", "states": ("values",)}, r"declares teacher state 'values' \(allowed: logits, cls, tokens"),
        ({"name": "x2", "searches": ("gamma",)}, r"searches 'gamma' \(allowed: eta, lambda\)"),
        ({"name": "x3", "loss": None}, r"searches lambda but declares no loss"),
        ({"name": "bad name"}, r"invalid method name 'bad name'"),
    ],
)
def test_register_method_refuses_bad_declarations(call, match):
    kwargs = {"description": "d", "loss": lambda s, t, m, c: s.cls.sum(), **call}
    with pytest.raises(HarnessError, match=match):
        register_method(kwargs.pop("name"), **kwargs)
    assert call["name"] not in METHODS or call["name"] in BUILTIN_METHODS


# ------------------------------------------------------------------------------------------------ bad input
@pytest.mark.parametrize(
    ("plugin", "method", "match"),
    [
        ("broken_import", "kd", r"plug-in 'broken_import' failed to import: RuntimeError: the last line: missing_dep"),
        ("clashing", "kd", r"plug-in 'clashing': method 'alp' is already registered by the built-in methods"),
        ("bad_state", "kd", r"declares teacher state 'value_vectors' \(allowed: logits, cls, tokens, attentions\)"),
        ("not_scalar", "per-example", r"method 'per-example': its loss returned \(2,\) \(allowed: a scalar float"),
        ("missing_module", "kd", r"plug-in 'missing_module' not found \(looked in "),
    ],
)
def test_a_bad_plugin_stops_with_one_line_and_writes_nothing(
    plugin, method, match, tmp_path, tiny_bert, glue_dir, capsys
):
    if (PLUGINS / f"{plugin}.py").exists():
        study_file = _study(tmp_path, tiny_bert, plugin, ["nkd", method])
    else:
        study_file = write_study(tmp_path / "tiny.yaml", tiny_bert, methods=["nkd"], plugins=[plugin])
    storage = f"sqlite:///{tmp_path / 'sweep.db'}"
    assert main(["run", str(study_file), *sweep_args(storage, glue_dir, tmp_path / "cache")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("error: "), err
    assert re.search(match, err), err
    assert "Traceback" not in err
    assert not (tmp_path / "sweep.db").exists()
    assert not (tmp_path / "cache" / "teachers").exists()


# --------------------------------------------------------------------------------------------- end to end
def test_cls_plugin_sweeps_on_the_cache_shares_lambda_zero_and_reports(tmp_path, tiny_bert, glue_dir):
    """A plug-in on [CLS] states: cached teacher, its λ = 0 point is KD's trial, the sha256 of its file is stored
    with the study and each trial, the report (a fresh process, without the plug-in) shows it, and a changed file
    is refused."""
    study_file = _study(tmp_path, tiny_bert, "cls_cosine", ["nkd", "kd", "cls-cos"])
    storage = f"sqlite:///{tmp_path / 'sweep.db'}"
    common = sweep_args(storage, glue_dir, tmp_path / "cache")
    assert main(["run", str(study_file), *common]) == 0
    spec = get_method("cls-cos")
    assert spec.plugin == "cls_cosine" and not needs_live_teacher(spec)
    kd = {t.user_attrs["point"]: t for t in _trials(storage, "kd")}
    plugin = {t.user_attrs["lambda"]: t for t in _trials(storage, "cls-cos")}
    assert all(t.state.name == "COMPLETE" for t in plugin.values())
    shared = plugin[0.0]
    assert shared.user_attrs["equivalent_of"] == kd[shared.user_attrs["point"]]._trial_id
    trained = plugin[0.2]
    assert "equivalent_of" not in trained.user_attrs
    assert trained.user_attrs["plugin"]["module"] == "cls_cosine"
    assert trained.user_attrs["plugin"]["sha256"] == spec.plugin_sha256
    inter_losses = [e["losses"].get("inter") for e in trained.user_attrs["epochs"]]
    assert all(v is not None and v > 0 for v in inter_losses)

    out = tmp_path / "report"
    report = run_cli("report", "--storage", storage, "--out", str(out), "--name", "tiny")
    assert report.returncode == 0, report.stderr
    assert "cls-cos" in (out / "README.md").read_text()

    confirm = run_cli("confirm", "--top", "1", "--seeds", "1", "--name", "tiny", *common)  # finds the plug-in again
    assert confirm.returncode == 0, confirm.stderr
    seeds = [t for t in _trials(storage, "cls-cos") if t.user_attrs.get("confirmation")]
    assert len(seeds) == 1 and seeds[0].state.name == "COMPLETE"

    with open(tmp_path / "cls_cosine.py", "a") as stream:
        stream.write("# changed\n")
    again = run_cli("run", str(study_file), *common)
    assert again.returncode == 2
    assert again.stderr.strip().startswith("error: study 'tiny/SST-2/cls-cos' was run with plug-in cls_cosine sha256")
    assert len(again.stderr.strip().splitlines()) == 1


def test_plugins_on_states_the_cache_lacks_use_the_live_teacher(tmp_path, tiny_bert, glue_dir):
    """Token states and attention maps: live teacher; at λ = 0 they share with each other (both live), not with
    KD (cached logits), which agrees only to 1e-5."""
    study_file = _study(tmp_path, tiny_bert, "token_mse", ["kd", "tok-mse", "attn-kl"])
    storage = f"sqlite:///{tmp_path / 'sweep.db'}"
    assert main(["run", str(study_file), *sweep_args(storage, glue_dir, tmp_path / "cache")]) == 0
    assert needs_live_teacher(get_method("tok-mse")) and needs_live_teacher(get_method("attn-kl"))
    tok = {t.user_attrs["lambda"]: t for t in _trials(storage, "tok-mse")}
    attn = {t.user_attrs["lambda"]: t for t in _trials(storage, "attn-kl")}
    assert all(t.state.name == "COMPLETE" for t in [*tok.values(), *attn.values()])
    assert "equivalent_of" not in tok[0.0].user_attrs  # live: not KD's cached computation
    assert attn[0.0].user_attrs["equivalent_of"] == tok[0.0]._trial_id
    for trials in (tok, attn):
        assert trials[0.2].user_attrs["epochs"][0]["losses"]["inter"] > 0


def test_installed_packages_register_through_the_entry_point_group(tmp_path, monkeypatch):
    import importlib.metadata

    from harness.spec import plugins

    (tmp_path / "ep_demo.py").write_text(
        "from harness.spec.methods import register_method\n"
        "register_method('ep-demo', description='from an entry point', searches=('eta',), states=())\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    point = importlib.metadata.EntryPoint(name="demo", value="ep_demo", group=plugins.ENTRY_POINT_GROUP)
    monkeypatch.setattr(plugins.importlib.metadata, "entry_points", lambda group: [point])
    monkeypatch.setattr(plugins, "_ENTRY_POINTS_DONE", [])
    plugins.load_entry_points()
    spec = get_method("ep-demo")
    assert spec.plugin == "ep_demo" and spec.plugin_sha256 == plugins.plugin_record("ep_demo")["sha256"]
    assert not spec.searches_lambda and spec.loss is None
