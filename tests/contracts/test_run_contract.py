"""One contract for every runtime: controllers ask their run only what RunContext names, and both the library's Run
and the hosts' HostRun provide all of it."""

from __future__ import annotations

import ast
import os

import pytest

import attnkit
from attnkit.hosts.kernel import HostRun
from attnkit.methods import DPL, P2P, PKA, REGISTRY, Observe
from attnkit.runtime import PipelineContext, Run, RunContext

METHODS = os.path.join(os.path.dirname(attnkit.__file__), "methods")


def _members(protocol) -> set[str]:
    names = set()
    for cls in protocol.__mro__:
        if cls.__module__.startswith("attnkit"):
            names |= {n for n in vars(cls) if not n.startswith("_")} | set(getattr(cls, "__annotations__", {}))
    return names


def _run_attributes(path: str) -> set[str]:
    """Every ``run.X`` / ``self.run.X`` a module's code reads."""
    with open(path, encoding="utf-8") as f:
        tree = ast.parse(f.read())
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute):
            base = node.value
            if (isinstance(base, ast.Name) and base.id == "run") or (
                    isinstance(base, ast.Attribute) and base.attr == "run" and isinstance(base.value, ast.Name)):
                out.add(node.attr)
    return out


def _files(method) -> list[str]:
    module = method.__module__.split(".")
    path = os.path.join(METHODS, *module[2:])
    if os.path.isdir(path):
        return [os.path.join(path, n) for n in os.listdir(path) if n.endswith(".py")]
    files = [path + ".py"]
    if "latent" in [c.__module__.rsplit(".", 1)[-1] for c in method.__mro__]:
        files.append(os.path.join(METHODS, "latent.py"))
    return files


@pytest.mark.parametrize("method", [*REGISTRY.values(), P2P], ids=lambda m: m.id)
def test_methods_a_host_runs_ask_only_the_contract(method):
    used = set().union(*(_run_attributes(p) for p in _files(method)))
    assert used, "the scan found the method's code"
    assert used <= _members(RunContext), used - _members(RunContext)


@pytest.mark.parametrize("method", [DPL, PKA], ids=lambda m: m.id)
def test_pipeline_only_methods_ask_only_the_pipeline_contract(method):
    used = set().union(*(_run_attributes(p) for p in _files(method)))
    used -= {"install", "uninstall", "bind", "controllers", "end_step"}  # the training loop drives its own Run
    assert used <= _members(PipelineContext), used - _members(PipelineContext)


def test_both_runtimes_implement_the_contract(sd15):
    with attnkit.attach(sd15, [Observe(words=["car"])], prompt="a red car") as run:
        assert isinstance(run, Run) and isinstance(run, RunContext) and isinstance(run, PipelineContext)
    host = HostRun([Observe(words=["car"])], "a red car", sd15.tokenizer, family="sd", steps=2)
    assert isinstance(host, RunContext) and not isinstance(host, PipelineContext)
    for runtime in (run, host):
        assert runtime.tokens_of("a blue car").attention.find("blue").positions == (2,)
