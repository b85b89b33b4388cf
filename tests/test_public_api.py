"""The public API: every name in ``__all__`` resolves, and importing the package stays cheap."""

from __future__ import annotations

import inspect
import subprocess
import sys

import numpy as np
import pytest

import napari_histosge as hs
from napari_histosge.progress import run_collecting


@pytest.mark.parametrize("name", hs.__all__)
def test_every_public_name_resolves(name: str) -> None:
    assert getattr(hs, name) is not None
    assert name in dir(hs)


def test_unknown_name_is_an_attribute_error() -> None:
    with pytest.raises(AttributeError, match="no attribute 'not_a_name'"):
        hs.not_a_name  # noqa: B018


def test_importing_the_package_loads_no_heavy_dependency() -> None:
    # napari imports the package to find its manifest: that must not pull in torch or anndata.
    code = ("import sys, napari_histosge; "
            "print(','.join(m for m in ('torch', 'anndata', 'scanpy', 'napari', 'qtpy') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""


#: A tiny model: the plain functions are tested for what they return, not for accuracy.
TINY = dict(epochs=2, n_top_genes=8, head_hidden=16, dim=16, val_fraction=0.0)


@pytest.fixture(scope="module")
def tiny_model(demo):
    return hs.fit(demo, train_config=hs.train_config(**TINY))


@pytest.mark.slow
def test_plain_functions_return_their_result(demo, tiny_model) -> None:
    assert isinstance(tiny_model, hs.TrainedModel)
    at_spots = hs.predict_spots(tiny_model, demo)
    assert at_spots.n_obs == demo.n_obs and list(at_spots.var_names) == list(tiny_model.genes)
    superres = hs.superresolve(tiny_model, demo, 4)
    assert superres.n_obs >= 3 * demo.n_obs  # four positions per spot where the lattice is inside the section


def test_plain_and_generator_forms_agree(demo, tiny_model) -> None:
    plain = hs.predict_spots(tiny_model, demo)
    stepped = hs.run(hs.steps.predict_spots(tiny_model, demo))
    np.testing.assert_array_equal(np.asarray(plain.X), np.asarray(stepped.X))


def test_progress_callback_sees_every_event(demo, tiny_model) -> None:
    events: list[hs.Progress] = []
    hs.predict_spots(tiny_model, demo, progress=events.append)
    _, expected = run_collecting(hs.steps.predict_spots(tiny_model, demo))
    assert [(e.stage, e.step, e.total) for e in events] == [(e.stage, e.step, e.total) for e in expected]
    assert events, "a prediction reports its progress"


def test_progress_true_shows_a_bar(demo, tiny_model, capsys) -> None:
    hs.predict_spots(tiny_model, demo, progress=True)
    assert "predict" in capsys.readouterr().err


def test_signature_and_help_name_progress() -> None:
    parameters = inspect.signature(hs.fit).parameters
    assert "progress" in parameters and "train_config" in parameters
    assert "napari_histosge.steps.fit" in (hs.fit.__doc__ or "")


def test_run_of_a_result_says_what_changed(tiny_model) -> None:
    with pytest.raises(TypeError, match="return their result already"):
        hs.run(tiny_model)


def test_a_callback_can_cancel(demo, tiny_model) -> None:
    def stop(event: hs.Progress) -> None:
        raise hs.CancelledError("stopped by the callback")

    with pytest.raises(hs.CancelledError):
        hs.predict_spots(tiny_model, demo, progress=stop)


def test_bad_progress_argument_is_refused(demo, tiny_model) -> None:
    with pytest.raises(TypeError, match="progress must be"):
        hs.predict_spots(tiny_model, demo, progress="yes")


def test_a_raising_callback_closes_the_step() -> None:
    closed = []

    def step():
        try:
            yield hs.Progress("work", 0, 2)
            yield hs.Progress("work", 1, 2)
        finally:
            closed.append(True)

    def stop(event: hs.Progress) -> None:
        raise hs.CancelledError("stopped")

    with pytest.raises(hs.CancelledError):
        hs.run(step(), stop)
    assert closed == [True]
