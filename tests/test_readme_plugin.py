"""The README's "Adding a KD method" example, extracted and run as it is (teacher and sizes made tiny)."""

from __future__ import annotations

import re

import optuna
import pytest
import yaml

from harness.cli import main

from conftest import REPO, TINY_FIXED, sweep_args

pytestmark = pytest.mark.usefixtures("restore_registry")


def readme_example() -> tuple[str, str]:
    """The ```python and the ```yaml block of the README's "Adding a KD method" section."""
    text = (REPO / "README.md").read_text()
    section = text.split("### Adding a KD method", 1)[1].split("\n## ", 1)[0]
    python = re.findall(r"```python\n(.*?)```", section, re.S)
    study = re.findall(r"```yaml\n(.*?)```", section, re.S)
    assert len(python) == 1 and len(study) == 1, "the section holds one python and one yaml block"
    return python[0], study[0]


def test_the_readme_plugin_is_about_30_lines():
    code, _ = readme_example()
    assert 20 <= len(code.strip().splitlines()) <= 40


def test_the_readme_plugin_and_study_file_run(tmp_path, tiny_bert, glue_dir):
    code, study_text = readme_example()
    study = yaml.safe_load(study_text)
    (tmp_path / f"{study['plugins'][0]}.py").write_text(code)
    study.update(teacher=str(tiny_bert), fixed=TINY_FIXED)  # tiny model and data; methods and grid as written
    (tmp_path / "mine.yaml").write_text(yaml.safe_dump(study))
    storage = f"sqlite:///{tmp_path / 'sweep.db'}"
    assert main(["run", str(tmp_path / "mine.yaml"), *sweep_args(storage, glue_dir, tmp_path / "cache")]) == 0
    name = f"{study['name']}/SST-2/bucket-mean"
    trials = {t.user_attrs["lambda"]: t for t in optuna.load_study(study_name=name, storage=storage).get_trials()}
    assert all(t.state.name == "COMPLETE" for t in trials.values())
    assert "equivalent_of" in trials[0.0].user_attrs  # λ = 0 is KD's trial
    assert trials[0.2].user_attrs["epochs"][0]["losses"]["inter"] > 0
