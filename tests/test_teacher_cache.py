"""Teacher outputs cached on disk: equal to live outputs, same trial result, corruption detected and rebuilt."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from harness.distill.batches import to_batch
from harness.distill.experiment import Experiment
from harness.distill.losses import InterLayerLoss
from harness.distill.teacher import read_outputs
from harness.distill.train import Hyper, LossTerms
from harness.spec.config import parse_study
from harness.spec.methods import get_method


def make_experiment(tiny_bert, glue_dir, cache, methods=("alp",), **fixed) -> Experiment:
    config = parse_study(
        {
            "name": "cache",
            "task": "SST-2",
            "teacher": str(tiny_bert),
            "student_layers": 2,
            "methods": list(methods),
            "fixed": {
                "epochs": 2,
                "max_seq_length": 32,
                "max_train_samples": 96,
                "eval_batch_size": 512,
                "teacher": {"epochs": 1, "lr": 1e-4, "max_train_samples": 64},
                **fixed,
            },
            "search": {"lr": [1e-4], "eta": [0.5], "lambda": [0.3]},
        }
    )
    return Experiment(config, glue_dir, cache, progress=False)


@pytest.fixture(scope="module")
def experiment(tiny_bert, glue_dir, tmp_path_factory):
    return make_experiment(tiny_bert, glue_dir, tmp_path_factory.mktemp("cache"))


def test_cached_outputs_equal_live_outputs(experiment):
    cached = experiment.teacher.signal(live=False)
    live = experiment.teacher.signal(live=True)
    teacher_cfg = live.live.config
    inter = InterLayerLoss(get_method("alp"), teacher_cfg.num_hidden_layers, 2, 32, 32)
    device = torch.device("cpu")
    index = np.array([5, 0, 17, 3, 60, 41])  # unsorted on purpose: rows must come back in batch order
    batch = to_batch(experiment.train, index, experiment.pad_token_id, device)
    batch.pop("labels")
    from_cache = LossTerms(experiment.task, Hyper(lr=1e-4), inter, cached, device)._teacher_outputs(batch, index)
    from_live = LossTerms(experiment.task, Hyper(lr=1e-4), inter, live, device)._teacher_outputs(batch, index)
    # Tolerance: the cache was computed in length-sorted batches, so padding differs; 1e-5 absolute.
    torch.testing.assert_close(from_cache.logits, from_live.logits, atol=1e-5, rtol=0)
    torch.testing.assert_close(from_cache.cls, from_live.cls, atol=1e-5, rtol=0)


def test_trial_with_cache_matches_trial_with_live_teacher(tiny_bert, glue_dir, tmp_path, experiment):
    point = {"lr": 1e-4, "eta": 0.5, "lambda": 0.3}
    cached = experiment.run_trial("alp", point)
    live = make_experiment(tiny_bert, glue_dir, experiment.cache_dir, teacher_outputs="live").run_trial("alp", point)
    # Stated tolerance: per-epoch mean losses agree to 1e-4 relative; dev accuracy to one example in 872.
    for a, b in zip(cached.epochs, live.epochs):
        for term in ("ce", "kd", "inter", "total"):
            assert a["losses"][term] == pytest.approx(b["losses"][term], rel=1e-4)
    assert abs(cached.best_value - live.best_value) <= 1 / 872 + 1e-12


@pytest.mark.parametrize("damage", ["flip a byte", "truncate", "drop the manifest", "wrong row count"])
def test_corrupt_or_partial_cache_is_detected_and_rebuilt(tiny_bert, glue_dir, tmp_path, damage):
    first = make_experiment(tiny_bert, glue_dir, tmp_path)
    good = first.teacher.signal(live=False)
    reference = np.array(good.cls)
    folder = first.teacher.outputs_dir()
    cls_file = folder / "cls.npy"
    if damage == "flip a byte":
        data = bytearray(cls_file.read_bytes())
        data[-7] ^= 0xFF
        cls_file.write_bytes(bytes(data))
    elif damage == "truncate":
        cls_file.write_bytes(cls_file.read_bytes()[:1000])
    elif damage == "drop the manifest":
        (folder / "manifest.json").unlink()
    else:
        manifest = json.loads((folder / "manifest.json").read_text())
        manifest["cls"]["shape"][0] += 1
        (folder / "manifest.json").write_text(json.dumps(manifest))
    assert read_outputs(folder, len(first.train)) is None  # never used as it is
    rebuilt = make_experiment(tiny_bert, glue_dir, tmp_path).teacher.signal(live=False)
    np.testing.assert_array_equal(np.array(rebuilt.cls), reference)
    assert read_outputs(folder, len(first.train)) is not None


def test_float16_cache_halves_the_file_and_stays_close(tiny_bert, glue_dir, tmp_path, experiment):
    half = make_experiment(tiny_bert, glue_dir, experiment.cache_dir, teacher_cache_dtype="float16")
    small = half.teacher.signal(live=False)
    full = experiment.teacher.signal(live=False)
    assert small.cls.dtype == np.float16 and full.cls.dtype == np.float32
    assert (half.teacher.outputs_dir() / "cls.npy").stat().st_size < 0.6 * (
        experiment.teacher.outputs_dir() / "cls.npy"
    ).stat().st_size
    np.testing.assert_allclose(np.asarray(small.cls, dtype=np.float32), full.cls, rtol=2e-3, atol=2e-3)


def test_ckd_projections_are_saved_with_the_student(tiny_bert, glue_dir, experiment, tmp_path):
    from harness.distill.models import build_student

    target = tmp_path / "student"
    experiment.run_trial("ckd", {"lr": 1e-3, "eta": 0.2, "lambda": 0.5}, seed=5, save_to=target)
    saved = torch.load(target / "inter_layer_loss.pt")
    assert saved and all("ckd_proj" in key for key in saved)
    # The same construction as in run_trial gives the untrained projections: the saved ones moved.
    student = build_student(str(tiny_bert), 2, 2, "bottom", seed=5)
    fresh = InterLayerLoss(get_method("ckd"), 4, 2, student.config.hidden_size, 32).state_dict()
    assert fresh.keys() == saved.keys()
    assert all(not torch.equal(fresh[k], saved[k]) for k in saved)
    assert (target / "config.json").is_file() and (target / "model.safetensors").is_file()


def test_alpha_probe_reads_the_cached_dev_states(tiny_bert, glue_dir, experiment, monkeypatch):
    """The α probe's dev [CLS] states are kept in the teacher's folder: a second process (a fresh Experiment)
    runs no teacher pass for them, and gets the same states and the same α as live ones."""
    from harness.distill import teacher as teacher_module
    from harness.distill.train import predict

    states = experiment.teacher.dev_cls()
    folder = experiment.teacher.dev_states_dir()
    assert (folder / "manifest.json").is_file() and folder.parent == experiment.teacher.folder()
    dev = experiment.evals["dev"]
    _, live = predict(
        experiment.teacher.load_model(), dev, 512, experiment.pad_token_id, torch.device("cpu"), True, "fp32"
    )
    np.testing.assert_array_equal(states, live)

    def no_teacher_pass(*args, **kwargs):
        raise AssertionError("the dev states should come from the cache")

    monkeypatch.setattr(teacher_module, "predict", no_teacher_pass)
    second = make_experiment(tiny_bert, glue_dir, experiment.cache_dir)
    np.testing.assert_array_equal(second.teacher.dev_cls(), states)
    inter = InterLayerLoss(get_method("alp"), 4, 2, 32, 32)
    student = np.random.default_rng(0).standard_normal((len(dev), 2, 32)).astype(np.float32)
    cached_alpha = second.alpha_probe(inter)(student)
    second.teacher._dev_cls = live  # what the probe used before the cache: the live teacher's states
    assert second.alpha_probe(inter)(student) == cached_alpha

    # a damaged cache is never read: rebuilt (here it would need the teacher, so it asks for predict)
    (folder / "cls.npy").write_bytes(b"broken")
    with pytest.raises(AssertionError, match="from the cache"):
        make_experiment(tiny_bert, glue_dir, experiment.cache_dir).teacher.dev_cls()


def test_the_dev_states_come_from_the_teachers_dev_scoring(tiny_bert, glue_dir, tmp_path, monkeypatch):
    """Fine-tuning a teacher for a study with ALP keeps the last epoch's dev [CLS] states (the pass that scores
    it): the α probe then needs no teacher pass of its own, and the states equal a float32 pass over dev. A
    KD-only study's teacher keeps none; an ALP study on that teacher builds them once, on first need."""
    from harness.distill import teacher as teacher_module
    from harness.distill.train import predict

    def no_teacher_pass(*args, **kwargs):
        raise AssertionError("the dev states should come from the teacher's dev scoring")

    monkeypatch.setattr(teacher_module, "predict", no_teacher_pass)  # fit scores through train.predict
    alp = make_experiment(tiny_bert, glue_dir, tmp_path / "alp")
    states = alp.teacher.dev_cls()
    _, live = predict(alp.teacher.load_model(), alp.evals["dev"], 512, alp.pad_token_id, torch.device("cpu"), True)
    np.testing.assert_array_equal(states, live)
    assert _made_by(alp) == teacher_module.SCORING

    kd = make_experiment(tiny_bert, glue_dir, tmp_path / "kd", methods=("kd",))
    kd.teacher.prepare()
    assert not list(kd.teacher.folder().glob("dev_states-*"))
    with pytest.raises(AssertionError, match="dev scoring"):
        kd.teacher.dev_cls()  # the ALP study's first need: one pass (here refused, to show it is asked for)
    monkeypatch.undo()
    np.testing.assert_array_equal(kd.teacher.dev_cls(), states)  # same teacher weights (same seed): same states
    assert _made_by(kd) == teacher_module.OWN_PASS


def _made_by(experiment: Experiment) -> str:
    return json.loads((experiment.teacher.dev_states_dir() / "manifest.json").read_text())["made_by"]
