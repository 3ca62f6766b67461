"""The toy bench's short version: a few tens of ByG steps make a measurably better editor."""

import dataclasses
import json
from pathlib import Path

import pytest
import torch

from byg_core.adapters import STUDENT, Adapters
from byg_core.data import CachedEdits
from byg_core.objective import ObjectiveConfig
from byg_core.sample import edit
from byg_core.toy.bench import (
    SMOKE_SETTINGS,
    ToySettings,
    _spec,
    cached_tuples,
    check_guidance,
    edit_with,
    run_demo,
    score,
)
from byg_core.toy.model import base_weights, build_toy_backbone
from byg_core.toy.world import sample_tuples
from byg_core.train import Trainer


def edit_success(backbone, adapters, data, tuples):
    edited = edit_with(backbone, data, lambda b: edit(backbone, adapters, b.x, b.c, steps=10, role=STUDENT).latents)
    return score(tuples, edited)["all"]["edit_success"]


def test_forty_byg_steps_raise_edit_success_above_the_untrained_editor(tmp_path):
    """No pair is ever seen: the directional prior alone teaches background-colour edits."""
    backbone = build_toy_backbone()
    tuples = sample_tuples(64, 0, families=("bg_color",))
    data = cached_tuples(backbone, tuples)
    data = CachedEdits(x=data.x, records=data.records)  # drop the true targets: ByG never sees them
    settings = ToySettings(steps=40, batch_size=8, rank=16, lr=5e-3, warmup_identity_steps=10)
    cfg = settings.train_config(tmp_path, objective=ObjectiveConfig(rollout_steps=4), use_ema=False)
    held = CachedEdits(x=data.x[:32], records=data.records[:32])
    untrained = edit_success(backbone, Adapters(backbone, _spec(backbone, settings)), held, tuples[:32])
    trainer = Trainer(cfg, backbone, data)
    trainer.run()
    trained = edit_success(backbone, trainer.adapters, held, tuples[:32])
    assert trained > untrained + 0.3, (untrained, trained)


RATES = ("clean_edit", "edit_success", "preservation")


def assert_rates_with_intervals(figures: dict, n: int, seeds: int) -> None:
    """Every rate carries its 95% interval over the n held-out tuples and its value under each noise seed."""
    for key in RATES:
        low, high = figures[f"{key}_ci"]
        assert low <= figures[key] <= high and high - low > 0, key
        assert len(figures[f"{key}_by_seed"]) == seeds, key
    assert (figures["n"], figures["n_seeds"]) == (n, seeds)


def test_the_demo_writes_its_lora_pictures_and_metrics(tmp_path, monkeypatch, capsys):
    import byg_core.toy.bench as bench

    monkeypatch.setattr(bench, "DEMO_SETTINGS", bench.SMOKE_SETTINGS)
    report = run_demo(Path(tmp_path), steps=2)
    for name in ("byg_toy_lora.safetensors", "grid.png", "loss.png", "metrics.json", "losses.jsonl"):
        assert (tmp_path / name).is_file(), name
    saved = json.loads((tmp_path / "metrics.json").read_text())
    assert set(saved["byg"]) >= {*RATES, "pixel_error", "by_family", "by_split", "preservation_criteria"}
    for figures in (saved["byg"], saved["untrained"]):
        assert_rates_with_intervals(figures, n=6, seeds=2)
    assert saved["held_out"]["tuples"] == 6 and saved["held_out"]["per_family_and_split"] == 1
    assert saved["steps"] == report["steps"] == 2
    # where the figures came from: a run reproduces bit for bit on one machine, not across CPUs (docs/toy_bench.md)
    assert saved["environment"] == {"torch": torch.__version__, "cpu": saved["environment"]["cpu"],
                                    "threads": torch.get_num_threads(), "float32_matmul_precision": "highest",
                                    "code": bench.code_revision()} \
        and saved["environment"]["cpu"]
    printed = capsys.readouterr().out
    assert "clean_edit" in printed.splitlines()[1] and "untrained" in printed  # the headline comes first


def test_the_ablation_bench_runs_every_method_and_reports_them(tmp_path, monkeypatch):
    import byg_core.toy.bench as bench

    monkeypatch.setattr(bench, "BENCH_SETTINGS", bench.SMOKE_SETTINGS)
    report = bench.run_bench(Path(tmp_path), suite="ablations")
    expected = {"byg", "supervised", "sdedit", "flowedit", "identity", *bench.ABLATIONS}
    assert set(report["methods"]) == expected and report["complete"]
    for metrics in report["methods"].values():
        assert set(metrics) >= {*RATES, "pixel_error", "by_family", "by_split"}
        assert_rates_with_intervals(metrics, n=6, seeds=2)
        for part in (*metrics["by_family"].values(), *metrics["by_split"].values()):
            assert all(f"{key}_ci" in part for key in RATES)
    identity = report["methods"]["identity"]
    assert identity["edit_success"] == identity["clean_edit"] == 0.0
    for metrics in report["methods"].values():  # preservation is the AND of its criteria
        criteria = metrics["preservation_criteria"]
        assert {"mask_iou", "centroid"} <= set(criteria) <= {"mask_iou", "centroid", "shape", "shape_color", "bg_color"}
        assert metrics["preservation"] <= min(criteria.values())
    tables = (tmp_path / "results.md").read_text().split("\n\n")[::2]  # the tables, between their titles
    assert len(tables) == 4 and tables[0].startswith("| method | clean edit [95% CI] |")
    for table in tables:  # a header, a rule and a row per method
        assert len(table.strip().splitlines()) == len(expected) + 2
    assert (tmp_path / "grid.png").is_file()


def test_the_bench_runs_the_methods_asked_for_on_a_held_out_set_fixed_across_training_seeds(tmp_path):
    import byg_core.toy.bench as bench

    reports = [bench.run_bench(tmp_path / str(seed), methods=["identity", "byg"], seed=seed,
                               settings=bench.SMOKE_SETTINGS) for seed in (0, 1)]
    assert [set(r["methods"]) for r in reports] == [{"identity", "byg"}] * 2
    # the same held-out tuples whatever the training seed: doing nothing measures the same
    assert reports[0]["methods"]["identity"] == {**reports[1]["methods"]["identity"],
                                                 "seconds": reports[0]["methods"]["identity"]["seconds"]}
    # --eval-seed: another draw, recorded, whose tuples none of the set every figure was chosen on share
    other = bench.run_bench(tmp_path / "untouched", methods=["identity"], settings=bench.SMOKE_SETTINGS, eval_seed=1)
    assert other["held_out"]["eval_seed"] == 1 and other["settings"]["eval_seed"] == 1
    drawn = [{t.record()["src_caption"] + repr(t.source) for t in bench.eval_split(3, seed)} for seed in (0, 1)]
    assert not drawn[0] & drawn[1]
    with pytest.raises(ValueError, match="no_cycle"):
        bench.suite_methods(bench.SMOKE_SETTINGS, "main", ["no_cycle"])
    with pytest.raises(ValueError, match="multiple of 3"):
        bench.eval_split(4, 0)


@pytest.mark.parametrize("change, setting", [
    ({"lr": -1.0}, "lr"), ({"steps": -3}, "steps"), ({"n_eval": 4}, "n_eval"), ({"edit_steps": 0}, "edit_steps"),
    ({"noise_seeds": ()}, "noise_seeds"), ({"lr_scheduler": "step"}, "lr_scheduler"),
])
def test_bad_bench_settings_are_refused_before_any_method_runs_or_anything_is_written(
        tmp_path, monkeypatch, change, setting):
    """The baselines run first and write results.json: a setting only training would refuse must stop the run
    before them, and before the base loads."""
    import dataclasses

    import byg_core.toy.bench as bench

    monkeypatch.setattr(bench, "load_base", lambda *a, **k: pytest.fail("the base loaded before the check"))
    settings = dataclasses.replace(bench.SMOKE_SETTINGS, **{k: v for k, v in change.items() if k != "steps"})
    with pytest.raises(ValueError, match=rf"^{setting}( must|=)"):
        bench.run_bench(tmp_path / "out", methods=["identity", "byg"], settings=settings, steps=change.get("steps"))
    assert not (tmp_path / "out").exists()
    monkeypatch.setattr(bench, "DEMO_SETTINGS", settings)
    with pytest.raises(ValueError, match=rf"^{setting}( must|=)"):
        bench.run_demo(tmp_path / "demo", steps=change.get("steps"))
    assert not (tmp_path / "demo").exists()


def test_a_shorter_run_keeps_half_its_steps_for_byg():
    from byg_core.toy.bench import with_steps

    settings = ToySettings(steps=1200, warmup_identity_steps=600)
    assert with_steps(settings, None, 3) == ToySettings(steps=1200, warmup_identity_steps=600, seed=3)
    short = with_steps(settings, 500, 0)
    assert (short.steps, short.warmup_identity_steps) == (500, 250)


def test_every_ablation_turns_off_one_switch_at_the_benchs_loss_weights():
    from byg_core.toy.bench import ABLATIONS, _trained_methods

    settings = ToySettings(lambda_id=3.0, rollout_steps=5)
    methods = _trained_methods(settings, "ablations")
    assert settings.train_config(Path("unused")).objective == settings.objective()
    for name, switch in ABLATIONS.items():
        assert methods[name]["objective"] == ObjectiveConfig(rollout_steps=5, lambda_id=3.0, **{switch: False})


def test_the_cache_suite_trains_each_reuse_at_equal_steps_and_at_the_exact_runs_wall_time(tmp_path):
    from byg_core.toy import bench

    report = bench.run_bench(tmp_path, suite="cache", settings=bench.SMOKE_SETTINGS,
                             methods=["byg", "byg_reuse4", "byg_reuse8_same_time"])
    methods = report["methods"]
    assert set(methods) == {"byg", "byg_reuse4", "byg_reuse8_same_time"}
    steps = bench.SMOKE_SETTINGS.steps
    assert methods["byg"]["steps_done"] == methods["byg_reuse4"]["steps_done"] == steps
    same_time = methods["byg_reuse8_same_time"]
    # the clock ends it: it stops at the first step past byg's training time, far below its step cap
    assert 1 <= same_time["steps_done"] < 4 * steps and same_time["train_seconds"] >= methods["byg"]["train_seconds"]
    assert {"clean_edit", "clean_edit_ci", "edit_success", "preservation"} <= set(same_time)
    assert bench.suite_methods(bench.SMOKE_SETTINGS, "cache")[3:] == [
        "byg", "byg_reuse2", "byg_reuse4", "byg_reuse8", "byg_reuse4_same_time", "byg_reuse8_same_time"]


def test_the_bench_trains_every_method_at_the_learning_rate_schedule_and_batch_asked_for(tmp_path, capsys, monkeypatch):
    from byg_core.cli import main as byg
    from byg_core.safefiles import load_checked
    from byg_core.toy import bench
    from byg_core.toy.world import sample_tuples

    sampled = []  # the sampler steps of every held-out edit

    def spy(*args, steps, **kwargs):
        sampled.append(steps)
        return edit(*args, steps=steps, **kwargs)

    monkeypatch.setattr(bench, "edit", spy)
    drawn = []  # how many training tuples each run drew (its batches come from them)
    monkeypatch.setattr(bench, "sample_tuples", lambda n, seed: drawn.append(n) or sample_tuples(n, seed))

    def run(out: Path, *options: str) -> tuple[dict, dict, float]:
        assert byg(["bench", "--smoke", "--methods", "supervised", "--device", "cpu", "--out", str(out), *options]) == 0
        report = json.loads((out / "results.json").read_text())
        tensors, metadata = load_checked(out / "runs" / "supervised" / "byg_lora.safetensors", "LoRA")
        b = max(t.abs().max().item() for k, t in tensors.items() if k.endswith("lora_B.weight"))
        return report["settings"], json.loads(metadata["byg.config"]), b, set(tensors)

    default, default_cfg, b_default, keys_default = run(tmp_path / "default")
    assert sampled and set(sampled) == {bench.SMOKE_SETTINGS.edit_steps} == {default["edit_steps"]}
    assert drawn == [bench.SMOKE_SETTINGS.n_train] == [default["n_train"]]
    sampled.clear()
    drawn.clear()
    tiny, tiny_cfg, b_tiny, keys_tiny = run(tmp_path / "tiny", "--lr", "1e-9", "--lr-scheduler", "cosine",
                                            "--batch-size", "2", "--edit-steps", "1", "--loraplus-lr-ratio", "4",
                                            "--n-train", "5", "--lora-targets", "all-linear",
                                            "--adam-beta2", "0.99", "--matmul-precision", "high")
    assert sampled and set(sampled) == {1} == {tiny["edit_steps"]}
    # TF32 on a GPU (the one-shot GPU run's speed) is recorded, and this process's precision left as it was
    environments = [json.loads((tmp_path / run / "results.json").read_text())["environment"] for run in ("default", "tiny")]
    assert [e["float32_matmul_precision"] for e in environments] == ["highest", "high"]
    assert torch.get_float32_matmul_precision() == "highest"
    assert drawn == [5] == [tiny["n_train"]]
    # recorded where a reader looks (results.json, the LoRA's own config), and the optimiser really used it:
    # LoRA B starts at zero and moves by about lr per step (the saved EMA editor by a twentieth of that)
    assert default["lr"] == default_cfg["lr"] == 3e-3 and tiny["lr"] == tiny_cfg["lr"] == 1e-9
    assert default["lr_scheduler"] == default_cfg["lr_scheduler"] == "constant"
    assert tiny["lr_scheduler"] == tiny_cfg["lr_scheduler"] == "cosine"
    assert default["batch_size"] == default_cfg["batch_size"] == 4 and tiny["batch_size"] == tiny_cfg["batch_size"] == 2
    assert default["loraplus_lr_ratio"] == default_cfg["loraplus_lr_ratio"] == 1.0
    assert tiny["loraplus_lr_ratio"] == tiny_cfg["loraplus_lr_ratio"] == 4.0
    assert (default["adam_beta2"], default_cfg["adam_beta2"], tiny["adam_beta2"], tiny_cfg["adam_beta2"]) == (
        0.999, 0.999, 0.99, 0.99)
    # every linear layer wrapped, the default targets' layers among them; the default leaves the embedders out
    linear = {f"transformer.{name}.lora_A.weight" for name, module in build_toy_backbone().transformer.named_modules()
              if isinstance(module, torch.nn.Linear)}
    assert {k for k in keys_tiny if k.endswith("lora_A.weight")} == linear > {k for k in keys_default if "lora_A" in k}
    assert "transformer.x_embedder.lora_A.weight" not in keys_default
    assert (default["lora_targets"], tiny["lora_targets"]) == ("default", "all-linear")
    assert {f"transformer.{name}.lora_A.weight" for name in tiny_cfg["target_modules"]} == linear  # in its config
    assert default_cfg["target_modules"] is None  # the backbone's defaults
    assert {**tiny, "lr": default["lr"], "lr_scheduler": "constant", "batch_size": 4, "edit_steps": 2,
            "loraplus_lr_ratio": 1.0, "n_train": 16, "lora_targets": "default", "adam_beta2": 0.999} == default
    assert b_default > 1e-5 and b_tiny < 1e-8
    assert byg(["bench", "--smoke", "--lr", "0", "--out", str(tmp_path / "zero")]) == 2
    assert "--lr must be > 0" in capsys.readouterr().err and not (tmp_path / "zero").exists()
    assert byg(["bench", "--smoke", "--batch-size", "0", "--out", str(tmp_path / "zero")]) == 2
    assert "--batch-size must be > 0" in capsys.readouterr().err and not (tmp_path / "zero").exists()
    assert byg(["bench", "--smoke", "--n-train", "0", "--out", str(tmp_path / "zero")]) == 2
    assert "--n-train must be > 0" in capsys.readouterr().err and not (tmp_path / "zero").exists()
    assert byg(["bench", "--smoke", "--edit-steps", "0", "--out", str(tmp_path / "zero")]) == 2
    assert "--edit-steps must be > 0" in capsys.readouterr().err and not (tmp_path / "zero").exists()
    assert byg(["bench", "--smoke", "--loraplus-lr-ratio", "-4", "--out", str(tmp_path / "zero")]) == 2
    assert "--loraplus-lr-ratio must be > 0" in capsys.readouterr().err and not (tmp_path / "zero").exists()
    assert byg(["bench", "--smoke", "--adam-beta2", "1", "--out", str(tmp_path / "zero")]) == 2
    assert "--adam-beta2 must be in [0, 1), got 1.0" in capsys.readouterr().err and not (tmp_path / "zero").exists()
    assert byg(["bench", "--smoke", "--lr-scheduler", "warmup", "--out", str(tmp_path / "warmup")]) == 2
    err = capsys.readouterr().err
    assert "--lr-scheduler must be one of constant, linear, cosine, got 'warmup'" in err
    assert not (tmp_path / "warmup").exists()


def test_a_repeated_or_stopped_bench_demo_or_pretraining_never_overwrites_what_an_earlier_run_left(tmp_path):
    from byg_core.cli import main as byg
    from byg_core.safefiles import load_checked

    out = tmp_path / "bench"
    smoke = ["bench", "--smoke", "--methods", "supervised", "--device", "cpu", "--out", str(out)]
    assert byg(smoke) == 0
    report, lora = (out / "results.json").read_bytes(), out / "runs" / "supervised" / "byg_lora.safetensors"
    weights = load_checked(lora, "LoRA")[0]
    # another training seed into the same folder (the mistake that lost seed 0's figures): refused before any work
    with pytest.raises(SystemExit, match=r"results\.json, .*runs already exist; nothing was overwritten\. Pick another "
                                         r"--out \(one per training seed.*--overwrite"):
        byg([*smoke, "--seed", "1"])
    assert (out / "results.json").read_bytes() == report
    assert all(torch.equal(t, load_checked(lora, "LoRA")[0][k]) for k, t in weights.items())
    assert byg([*smoke, "--seed", "1", "--overwrite"]) == 0  # asked for: replaced
    replaced = json.loads((out / "results.json").read_text())
    assert replaced["settings"]["seed"] == 1 and replaced["environment"]["torch"] == torch.__version__
    # a stopped bench left its runs but no report: still refused
    stopped = tmp_path / "stopped"
    (stopped / "runs" / "byg").mkdir(parents=True)
    with pytest.raises(SystemExit, match=r"stopped/runs already exists"):
        byg(["bench", "--smoke", "--out", str(stopped)])
    (tmp_path / "speed.json").write_text("{}")
    with pytest.raises(SystemExit, match=r"speed\.json already exists"):
        byg(["bench", "speed", "--model", "toy", "--device", "cpu", "--out", str(tmp_path)])
    demo = tmp_path / "demo"
    demo.mkdir()
    (demo / "metrics.json").write_text("{}")
    with pytest.raises(SystemExit, match=r"metrics\.json already exists.*scripts/demo\.sh DIR.*--overwrite"):
        byg(["demo", "--out", str(demo)])
    assert (demo / "metrics.json").read_text() == "{}" and sorted(p.name for p in demo.iterdir()) == ["metrics.json"]
    base = tmp_path / "base.safetensors"
    pretrain = ["toy", "pretrain", "--steps", "1", "--batch-size", "2", "--device", "cpu", "--out", str(base)]
    assert byg(pretrain) == 0
    first = base.read_bytes()
    with pytest.raises(SystemExit, match=r"base\.safetensors already exists.*--out FILE, or pass --overwrite"):
        byg([*pretrain, "--seed", "1"])
    assert base.read_bytes() == first
    assert byg([*pretrain, "--seed", "1", "--overwrite"]) == 0 and base.read_bytes() != first
    # the default --out of the small size is the shipped base itself
    shipped = base_weights("small")
    with pytest.raises(SystemExit, match=f"{shipped.name} already exists"):
        byg(["toy", "pretrain", "--steps", "1"])


def test_guided_baselines_run_on_a_base_with_an_unconditional_velocity_and_are_refused_on_one_without(tmp_path, capsys):
    from byg_core.cli import main as byg
    from byg_core.toy.model import has_unconditional, pretrain_record

    assert not has_unconditional(pretrain_record(base_weights("small")))
    assert has_unconditional(pretrain_record(base_weights("medium")))
    common = ["bench", "--smoke", "--methods", "sdedit,flowedit", "--device", "cpu"]
    guided = ["--baseline-guidance", "1.5", "5.5"]
    assert byg([*common, *guided, "--out", str(tmp_path / "small")]) == 2  # the shipped small base: no p_uncond
    err = capsys.readouterr().err
    assert "--baseline-guidance 1.5 5.5" in err and "toy_base.safetensors" in err and "--p-uncond" in err
    assert not (tmp_path / "small").exists()
    assert byg([*common, "--baseline-guidance", "0", "5", "--out", str(tmp_path / "zero")]) == 2
    assert "--baseline-guidance must be > 0, got 0.0" in capsys.readouterr().err and not (tmp_path / "zero").exists()
    assert byg(["bench", "--smoke", "--methods", "identity", *guided, "--out", str(tmp_path / "none")]) == 0  # nothing guided
    reports = {}
    for name, options in (("unguided", []), ("guided", guided)):
        assert byg([*common, "--base-size", "medium", *options, "--out", str(tmp_path / name)]) == 0
        reports[name] = json.loads((tmp_path / name / "results.json").read_text())
    settings = reports["guided"]["settings"]
    assert (settings["baseline_src_guidance"], settings["baseline_tgt_guidance"]) == (1.5, 5.5)
    assert (reports["unguided"]["settings"]["baseline_src_guidance"],
            reports["unguided"]["settings"]["baseline_tgt_guidance"]) == (1.0, 1.0)
    results_md = {name: (tmp_path / name / "results.md").read_text() for name in reports}
    assert "sdedit and flowedit at classifier-free guidance source 1.5, target 5.5" in results_md["guided"]
    assert "classifier-free guidance" not in results_md["unguided"]
    for method in ("sdedit", "flowedit"):  # the same tuples and noise, other velocities: other edits
        assert reports["guided"]["methods"][method]["pixel_error"] != reports["unguided"]["methods"][method]["pixel_error"]


def test_a_guided_prior_runs_on_a_base_with_an_unconditional_velocity_and_is_refused_on_one_without(tmp_path, capsys):
    from byg_core.cli import main as byg

    common = ["bench", "--smoke", "--device", "cpu", "--prior-guidance", "4"]
    assert byg([*common, "--methods", "byg", "--out", str(tmp_path / "small")]) == 2  # the small base: no p_uncond
    err = capsys.readouterr().err
    assert "--prior-guidance 4" in err and "toy_base.safetensors" in err and "--p-uncond" in err
    assert not (tmp_path / "small").exists()
    assert byg([*common, "--methods", "byg", "--prior-guidance", "0", "--out", str(tmp_path / "zero")]) == 2
    assert "--prior-guidance must be > 0, got 0.0" in capsys.readouterr().err
    # guiding the anchor alone with no guidance is a mistake, named before anything runs
    assert byg(["bench", "--smoke", "--device", "cpu", "--methods", "byg", "--prior-guidance-terms", "anchor",
                "--base-size", "medium", "--out", str(tmp_path / "nothing")]) == 2
    assert "prior_guidance_terms 'anchor' guides nothing at prior_guidance 1" in capsys.readouterr().err
    assert not (tmp_path / "nothing").exists()
    # the methods without ByG's prior run on any base
    check_guidance(dataclasses.replace(SMOKE_SETTINGS, prior_guidance=4.0), base_weights("small"),
                   ["supervised", "identity", "sdedit", "flowedit"])
    assert byg([*common, "--base-size", "medium", "--methods", "byg", "--out", str(tmp_path / "medium")]) == 0
    assert json.loads((tmp_path / "medium" / "results.json").read_text())["settings"]["prior_guidance"] == 4.0
    assert "byg: the prior's base velocities at classifier-free guidance 4." in (tmp_path / "medium" / "results.md").read_text()


def test_a_runs_figures_name_the_code_that_made_them(tmp_path):
    """results.json and metrics.json named no code revision, so a recorded figure could not be tied to the code
    that made it (the grid change of stop 65 moved figures under an unchanged version)."""
    import subprocess

    from byg_core import __version__
    from byg_core.toy.bench import code_revision

    repo = tmp_path / "repo"
    repo.mkdir()
    (repo / "a.py").write_text("x = 1\n")
    git = ["git", "-C", str(repo), "-c", "user.name=t", "-c", "user.email=t@t"]
    for step in (["init", "-q"], ["add", "a.py"], ["commit", "-q", "-m", "a"]):
        subprocess.run([*git, *step], check=True)
    head = subprocess.run([*git, "rev-parse", "HEAD"], check=True, capture_output=True, text=True).stdout.strip()
    assert code_revision(repo) == {"version": __version__, "commit": head, "modified": False}
    (repo / "a.py").write_text("x = 2\n")
    assert code_revision(repo) == {"version": __version__, "commit": head, "modified": True}
    (tmp_path / "plain").mkdir()  # an installed copy, not a checkout
    assert code_revision(tmp_path / "plain") == {"version": __version__, "commit": None, "modified": None}
    (repo / "copied").mkdir()  # the pack copied into another checkout (a ComfyUI's custom_nodes): not its commit
    assert code_revision(repo / "copied") == {"version": __version__, "commit": None, "modified": None}
