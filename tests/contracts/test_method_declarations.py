"""What a method needs is declared on its class, and every runtime reads the declaration (no lists of ids)."""

import pytest

from attnkit.hosts.kernel import PATCH_HOOKS, runs_on_patches
from attnkit.methods import DPL, P2P, PKA, REGISTRY, AStar, AttendExcite, Observe, StructuredGuidance
from attnkit.methods.base import HOOKS

ALL = [*REGISTRY.values(), P2P, DPL, PKA]


@pytest.mark.parametrize("method", ALL, ids=lambda m: m.id)
def test_every_method_declares_what_it_needs(method):
    assert method.attention and method.attention <= HOOKS, method.attention
    assert set(method.families) <= {"sd", "sdxl", "flux"} and method.families
    assert method.title, "a method names itself for people (menus, nodes, presets)"
    if getattr(method.controller_class, "updates_latents", False):
        assert method.needs_gradient, "a method that optimises the latent declares its gradient passes"
    if method.needs_words:
        fields = method.config_class.__dataclass_fields__
        assert "words" in fields, "a method that needs words has a words option"


def test_what_runs_on_host_patches_follows_the_declarations():
    assert PATCH_HOOKS == {"read", "text", "probs"}
    assert [m.id for m in ALL if runs_on_patches(m)] == ["observe", "structured", "p2p"]
    assert AttendExcite.needs_words and AStar.needs_words and not Observe.needs_words
    assert StructuredGuidance.attention == {"text"} and "probs" in P2P.attention


def test_a_method_the_patches_cannot_honour_is_refused_by_name():
    import attnkit
    from attnkit.errors import UnsupportedModelError
    from attnkit.hosts.kernel import HostRun

    pipe = attnkit.load_pipeline("tiny-sd15", device="cpu")
    with pytest.raises(UnsupportedModelError, match="pka cannot run through ComfyUI's attention patches"):
        HostRun([PKA()], "a car", pipe.tokenizer, family="sd", steps=2, host="ComfyUI")
    with pytest.raises(UnsupportedModelError, match="a_star cannot run through Forge's attention patches .*gradient"):
        HostRun([AStar(words=["car"])], "a car", pipe.tokenizer, family="sd", steps=2, host="Forge")
