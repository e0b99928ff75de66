"""The lab's shapes world, its detector, its model and a training run that resumes where it stopped."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from attnkit.lab.detector import detect, shows
from attnkit.lab.world import HELD_OUT, OBJECTS, WORDS, held_out, masks, random_scene, render


def test_the_detector_reads_every_rendered_scene():
    rng = np.random.default_rng(5)
    scenes = [random_scene(rng) for _ in range(200)]
    assert all(shows(render(s), [t.name for t in s.things]) for s in scenes)
    assert {len(s.things) for s in scenes} == {1, 2}
    # a picture of something else is not read as the caption
    first = scenes[0]
    other = next(s for s in scenes if {t.name for t in s.things} != {t.name for t in first.things})
    assert not shows(render(other), [t.name for t in first.things])
    grey = np.full((64, 64, 3), 128, dtype=np.uint8)
    assert detect(grey) == []


def test_held_out_pairs_never_reach_training():
    rng = np.random.default_rng(0)
    pairs = [s.pair for s in (random_scene(rng, 2) for _ in range(300))]
    assert not any(held_out(tuple(p)) for p in pairs)
    assert len(HELD_OUT) == 8 and len(OBJECTS) == 12
    test = random_scene(rng, names=tuple(next(iter(HELD_OUT))), training=False)
    assert held_out(tuple(t.name for t in test.things))


def test_every_caption_word_is_one_clip_token():
    from attnkit.models import clip_tokenizer

    tok = clip_tokenizer()
    for word in WORDS:
        assert len(tok(word, add_special_tokens=False)["input_ids"]) == 1, word


def test_the_model_reads_maps_where_the_methods_do():
    from attnkit.core.layers import discover_layers, grid_for
    from attnkit.lab.model import build

    pipe = build()
    grids = {grid_for(layer, (16, 16)) for layer in discover_layers(pipe.unet) if layer.kind == "cross"}
    assert grids == {(16, 16), (8, 8)}


def test_training_resumes_exactly_where_it_stopped(tmp_path):
    from attnkit.lab.train import TrainConfig, Trainer

    config = TrainConfig(vae_steps=2, unet_steps=2, ground_steps=2, batch=4, save_every=1)
    straight = Trainer(tmp_path / "a", config)
    straight.run(max_steps=10)  # 2 autoencoder steps, 2 UNet steps, 2 grounding steps (and the stage changes)
    first = Trainer(tmp_path / "b", config)
    first.run(max_steps=5)  # stops in the grounding stage
    with open(tmp_path / "b" / "log.jsonl", "a") as f:  # a step logged by a process killed before its next save
        f.write('{"loss": 9.0, "stage": "ground", "step": 2, "total": 2, "s": 1.0}\n')
    resumed = Trainer(tmp_path / "b")  # a new process would do the same: it reads the checkpoint
    assert (resumed.stage, resumed.step) == ("ground", 1)
    resumed.run(max_steps=10)
    assert straight.stage == resumed.stage == "done"
    for name in ("vae", "unet", "text_encoder"):
        a, b = getattr(straight.pipe, name).state_dict(), getattr(resumed.pipe, name).state_dict()
        for key in a:
            torch.testing.assert_close(a[key], b[key], rtol=0, atol=0, msg=f"{name}.{key}")
    import json

    def log(run):  # the records without their timings
        return [{k: v for k, v in json.loads(line).items() if k != "s"}
                for line in (tmp_path / run / "log.jsonl").read_text().splitlines()]

    assert len(log("a")) == 6 and log("b") == log("a")  # each step logged once, with the same loss, as in one go
    assert [r["stage"] for r in log("a")] == ["vae"] * 2 + ["unet"] * 2 + ["ground"] * 2
    assert all(("grounding" in r) == (r["stage"] == "ground") for r in log("a"))
    finished = Trainer(tmp_path / "b")  # a finished run loads (to export it) with its moving averages
    assert finished.stage == "done" and finished.ema is not None
    torch.testing.assert_close(finished.pipeline().unet.state_dict(), resumed.pipeline().unet.state_dict(), rtol=0,
                               atol=0)


def test_grounding_targets_sit_on_each_objects_colour_and_shape_tokens():
    from attnkit.lab.train import grounding_targets
    from attnkit.models import clip_tokenizer

    tok = clip_tokenizer()
    rng = np.random.default_rng(2)
    scene, single = random_scene(rng, 2), random_scene(rng, 1)
    targets = grounding_targets([scene, single, scene], [True, True, False], 16)
    assert targets.shape == (3, 77, 256)
    for b, drawn in enumerate((scene, single)):
        ids = tok(drawn.caption, padding="max_length", max_length=77)["input_ids"]
        grounded = [i for i in range(77) if targets[b, i].sum() > 0]
        words = [tok.decode([ids[i]]).strip() for i in grounded]
        assert words == [w for t in drawn.things for w in (t.colour, t.shape)]
        for k, area in enumerate(masks(drawn)):  # each cell holds the share of it the object covers
            assert abs(float(targets[b, grounded[2 * k]].sum()) - area.sum() / 16) < 1e-3
            assert torch.equal(targets[b, grounded[2 * k]], targets[b, grounded[2 * k + 1]])
    assert targets[2].abs().sum() == 0  # an empty caption (dropped for guidance) grounds nothing


def test_kept_cross_attention_is_diffusers_attention_and_its_loss_reads_the_object():
    from attnkit.lab.model import build
    from attnkit.lab.train import _KeptCrossAttention, grounding_loss, grounding_targets

    pipe = build(seed=1)
    rng = np.random.default_rng(0)
    drawn = [random_scene(rng, 2), random_scene(rng, 1)]
    ids = pipe.tokenizer([s.caption for s in drawn], padding="max_length", max_length=77, return_tensors="pt")
    latents, t = torch.randn(2, 4, 16, 16, generator=torch.Generator().manual_seed(0)), torch.tensor([10, 500])
    with torch.no_grad():
        text = pipe.text_encoder(ids.input_ids)[0]
        plain = pipe.unet(latents, t, encoder_hidden_states=text).sample
        kept: list = []
        layers = [m for n, m in pipe.unet.named_modules() if n.endswith("attn2")]
        for layer in layers:
            layer.set_processor(_KeptCrossAttention(kept))
        grounded = pipe.unet(latents, t, encoder_hidden_states=text).sample
    torch.testing.assert_close(grounded, plain, rtol=1e-4, atol=1e-5)
    assert len(kept) == len(layers) and {k.shape[1] for k in kept} == {256, 64}
    for probs in kept:
        torch.testing.assert_close(probs.sum(dim=-1), torch.ones(probs.shape[:2]))
    # the loss: 0 when each word's attention lies inside its object, near 1 when it lies off every object
    on = [(grounding_targets(drawn, [True, True], 16) == 1).float().transpose(1, 2) + 1e-9]
    off = [(grounding_targets(drawn, [True, True], 16).sum(dim=1, keepdim=True) == 0).float().expand(-1, 77, -1)
           .transpose(1, 2)]
    assert float(grounding_loss(on, drawn, [True, True])) < 1e-6
    assert float(grounding_loss(off, drawn, [True, True])) > 0.99
    assert float(grounding_loss(kept, drawn, [True, True])) > 0.3  # an untrained model's maps are spread


def test_reading_a_run_that_trains_leaves_its_log_alone(tmp_path, capsys):
    """Exporting or evaluating a run while another process trains it must not replace the log that process writes
    (it did: loading trimmed the log, and the trainer went on writing into the replaced file)."""
    from attnkit.cli import main
    from attnkit.lab.train import TrainConfig, Trainer

    trainer = Trainer(tmp_path / "run", TrainConfig(vae_steps=1, unet_steps=4, batch=2, save_every=1))
    trainer.run(max_steps=2)  # the autoencoder step and the stage change: the UNet's step 0 is saved
    log = tmp_path / "run" / "log.jsonl"
    with log.open("a") as f:  # the training process logs a step it has not saved yet
        f.write('{"loss": 1.0, "stage": "unet", "step": 1, "total": 4, "s": 1.0}\n')
    before = (log.stat().st_ino, log.read_text())
    assert main(["lab", "export", "--run", str(tmp_path / "run"), "--out", str(tmp_path / "m.safetensors")]) == 0
    assert "saved" in capsys.readouterr().out and (tmp_path / "m.safetensors").is_file()
    assert (log.stat().st_ino, log.read_text()) == before


def test_a_saved_model_is_small_and_loads_back_as_saved(tmp_path):
    from attnkit.lab.model import build, load, save, world_token_ids

    pipe = build(seed=3)
    with torch.no_grad():  # stand-in training: move every weight, including the world's embedding rows
        for part in (pipe.vae, pipe.unet, pipe.text_encoder):
            for p in part.parameters():
                p.add_(torch.randn(p.shape, generator=torch.Generator().manual_seed(p.numel() % 997)) * 0.01)
    pipe.vae.register_to_config(scaling_factor=0.7)
    size = save(pipe, tmp_path / "shapes.safetensors")
    assert size < 12 * 2**20, size
    again = load(tmp_path / "shapes.safetensors")
    assert again.vae.config.scaling_factor == 0.7
    for name in ("vae", "unet", "text_encoder"):
        a, b = getattr(pipe, name).state_dict(), getattr(again, name).state_dict()
        for key in a:
            if key.endswith("token_embedding.weight"):  # only the world's rows are kept
                ids = world_token_ids(pipe.tokenizer)
                torch.testing.assert_close(b[key][ids], a[key][ids].half().float(), rtol=0, atol=0)
                continue
            torch.testing.assert_close(b[key], a[key].half().float(), rtol=0, atol=0)
    tokens = pipe.tokenizer("a red circle and a blue square", padding="max_length", max_length=77,
                            return_tensors="pt").input_ids
    with torch.no_grad():
        torch.testing.assert_close(again.text_encoder(tokens)[0], pipe.text_encoder.half().float()(tokens)[0],
                                   rtol=1e-3, atol=1e-3)
    (tmp_path / "other.safetensors").write_bytes(b"not a model")
    with pytest.raises(Exception):
        load(tmp_path / "other.safetensors")


def test_judging_names_neglect_and_binding():
    from attnkit.lab.evaluate import Case, Outcome

    case = Case("a red circle and a blue square", ("red circle", "blue square"), 0)
    assert Outcome(case, ["blue square", "red circle"]).correct
    neglected = Outcome(case, ["red circle"])
    assert neglected.neglect and not neglected.binding_error and not neglected.correct
    swapped = Outcome(case, ["blue circle", "red square"])
    assert swapped.binding_error and not swapped.neglect
    assert case.words == ["circle", "square"]  # what the methods act on: each object's own shape word
    twins = Case("a red square and a blue square", ("red square", "blue square"), 0)
    assert twins.words == ["square#1", "square#2"]  # a shared shape: each occurrence, not one word for both
    assert Outcome(twins, ["red square"]).neglect and not Outcome(twins, ["red square", "blue square"]).neglect


def test_paired_statistics_against_their_formulas():
    from math import comb

    from attnkit.lab.evaluate import bootstrap_difference, cases, mcnemar

    before = [False] * 30 + [True] * 10
    after = [True] * 12 + [False] * 18 + [True] * 8 + [False] * 2  # 12 fixed, 2 broken
    # exact binomial: 2 * P(X <= 2), X ~ Bin(14, 1/2)
    assert abs(mcnemar(before, after) - 2 * sum(comb(14, i) for i in range(3)) / 2**14) < 1e-12
    diff, low, high = bootstrap_difference(before, after)
    assert diff == pytest.approx(10 / 40) and low < diff < high and low > 0
    mixed = cases(64, 2)
    assert sum(c.held_out for c in mixed) == 8 and all(len(c.names) == 2 for c in mixed)
    assert all(c.held_out for c in cases(10, 2, held=True))


def test_the_effects_benchmark_runs_and_prints_its_table(tmp_path, capsys):
    """The wiring of benchmarks/effects.py on an untrained model (its numbers mean nothing until it is trained)."""
    import importlib.util
    from pathlib import Path

    from attnkit.lab.model import build, save

    save(build(), tmp_path / "untrained.safetensors")
    path = Path(__file__).resolve().parents[2] / "benchmarks" / "effects.py"
    spec = importlib.util.spec_from_file_location("effects", path)
    effects = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(effects)
    grid = tmp_path / "effects.png"
    markdown = tmp_path / "effects.md"
    assert effects.main(["--model", str(tmp_path / "untrained.safetensors"), "--pairs", "2", "--edits", "1",
                         "--steps", "2", "--grid", str(grid), "--markdown", str(markdown)]) == 0
    out = capsys.readouterr().out
    for row in ("attend_excite", "a_star", "structured", "observe", "dpl + p2p", "edit success",
                "PSNR outside the object", "McNemar p", "one object right", "held-out pairs"):
        assert row in out
    assert grid.is_file()
    lines = markdown.read_text().splitlines()
    assert lines[0].startswith("| method | axis |") and len(lines) == 2 + 6  # a header and its rule, 6 rows
    assert all(line.count("|") == 10 for line in lines)


def test_lab_eval_from_the_command_line(tmp_path, capsys):
    from attnkit.cli import main
    from attnkit.lab.model import build, save

    save(build(), tmp_path / "m.safetensors")
    assert main(["lab", "eval", "--model", str(tmp_path / "m.safetensors"), "--pairs", "2", "--steps", "2"]) == 0
    assert "one object right" in capsys.readouterr().out
    assert main(["lab", "eval", "--run", str(tmp_path / "nothing")]) == 2
    assert "no training run in" in capsys.readouterr().err
    assert main(["lab", "effects", "--workers", "0"]) == 2
    assert "--workers must be at least 1" in capsys.readouterr().err


def test_edit_cases_change_one_shape_and_measure_only_outside_it():
    import numpy as np

    from attnkit.lab.evaluate import bootstrap_median, edit_cases, outside_psnr
    from attnkit.lab.world import masks, render

    jobs = edit_cases(40)
    for i, case in enumerate(jobs):
        before = [t.name for t in case.scene.things]
        assert len(case.names) == 2 and case.names[1 - case.changed] == before[1 - case.changed]
        old, new = before[case.changed].split(), case.target.split()
        assert (old[0] == new[0]) != (old[1] == new[1])  # exactly one word changes
        assert (old[1] != new[1]) == (i % 2 == 0)        # shape edits and colour edits alternate
        assert case.names[0] != case.names[1]
        assert len(case.source_prompt.split()) == len(case.target_prompt.split())  # replace edits: same length
        area = masks(case.scene)
        assert not (area[case.changed] & case.outside()).any() and (area[1 - case.changed] <= case.outside()).all()
    case = jobs[0]
    picture = render(case.scene)
    assert outside_psnr(picture, picture, case) == 100.0
    inside_only = picture.copy()
    inside_only[~case.outside()] = 0  # a change inside the edited object does not count
    assert outside_psnr(picture, inside_only, case) == 100.0
    spoiled = picture.copy()
    spoiled[case.outside()] = 0  # grey 128 to black: an error of about half the range
    assert outside_psnr(picture, spoiled, case) < 10
    median, low, high = bootstrap_median(list(np.linspace(1, 5, 101)))
    assert median == 3.0 and low < 3.0 < high


def test_the_plain_draws_are_shared_only_when_they_match(monkeypatch):
    """scores and effects take the plain model's two-object draws once; other settings draw them again."""
    from attnkit.lab import effects

    drawn = []
    monkeypatch.setattr(effects, "plain_pairs", lambda pipe, count, steps, cfg: drawn.append((count, steps, cfg)))
    made = effects.Plain(20, 7.5, [object()] * 3, [None] * 3, [])
    assert effects._plain(None, 3, 20, 7.5, made) is made and drawn == []
    effects._plain(None, 3, 10, 7.5, made)
    effects._plain(None, 4, 20, 7.5, made)
    effects._plain(None, 3, 20, 7.5, None)
    assert drawn == [(3, 10, 7.5), (4, 20, 7.5), (3, 20, 7.5)]


def test_edits_shared_among_workers_measure_what_one_process_does(tmp_path):
    """``--workers 2`` hands the pipeline to two spawned processes; each edit is seeded by its own case, so the
    outcomes and the log are those of one process, in the cases' order."""
    import json

    from attnkit.lab.effects import edit_effects
    from attnkit.lab.model import build

    pipe = build(seed=2)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as each worker runs
    try:
        one, _ = edit_effects(pipe, 3, steps=2, null_iterations=1, log=str(tmp_path / "one.jsonl"))
    finally:
        torch.set_num_threads(threads)
    two, examples = edit_effects(pipe, 3, steps=2, null_iterations=1, log=str(tmp_path / "two.jsonl"), workers=2)
    assert [(r.before, r.after, r.pairs) for r in one] == [(r.before, r.after, r.pairs) for r in two]

    def records(name):
        return sorted((json.loads(line) for line in (tmp_path / name).read_text().splitlines()),
                      key=lambda r: r["edit"])

    assert records("one.jsonl") == records("two.jsonl") and [r["edit"] for r in records("two.jsonl")] == [0, 1, 2]
    assert len(examples) == 3 and all(before.size == after.size for *_, before, after in examples)
