"""Lesson settings, environment helpers and recorded metrics."""
import json

import nbformat
import numpy as np
import pandas as pd
import pytest
import torch

import tlkit
from tlkit import config, env
from tlkit.record import MIME, RECORDED, read_notebook_metrics, to_jsonable


def test_auto_preset_is_quick_on_cpu_and_none_takes_preset_values():
    cfg = tlkit.setup(preset="auto", device="cpu", quick=dict(image_size=96, epochs=2), full=dict(image_size=224, epochs=8),
                      image_size=None, epochs=3, verbose=False)
    assert cfg.preset == "quick" and cfg.device.type == "cpu"
    assert cfg.image_size == 96 and cfg.epochs == 3
    assert config.resolve_preset("auto", torch.device("cuda")) == "full"


def test_bad_parameters_are_refused_with_the_fix():
    with pytest.raises(config.ParameterError, match="not one of"):
        tlkit.setup(preset="fast", verbose=False)
    with pytest.raises(config.ParameterError, match="wrong type"):
        tlkit.setup(preset="quick", quick=dict(epochs=2), epochs="two", verbose=False)
    with pytest.raises(config.ParameterError, match="integer"):
        tlkit.setup(preset="quick", seed=1.5, verbose=False)
    cfg = tlkit.setup(preset="quick", quick=dict(subset=0.5), subset=1, verbose=False)
    assert cfg.subset == 1.0 and isinstance(cfg.subset, float)
    with pytest.raises(AttributeError, match="known"):
        cfg.nonexistent
    with pytest.raises(config.ParameterError):
        config.check_fraction("subset", 0)


@pytest.mark.parametrize("name, value", [("subset", 0.0), ("subset", 1.5), ("dissimilar_subset", -0.1),
                                         ("val_fraction", 2), ("fractions", [0.1, 0.0]), ("fractions", [1.2])])
def test_fractions_outside_zero_one_are_refused_before_the_run(name, value):
    quick = {name: [0.5] if name == "fractions" else 0.5}
    with pytest.raises(config.ParameterError, match=f"{name}=.*must be a fraction in \\(0, 1\\]"):
        tlkit.setup(preset="quick", quick=quick, verbose=False, **{name: value})
    assert tlkit.setup(preset="quick", quick=quick, verbose=False).values[name] == quick[name]


def test_seed_everything_repeats_draws():
    env.seed_everything(5)
    a = (torch.rand(3), np.random.rand(3))
    env.seed_everything(5)
    b = (torch.rand(3), np.random.rand(3))
    assert torch.equal(a[0], b[0]) and np.array_equal(a[1], b[1])


def test_pick_device_refuses_missing_cuda():
    if torch.cuda.is_available():
        pytest.skip("CUDA present")
    with pytest.raises(RuntimeError, match="CUDA is not available"):
        env.pick_device("cuda")
    assert env.pick_device("auto").type in ("cpu", "mps")


def test_environment_report_has_versions():
    rep = env.environment_report()
    assert rep["torch"] == torch.__version__ and rep["device"] in ("cpu", "cuda", "mps")
    assert rep["cpu_threads"] >= 1


def test_to_jsonable_converts_library_types():
    df = pd.DataFrame({"a": [1, 2], "b": [0.5, np.nan]})
    got = to_jsonable({"t": torch.tensor([1.5, 2.0]), "n": np.float32(0.25), "i": np.int64(3), "df": df,
                              "nan": float("nan")})
    assert got == {"t": [1.5, 2.0], "n": 0.25, "i": 3, "df": [{"a": 1, "b": 0.5}, {"a": 2, "b": None}], "nan": None}
    with pytest.raises(TypeError):
        to_jsonable(object())


def test_record_roundtrip_through_a_notebook():
    assert tlkit.record("acc", np.float64(0.75)) == 0.75
    assert RECORDED["acc"] == 0.75
    nb = nbformat.v4.new_notebook()
    cell = nbformat.v4.new_code_cell("x")
    cell.outputs = [nbformat.v4.new_output("display_data", data={MIME: {"acc": 0.9}, "text/plain": "x"}),
                    nbformat.v4.new_output("display_data", data={MIME: json.dumps({"table": [1, 2]})})]
    nb.cells.append(cell)
    assert read_notebook_metrics(nb) == {"acc": 0.9, "table": [1, 2]}
    with pytest.raises(ValueError, match="identifier"):
        tlkit.record("bad name", 1)
