"""Shared fixtures. Everything is offline: tiny random-weight pipelines built from configs, no hub."""

from __future__ import annotations

import os

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

import attnkit  # noqa: E402

#: the real-host tiers run in their hosts' own environments (bash tools/test_hosts.sh comfyui), not in this suite
collect_ignore = ["real_hosts"]

#: small settings that still run every layer: 64 px -> 8x8 latent, 3 steps, CFG on.
FAST = dict(num_inference_steps=3, height=64, width=64)


@pytest.fixture(scope="session")
def sd15():
    return attnkit.tiny_pipeline("sd15")


@pytest.fixture(scope="session")
def sdxl():
    return attnkit.tiny_pipeline("sdxl")


@pytest.fixture(scope="session")
def flux():
    return attnkit.tiny_pipeline("flux")


@pytest.fixture(scope="session")
def pipes(sd15, sdxl, flux):
    return {"sd15": sd15, "sdxl": sdxl, "flux": flux}


def plain(pipe, prompt, seed=0, **kwargs):
    """The unattached pipeline's images as a float array in [0, 1]."""
    kwargs = {**FAST, **kwargs}
    return pipe(prompt, generator=torch.Generator("cpu").manual_seed(seed), output_type="np", **kwargs).images


def with_attnkit(pipe, prompt, methods=(), seed=0, **kwargs):
    kwargs = {**FAST, **kwargs}
    result = attnkit.generate(pipe, prompt, methods, seed=seed, output_type="np", **kwargs)
    return np.asarray(result.images), result


def in_threads(work, keys) -> dict:
    """``{key: work(key)}`` with every call in its own thread, all running at once; re-raises the first error."""
    import threading

    results, errors = {}, []

    def run(key):
        try:
            results[key] = work(key)
        except BaseException as exc:  # re-raised below, in the test's thread
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(k,)) for k in keys]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]
    return results
