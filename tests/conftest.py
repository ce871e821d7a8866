"""Shared fixtures (embedded tiny models built into a per-session cache, small media files)
and the test tiers.

Every test is in one tier, by marker: ``unit`` (no model is built: pure functions, configs,
files), ``integration`` (tiny embedded models, the loopback NDIF server), ``slow`` (minutes
on 2 cores), ``real`` (a real checkpoint on disk) and ``ndif`` (a real NDIF server). The
last three are marked by hand; the rest are sorted at collection: a test that asks for a
model fixture is ``integration``, any other is ``unit``, and a unit test that builds a
model anyway fails and says to mark it. ``make test`` runs unit and integration, ``make
test-unit`` the tier without models (about a minute on 2 cores), ``make test-slow`` the
slow one.
"""

from __future__ import annotations

import contextlib
import json
import os

import numpy as np
import pytest
import torch
from transformers import PreTrainedModel

from avmech import media
from avmech.models.planted_recipes import RECIPES

# Each planted model has two session fixtures (see `_planted_fixtures`): its checkpoint folder and the model.
PLANTED_FIXTURES = {name: name.replace("-", "_") for name in RECIPES}
MODEL_FIXTURES = frozenset({"omni", "omni_eager", "salmonn", "salmonn_eager", "qwen3_omni", "qwen3_omni_eager",
                            *PLANTED_FIXTURES.values(), *(f"{key}_dir" for key in PLANTED_FIXTURES.values())})
TIERS = ("unit", "integration", "slow", "real", "ndif")


def pytest_configure(config):
    torch.set_num_threads(1)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.hookimpl(tryfirst=True)  # before `-m` deselects by marker
def pytest_collection_modifyitems(items):
    for item in items:
        if not any(item.get_closest_marker(t) for t in TIERS):
            # a model fixture asked for by name, or by a parameter naming it (request.getfixturevalue)
            params = {v for v in getattr(getattr(item, "callspec", None), "params", {}).values() if isinstance(v, str)}
            uses_model = MODEL_FIXTURES & (set(item.fixturenames) | params)
            item.add_marker("integration" if uses_model else "unit")


@pytest.fixture(autouse=True)
def _unit_tests_build_no_model(request, monkeypatch):
    if request.node.get_closest_marker("unit"):
        def refuse(self, *args, **kwargs):
            raise AssertionError(f"{request.node.nodeid} builds a model: mark it @pytest.mark.integration")

        monkeypatch.setattr(PreTrainedModel, "__init__", refuse)


SHARED_CACHE = os.environ.get("AVMECH_CACHE")


@pytest.fixture(scope="session", autouse=True)
def _isolated_cache(tmp_path_factory):
    """Embedded models are built afresh for the test session, not read from ~/.cache (except the
    trained planted models: `planted_omni`)."""
    old = os.environ.get("AVMECH_CACHE")
    os.environ["AVMECH_CACHE"] = str(tmp_path_factory.mktemp("avmech-cache"))
    yield
    if old is None:
        os.environ.pop("AVMECH_CACHE", None)
    else:
        os.environ["AVMECH_CACHE"] = old


@pytest.fixture(scope="session")
def omni():
    import avmech

    return avmech.load("tiny-omni", seed=0)


@pytest.fixture(scope="session")
def omni_eager():
    import avmech

    return avmech.load("tiny-omni", seed=0, attn_implementation="eager")


@pytest.fixture(scope="session")
def salmonn():
    import avmech

    return avmech.load("tiny-salmonn", seed=0)


@pytest.fixture(scope="session")
def salmonn_eager():
    import avmech

    return avmech.load("tiny-salmonn", seed=0, attn_implementation="eager")


@pytest.fixture(scope="session")
def qwen3_omni():
    import avmech

    return avmech.load("tiny-qwen3-omni", seed=0)


@pytest.fixture(scope="session")
def qwen3_omni_eager():
    import avmech

    return avmech.load("tiny-qwen3-omni", seed=0, attn_implementation="eager")


@contextlib.contextmanager
def _user_cache():
    """The user's model cache (where the planted models are trained on first use, minutes on 2
    cores, and `make figures` then reuses them) instead of the test session's."""
    test_cache = os.environ["AVMECH_CACHE"]
    if SHARED_CACHE is None:
        os.environ.pop("AVMECH_CACHE")
    else:
        os.environ["AVMECH_CACHE"] = SHARED_CACHE
    try:
        yield
    finally:
        os.environ["AVMECH_CACHE"] = test_cache


@pytest.fixture
def user_cache():
    """One test in the user's model cache: a planted model that test loads by name (a CLI run) is the one
    trained there once and reused, not trained again in the test session's cache."""
    with _user_cache():
        yield


def _planted_dir(name: str):
    """A planted model's checkpoint in the user's cache: its recipe's digest names it, so a changed
    recipe trains a new one (on the recipe's threads)."""
    from avmech.models.registry import embedded_path

    with _user_cache():
        return embedded_path(name, 0)


def _planted(name: str):
    """A planted model, loaded by the registry as every demo model is."""
    import avmech

    with _user_cache():
        return avmech.load(name)


def _planted_fixtures(name: str, key: str):
    """``<key>_dir``, the planted model's checkpoint folder (trained on first use), and ``<key>``, the model."""
    @pytest.fixture(scope="session", name=f"{key}_dir")
    def folder():
        return _planted_dir(name)

    @pytest.fixture(scope="session", name=key)
    def model(request):
        request.getfixturevalue(f"{key}_dir")
        return _planted(name)

    return folder, model


for _name, _key in PLANTED_FIXTURES.items():
    globals()[f"_{_key}_dir"], globals()[f"_{_key}"] = _planted_fixtures(_name, _key)


@pytest.fixture(scope="session")
def planted_fixture(request):
    """``planted_fixture(name)``: the planted model ``name`` (a `RECIPES` key) when a test picks it by a
    parameter; ``planted_fixture(name, folder=True)``: its checkpoint folder."""
    return lambda name, folder=False: request.getfixturevalue(PLANTED_FIXTURES[name] + ("_dir" if folder else ""))


@pytest.fixture(scope="session")
def media_dir(tmp_path_factory):
    """clip.mp4 (4.5 s, 8 fps, a moving square, a rising chirp), silent.mp4, tone.wav, img*.png."""
    d = tmp_path_factory.mktemp("media")
    frames = media.moving_shape_frames(36, 56, 84, "square", color=(240, 40, 40), background=(20, 20, 60))
    media.write_video(d / "clip.mp4", frames, fps=8, audio=media.chirp(300, 900, 4.5))
    media.write_video(d / "silent.mp4", frames[:16], fps=8)
    media.write_audio(d / "tone.wav", media.tone(440, 1.5))
    from PIL import Image

    for i, color in enumerate([(255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 0)]):
        img = np.zeros((56, 56, 3), dtype=np.uint8)
        img[8:48, 8:48] = color
        Image.fromarray(img).save(d / f"img{i + 1}.png")
    return d
