"""Arguments a user types into the Python API: refused before the pipeline is touched, in one line."""

from __future__ import annotations

import pytest
import torch

import attnkit
from attnkit import AttnKitError
from attnkit.methods import AStar, AttendExcite, Observe

from ..conftest import FAST


@pytest.mark.parametrize("kwargs, message", [
    (dict(num_inference_steps=0), "num_inference_steps must be a whole number from 1 to 1000, got 0"),
    (dict(num_inference_steps=2.5), "num_inference_steps must be a whole number from 1 to 1000, got 2.5"),
    (dict(height=-64), "height must be a positive multiple of 8 (pixels), got -64"),
    (dict(width=60), "width must be a positive multiple of 8 (pixels), got 60"),
    (dict(guidance_scale=float("nan")), "guidance_scale must be a finite number"),
    (dict(seed=2**70), "seed must be an integer from 0 to 2**64 - 1"),
])
def test_generate_refuses_bad_arguments_before_touching_the_pipeline(sd15, kwargs, message):
    processors = dict(sd15.unet.attn_processors)
    with pytest.raises(AttnKitError) as err:
        attnkit.generate(sd15, "a red car", [Observe(words=["car"])], **{"seed": 0, **kwargs})
    assert message in str(err.value) and "\n" not in str(err.value)
    assert all(sd15.unet.attn_processors[k] is v for k, v in processors.items())


def test_a_single_method_instead_of_a_list_is_a_clear_error(sd15):
    with pytest.raises(AttnKitError, match=r"methods is a list: pass \[Observe\(...\)\]"):
        attnkit.generate(sd15, "a red car", Observe())
    with pytest.raises(AttnKitError, match=r"call it: Observe\(\), not Observe"):
        attnkit.generate(sd15, "a red car", [Observe])


@pytest.mark.parametrize("method", [AttendExcite, AStar])
def test_latent_methods_on_a_tiny_image_say_what_to_change(sd15, method):
    with pytest.raises(AttnKitError, match="maps are 1x1 at this image size, too small to smooth"):
        attnkit.generate(sd15, "a car and a dog", [method(words=["car"])], seed=0, num_inference_steps=2,
                         height=8, width=8)


def test_prompt_to_prompt_takes_one_negative_prompt(sd15):
    from attnkit.editing import prompt_to_prompt

    result = prompt_to_prompt(sd15, "a cat", "a dog", negative_prompt="blurry", seed=0, **FAST)
    assert len(result.images) == 2
    with pytest.raises(AttnKitError, match="negative_prompt is one text"):
        prompt_to_prompt(sd15, "a cat", "a dog", negative_prompt=["a", "b", "c"], seed=0, **FAST)


def test_observe_every_word_maps_the_kept_words_of_a_long_prompt(sd15):
    prompt = " ".join(f"word{i}" for i in range(60))  # each word two tokens: 120 > 75
    result = attnkit.generate(sd15, prompt, [Observe()], seed=0, **FAST)
    maps = result.report["observe"].maps
    assert "word0" in maps and "word59" not in maps and len(maps) == 28
    for m in maps.values():
        assert torch.allclose(m.flatten(1).sum(-1), torch.ones(m.shape[0]), atol=1e-4)
    assert any("32 words after that are cut off and not mapped (word28" in w for w in result.report.warnings)
    with pytest.raises(AttnKitError, match="keeps only the first"):  # a word the user picked must be there
        attnkit.generate(sd15, prompt, [Observe(words=["word59"])], seed=0, **FAST)


def test_two_threads_on_one_pipeline_one_runs_one_is_refused_untouched(sd15, monkeypatch):
    """The check and the install are one step, taken before the refused call reads or encodes anything: in every
    round exactly one call runs, and its image is the solo run's, bit for bit. (Building the wrappers is slowed
    down, which widened the window between the old check and the old install.)"""
    import sys
    import threading
    import time

    import attnkit.runtime

    real_init = attnkit.runtime.LayerProcessor.__init__

    def slow_init(self, *a, **k):
        time.sleep(0.0005)
        real_init(self, *a, **k)

    from attnkit import AlreadyAttachedError
    from attnkit.methods import StructuredGuidance

    kwargs = dict(seed=0, num_inference_steps=2, height=64, width=64, output_type="np")
    solo = {p: attnkit.generate(sd15, p, [StructuredGuidance(), Observe(words=["car"])], **kwargs).images[0]
            for p in ("a red car and a white sheep", "a blue car on a long road with a dog")}
    before = dict(sd15.unet.attn_processors)
    monkeypatch.setattr(attnkit.runtime.LayerProcessor, "__init__", slow_init)
    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    try:
        for _ in range(15):
            barrier, out = threading.Barrier(2), {}

            def work(prompt):
                barrier.wait()
                try:
                    out[prompt] = attnkit.generate(sd15, prompt, [StructuredGuidance(), Observe(words=["car"])],
                                                   **kwargs).images[0]
                except AlreadyAttachedError as exc:
                    out[prompt] = exc

            threads = [threading.Thread(target=work, args=(p,)) for p in solo]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            ran = [p for p, v in out.items() if not isinstance(v, Exception)]
            refused = [p for p, v in out.items() if isinstance(v, AlreadyAttachedError)]
            assert len(ran) + len(refused) == 2 and len(ran) >= 1, out
            for p in ran:
                assert (out[p] == solo[p]).all(), "a refused call changed the running one"
    finally:
        sys.setswitchinterval(interval)
    assert all(sd15.unet.attn_processors[k] is v for k, v in before.items())
