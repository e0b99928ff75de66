"""Config validation, StepInfo and windows."""

import pytest

from attnkit import AttnKitError, StepInfo
from attnkit.methods import Observe, ObserveConfig, get_method
from attnkit.core.steps import check_window


def test_step_info_progress_and_windows():
    steps = [StepInfo(i, 4, 999 - i) for i in range(4)]
    assert [s.progress for s in steps] == [0.0, 0.25, 0.5, 0.75]
    assert [s.within((0.0, 0.5)) for s in steps] == [True, True, False, False]
    assert [s.within((0.5, 1.0)) for s in steps] == [False, False, True, True]


@pytest.mark.parametrize("bad", [(0.5, 0.5), (-0.1, 0.5), (0.2, 1.5), "ab", (1,), None])
def test_bad_windows(bad):
    with pytest.raises(AttnKitError, match="steps"):
        check_window(bad)


def test_observe_config_validation():
    assert ObserveConfig(words="car, red car").words == ["car", "red car"]
    assert ObserveConfig(steps=(0.0, 0.5)).steps == [(0.0, 0.5)]
    assert ObserveConfig(resolution=[4, 4]).resolution == (4, 4)
    for kwargs, message in [
        ({"words": []}, "words is empty"),
        ({"words": ["car", ""]}, "non-empty strings"),
        ({"resolution": 0}, "resolution=0"),
        ({"resolution": (4,)}, "resolution"),
        ({"steps": []}, "at least one"),
        ({"steps": [(0.6, 0.2)]}, "0 <= start < stop <= 1"),
    ]:
        with pytest.raises(AttnKitError, match=message):
            ObserveConfig(**kwargs)


def test_method_construction_errors():
    assert Observe(words=["car"]).config.words == ["car"]
    assert Observe(ObserveConfig(words=["car"])).config.words == ["car"]
    with pytest.raises(AttnKitError, match="has no option wrods; its options are: resolution, steps, words"):
        Observe(wrods=["car"])
    with pytest.raises(AttnKitError, match="not both"):
        Observe(ObserveConfig(), words=["car"])
    with pytest.raises(AttnKitError, match="unknown method .nope.; available: a_star, attend_excite, observe, structured"):
        get_method("nope")
    assert get_method("observe") is Observe
