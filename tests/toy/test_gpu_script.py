"""scripts/toy_gpu_bench.py: the GPU bench's every step, tiny, on the CPU; and its reading of the ablations."""

import importlib.util
import json
import os
import sys
import tarfile
import time
from pathlib import Path

import pytest
import torch

from byg_core.cli import main as byg
from byg_core.safefiles import load_checked
from byg_core.backbones.base import default_device

ROOT = Path(__file__).resolve().parents[2]


def _script():
    spec = importlib.util.spec_from_file_location("toy_gpu_bench", ROOT / "scripts" / "toy_gpu_bench.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_tiny_gpu_bench_pretrains_a_base_runs_every_job_and_summarises(tmp_path, capsys, monkeypatch):
    script = _script()
    summaries = []  # one after every job, so a run cut short still returns figures, and the last
    real_summary = script.write_summary
    monkeypatch.setattr(script, "write_summary", lambda *a: summaries.append(len(a[2])) or real_summary(*a))
    returned = tmp_path / "returned"  # the device tool's $OUT: what a lent machine brings back
    assert script.main(["--tiny", "--out", str(tmp_path), "--device", "cpu", "--results-dir", str(returned)]) == 0
    summary = json.loads((tmp_path / "summary.json").read_text())
    jobs = summary["jobs"]
    assert summaries == [*range(1, len(jobs) + 1), len(jobs)]
    # the base had stayed on the machine (53 MiB at full size: the tool returns 16 MiB files): in parts, as made
    parts = sorted(returned.glob("toy_base_medium.safetensors.part*"))
    assert parts and b"".join(p.read_bytes() for p in parts) == (tmp_path / "toy_base_medium.safetensors").read_bytes()
    assert json.loads((returned / "summary.json").read_text()) == summary
    assert (returned / "summary.md").read_text() == (tmp_path / "summary.md").read_text()
    with tarfile.open(returned / "results.tgz") as archive:
        names = set(archive.getnames())
    assert {f"{name}/results.json" for name in jobs if name != "baselines"} | {"baselines/results.json"} <= names
    assert not any(name.endswith(".safetensors") for name in names) and "seed1/byg/log.txt" in names
    assert len(list(returned.iterdir())) <= 8 - 1  # with the shell's log.txt, within the tool's eight files
    assert summary["matmul_precision"] == "highest"  # cpu; cuda's default is high (TF32)
    assert set(summary["methods"]) == {"identity", "sdedit", "flowedit", *script.TINY_METHODS}
    assert summary["methods"]["identity"]["training_seeds"] == [0]  # the baselines train nothing: one run
    assert summary["methods"]["byg"]["training_seeds"] == [0, 1]
    assert summary["methods"]["byg"]["clean_edit_by_training_seed"] == [
        json.loads((tmp_path / f"seed{s}" / "byg" / "results.json").read_text())["methods"]["byg"]["clean_edit"]
        for s in (0, 1)]
    assert set(summary["base"]["sample_accuracy"]) >= {"shape", "shape_color", "bg_color", "all"}
    assert summary["base"]["sample_accuracy_guided"]["guidance"] == 6.0
    assert summary["base"]["pretrain"]["p_uncond"] == 0.1
    # the distilled copy: trained from the base as its teacher, read unguided, the reference benched on it apart
    distilled = summary["base"]["distilled"]
    assert distilled["pretrain"]["distill_guidance"] == 6.0 and distilled["pretrain"]["init"] == summary["base"]["path"]
    assert set(distilled["sample_accuracy"]) >= {"shape", "shape_color", "bg_color", "all"}
    assert set(summary["distilled"]) == {"supervised"} and summary["distilled"]["supervised"]["training_seeds"] == [0, 1]
    on_distilled = json.loads((tmp_path / "distilled" / "seed1" / "supervised" / "results.json").read_text())
    assert on_distilled["base"] == distilled["path"]
    assert summary["distilled"]["supervised"]["clean_edit_by_training_seed"][1] == on_distilled["methods"]["supervised"]["clean_edit"]
    printed = capsys.readouterr().out
    # pretraining prints its progress (the device's speed reaches the log even if the run is stopped), then the base
    assert printed.startswith("pretrain 1/3: ") and "pretrain 3/3: " in printed and "distill 2/2: " in printed
    assert "\nbase medium" in printed and "3 steps at batch 4" in printed and "at guidance 6" in printed
    assert "| no_cycle | edits more, preserves less |" in printed
    assert "distilled at guidance 6 (2 steps, " in printed and "s): its samples read back right unguided" in printed
    assert "The supervised reference on the base distilled at guidance 6:" in printed
    # ... and paired against the suite's reference on the base, tuple by tuple (byg bench combine --against)
    change = summary["distilled_against_base"]["supervised"]
    suite = [json.loads((tmp_path / f"seed{s}" / "supervised" / "results.json").read_text())["methods"]["supervised"]
             for s in (0, 1)]
    assert change["clean_edit"]["change"] == pytest.approx(
        summary["distilled"]["supervised"]["clean_edit"] - sum(r["clean_edit"] for r in suite) / 2)
    assert "Its change from the reference on the base (the suite's runs), paired" in printed
    # the baselines once more at FlowEdit's paper's guidance, summarised apart (the base has dropped captions)
    assert summary["guided_baselines"]["guidance"] == [1.5, 5.5]
    assert set(summary["guided_baselines"]["methods"]) == {"sdedit", "flowedit"}
    guided = json.loads((tmp_path / "guided" / "baselines" / "results.json").read_text())
    assert (guided["settings"]["baseline_src_guidance"], guided["settings"]["baseline_tgt_guidance"]) == (1.5, 5.5)
    assert summary["guided_baselines"]["methods"]["flowedit"]["clean_edit"] == guided["methods"]["flowedit"]["clean_edit"]
    assert "The zero-shot baselines at classifier-free guidance source 1.5, target 5.5:" in printed
    # ByG once more per seed with its prior guided (the base has dropped captions), apart, paired against the suite's
    prior = summary["prior_guided"]
    assert (prior["guidance"], prior["terms"], set(prior["methods"])) == (4.0, "all", {"byg"})
    assert prior["methods"]["byg"]["training_seeds"] == [0, 1]
    guided_byg = [json.loads((tmp_path / "prior_guided" / f"seed{s}" / "byg" / "results.json").read_text()) for s in (0, 1)]
    assert [(r["settings"]["prior_guidance"], r["settings"]["prior_guidance_terms"], r["settings"]["seed"])
            for r in guided_byg] == [(4.0, "all", 0), (4.0, "all", 1)]
    suite_byg = [json.loads((tmp_path / f"seed{s}" / "byg" / "results.json").read_text()) for s in (0, 1)]
    assert {r["settings"]["prior_guidance"] for r in suite_byg} == {1.0}  # the suite's ByG stays unguided
    assert prior["against_byg"]["byg"]["edit_success"]["change"] == pytest.approx(
        sum(r["methods"]["byg"]["edit_success"] for r in guided_byg) / 2
        - sum(r["methods"]["byg"]["edit_success"] for r in suite_byg) / 2)
    assert "ByG with its prior guided at 4 (all of its base velocities):" in printed
    assert "Its change from ByG with the prior unguided (the suite's runs), paired" in printed
    # the reference at its own schedule: its runs really trained at it, summarised apart from the suite's own
    tuned = summary["tuned_reference"]
    assert (tuned["lr"], tuned["lr_scheduler"], set(tuned["methods"])) == (1e-2, "cosine", {"supervised"})
    settings = json.loads((tmp_path / "tuned" / "seed1" / "supervised" / "results.json").read_text())["settings"]
    assert (settings["lr"], settings["lr_scheduler"], settings["seed"], settings["edit_steps"]) == (1e-2, "cosine", 1, 3)
    assert settings["loraplus_lr_ratio"] == tuned["loraplus_lr_ratio"] == script.REFERENCE_LORAPLUS
    assert settings["n_train"] == tuned["n_train"] == 32  # --tiny's cap on the reference's distinct tuples
    assert settings["lora_targets"] == tuned["lora_targets"] == script.REFERENCE_LORA_TARGETS == "all-linear"
    assert settings["adam_beta2"] == tuned["adam_beta2"] == script.REFERENCE_ADAM_BETA2 < 0.999
    wrapped = load_checked(tmp_path / "tuned" / "seed1" / "supervised" / "runs" / "supervised" / "byg_lora.safetensors",
                           "LoRA")[0]
    assert "transformer.x_embedder.lora_A.weight" in wrapped  # outside the default targets
    assert tuned["methods"]["supervised"]["training_seeds"] == [0, 1]
    suite_settings = json.loads((tmp_path / "seed1" / "supervised" / "results.json").read_text())["settings"]
    assert (suite_settings["lr"], suite_settings["lora_targets"], suite_settings["adam_beta2"]) == (3e-3, "default", 0.999)
    plus = (f"LoRA+ ratio {script.REFERENCE_LORAPLUS:g}, 32 training tuples, LoRA on all-linear layers, AdamW beta2 "
            f"{script.REFERENCE_ADAM_BETA2:g}")
    assert f"The supervised reference at lr 0.01, cosine, {plus}, 2 steps, edits in 3 sampler steps:" in printed
    # and at three times the suite's steps, summarised apart again
    longer = json.loads((tmp_path / "tuned_6" / "seed0" / "supervised" / "results.json").read_text())["settings"]
    assert (longer["steps"], longer["lr"], longer["lr_scheduler"]) == (6, 1e-2, "cosine")
    assert tuned["methods_at_steps"]["6"]["supervised"]["clean_edit_by_training_seed"][0] == json.loads(
        (tmp_path / "tuned_6" / "seed0" / "supervised" / "results.json").read_text())["methods"]["supervised"]["clean_edit"]
    assert f"The supervised reference at lr 0.01, cosine, {plus}, 6 steps, edits in 3 sampler steps:" in printed
    longer_change = tuned["changes_at_steps"]["6"]["supervised"]["edit_success"]["change"]
    assert longer_change == pytest.approx(tuned["methods_at_steps"]["6"]["supervised"]["edit_success"]
                                          - tuned["methods"]["supervised"]["edit_success"])
    assert "Its change from 2 steps, paired over the same held-out tuples:" in printed
    assert tuned["edit_steps"] == 3
    # run again into the same folder: refused before the base is pretrained again, every file as it was
    before = {path: path.read_bytes() for path in tmp_path.rglob("*") if path.is_file()}
    with pytest.raises(SystemExit, match=r"summary\.json, .*toy_base_medium\.safetensors, .*already exist; nothing was "
                                         r"overwritten\. Pick another --out, or pass --overwrite"):
        script.main(["--tiny", "--out", str(tmp_path), "--device", "cpu"])
    assert {path: path.read_bytes() for path in tmp_path.rglob("*") if path.is_file()} == before


def test_the_gpu_bench_stops_at_its_time_limit_and_a_failed_job_stops_no_other(tmp_path):
    script = _script()
    python = [sys.executable, "-c"]
    jobs = {"quick": ([*python, "import os; print(os.environ['PYTHONPATH'])"], tmp_path / "quick"),
            "failing": ([*python, "import sys; print('no such base'); sys.exit(3)"], tmp_path / "failing"),
            "slow": ([*python, "import time; time.sleep(120)"], tmp_path / "slow"),
            "late": ([*python, "pass"], tmp_path / "late")}
    start = time.perf_counter()
    records = script.run_jobs(jobs, 1, deadline=start + 3)  # one at a time, in their order
    assert time.perf_counter() - start < 20  # the slow job was stopped, not waited for
    assert {name: record["status"] for name, record in records.items()} == {
        "quick": script.DONE, "failing": script.FAILED, "slow": script.STOPPED, "late": script.NOT_STARTED}
    assert "failed (3):" in records["failing"]["error"] and "no such base" in records["failing"]["error"]
    assert not (tmp_path / "late").exists()
    # the bench processes import the pack from this checkout, installed or not (the GPU machine's python3)
    assert (tmp_path / "quick" / "log.txt").read_text().strip().split(os.pathsep)[0] == str(ROOT)


def test_past_its_time_limit_the_gpu_bench_writes_its_base_and_a_summary_that_names_every_job_not_run(tmp_path, capsys):
    script = _script()
    assert script.main(["--tiny", "--out", str(tmp_path), "--device", "cpu", "--time-limit", "0.001"]) == 1
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert set(summary["base"]["sample_accuracy"]) >= {"shape", "shape_color", "bg_color", "all"}
    assert "distilled" not in summary["base"]  # a phase past the limit does not start
    # pretraining stops by its share of the limit, here before its first step: the base is saved, and says so
    assert (summary["base"]["pretrain"]["steps"], summary["base"]["pretrain"]["planned_steps"]) == (0, 3)
    jobs = script.bench_jobs(script.parse_args(["--tiny", "--out", str(tmp_path), "--device", "cpu"]), tmp_path)
    # the reference on the distilled base, never made, is skipped, not started and failed on a missing base
    assert summary["unfinished"] == {name: script.SKIPPED if name.startswith("distilled/") else script.NOT_STARTED
                                     for name in jobs}
    assert summary["methods"] == {} and summary["time_limit"] == 0.001
    printed = capsys.readouterr().out
    assert ", 0 of 3 steps (stopped by the time limit, its learning rate not decayed) at batch 4, " in printed
    assert f"{len(jobs)} of {len(jobs)} bench jobs did not finish" in printed and "- seed1/no_cycle: not started" in printed


def test_the_gpu_bench_passes_its_learning_rate_schedule_batch_and_edit_steps_to_every_bench_it_runs(tmp_path):
    script = _script()
    base = tmp_path / "base.safetensors"
    jobs = script.bench_jobs(script.parse_args(["--out", str(tmp_path), "--lr", "0.01", "--lr-scheduler", "cosine",
                                                "--batch-size", "96", "--edit-steps", "3"]), base)
    # baselines (and guided), 8 trained methods x 3 seeds, ByG with the guided prior, the reference on the distilled
    # base and at its own schedule at the suite's steps and at three times them: those first, the longest jobs
    assert len(jobs) == 1 + 1 + 8 * 3 + 3 + 3 + 3 + 3
    assert [name for name in jobs if name.startswith("prior_guided/")] == [f"prior_guided/seed{s}/byg" for s in (0, 1, 2)]
    assert list(jobs).index("prior_guided/seed0/byg") > list(jobs).index("seed2/no_identity_steps")
    prior = jobs["prior_guided/seed1/byg"][0]
    assert prior[prior.index("--methods"):] == ["--methods", "byg", "--seed", "1", "--prior-guidance", "4.0",
                                                "--prior-guidance-terms", "all"]
    assert all("--prior-guidance" not in command for name, (command, _) in jobs.items() if name.split("/")[0] != "prior_guided")
    anchor = script.bench_jobs(script.parse_args(["--prior-guidance", "2", "--prior-guidance-terms", "anchor"]), base)
    assert anchor["prior_guided/seed0/byg"][0][-4:] == ["--prior-guidance", "2.0", "--prior-guidance-terms", "anchor"]
    assert not any(name.startswith("prior_guided") for name in script.bench_jobs(
        script.parse_args(["--prior-guidance", "1"]), base))
    assert list(jobs)[:3] == [f"tuned_3600/seed{s}/supervised" for s in (0, 1, 2)]
    assert [command[command.index("--steps") + 1] for name, (command, _) in jobs.items() if "--steps" in command] == \
        ["3600"] * 3 + ["1200"] * 3
    assert all(command[command.index("--lr") + 1] == "0.01" for command, _ in jobs.values())
    assert all(command[command.index("--lr-scheduler") + 1] == "cosine" for command, _ in jobs.values())
    assert all(command[command.index("--batch-size") + 1] == "96" for command, _ in jobs.values())
    assert all(command[command.index("--edit-steps") + 1] == "3" for command, _ in jobs.values())
    # the reference at its own settings edits with its own sampler steps; 0: the suite's
    suite_edits = script.bench_jobs(script.parse_args(["--edit-steps", "8"]), base)
    assert {name.split("/")[0]: command[command.index("--edit-steps") + 1] for name, (command, _) in suite_edits.items()} \
        == {"tuned_3600": "3", "tuned": "3", "baselines": "8", "guided": "8", "seed0": "8", "seed1": "8", "seed2": "8",
            "prior_guided": "8", "distilled": "8"}
    # LoRA+: its ratio for every bench, and the reference at its own settings its own
    plus = script.bench_jobs(script.parse_args(["--loraplus-lr-ratio", "2", "--reference-loraplus-lr-ratio", "4"]), base)
    assert {name.split("/")[0]: command[command.index("--loraplus-lr-ratio") + 1] for name, (command, _) in plus.items()} \
        == {"tuned_3600": "4.0", "tuned": "4.0", "baselines": "2.0", "guided": "2.0", "seed0": "2.0", "seed1": "2.0",
            "seed2": "2.0", "prior_guided": "2.0", "distilled": "2.0"}
    # AdamW's beta2: the reference at its own settings its own, every other bench torch's
    betas = script.bench_jobs(script.parse_args(["--reference-adam-beta2", "0.9"]), base)
    assert {name.split("/")[0]: command[command.index("--adam-beta2") + 1] for name, (command, _) in betas.items()
            if "--adam-beta2" in command} == {"tuned_3600": "0.9", "tuned": "0.9"}
    # distinct training tuples: the reference at its own settings a tuple per sample, every other bench its --n-train
    tuples = script.bench_jobs(script.parse_args(["--n-train", "2048"]), base)
    assert {name.split("/")[0]: command[command.index("--n-train") + 1] for name, (command, _) in tuples.items()} \
        == {"tuned_3600": "38400", "tuned": "38400", "baselines": "2048", "guided": "2048", "seed0": "2048",
            "seed1": "2048", "seed2": "2048", "prior_guided": "2048", "distilled": "2048"}
    same = script.bench_jobs(script.parse_args(["--edit-steps", "8", "--reference-edit-steps", "0"]), base)
    assert all(command[command.index("--edit-steps") + 1] == "8" for command, _ in same.values())
    default = script.bench_jobs(script.parse_args([]), base)
    assert not any(flag in command for flag in ("--lr", "--lr-scheduler", "--overwrite", "--batch-size", "--edit-steps",
                                                "--loraplus-lr-ratio", "--n-train", "--adam-beta2")
                   for name, (command, _) in default.items() if not name.startswith("tuned"))
    assert [command[command.index("--edit-steps"):command.index("--edit-steps") + 6] for name, (command, _)
            in default.items() if name.startswith("tuned")] == [["--edit-steps", "3", "--lr", "0.01", "--lr-scheduler", "cosine"]] * 6
    only = script.bench_jobs(script.parse_args(["--steps", "600", "--reference-steps", "600", "2400"]), base)
    assert {name.split("/")[0] for name in only if name.startswith("tuned")} == {"tuned", "tuned_2400"}
    without = script.bench_jobs(script.parse_args(["--reference-lr", "0"]), base)
    assert not any(name.startswith("tuned") for name in without)
    guided = script.bench_jobs(script.parse_args(["--baseline-guidance", "3.5", "13.5"]), base)["guided/baselines"][0]
    assert guided[guided.index("--methods"):] == ["--methods", "sdedit,flowedit", "--baseline-guidance", "3.5", "13.5"]
    assert "guided/baselines" not in script.bench_jobs(script.parse_args(["--baseline-guidance", "1", "1"]), base)
    # --overwrite: the script's own folders were checked once, so every bench may replace its folder
    replacing = script.bench_jobs(script.parse_args(["--out", str(tmp_path), "--overwrite"]), base).values()
    assert all("--overwrite" in command for command, _ in replacing)


@pytest.mark.parametrize("flags, named", [
    (["--edit-steps", "0"], "--edit-steps must be > 0, got 0"),
    (["--batch-size", "-4"], "--batch-size must be > 0, got -4"),
    (["--reference-n-train", "0"], "--reference-n-train must be > 0, got 0"),
    (["--reference-steps", "1200", "0"], "--reference-steps must be > 0, got 0"),
    (["--lr", "0"], "--lr must be > 0, got 0.0"),
    (["--reference-edit-steps", "-1"], "--reference-edit-steps must be >= 0, got -1"),
    (["--seeds", "0", "-1"], "--seeds must be >= 0, got -1"),
    (["--p-uncond", "1"], "--p-uncond must be in [0, 1), got 1.0"),
    (["--guidance", "0"], "--guidance must be > 0, got 0.0"),
    (["--baseline-guidance", "1.5", "0"], "--baseline-guidance must be > 0, got 0.0"),
    (["--p-uncond", "0"], "--baseline-guidance 1.5 5.5 and --prior-guidance 4 need a base with an unconditional "
                          "velocity, but --p-uncond is 0: pass --baseline-guidance 1 1 and --prior-guidance 1"),
    (["--p-uncond", "0", "--baseline-guidance", "1", "1"], "--prior-guidance 4 needs a base with an unconditional "
                                                            "velocity, but --p-uncond is 0: pass --prior-guidance 1"),
    (["--prior-guidance", "0"], "--prior-guidance must be > 0, got 0.0"),
    (["--prior-guidance", "1", "--prior-guidance-terms", "anchor"], "prior_guidance_terms 'anchor' guides nothing at "
                                                                      "prior_guidance 1; give the guidance too "
                                                                      "(prior_guidance, --prior-guidance W)"),
    (["--prior-guidance-terms", "none"], "--prior-guidance-terms: invalid choice: 'none'"),
    (["--distill-lr", "-0.001"], "--distill-lr must be > 0, got -0.001"),
    (["--reference-loraplus-lr-ratio", "0"], "--reference-loraplus-lr-ratio must be > 0, got 0.0"),
    (["--reference-adam-beta2", "1"], "--reference-adam-beta2 must be in [0, 1), got 1.0"),
    (["--time-limit", "-5"], "--time-limit must be > 0, got -5.0"),
    (["--seeds", "0", "10000"], "--seeds must be in [0, 10000), got 10000"),  # had pretrained, then every bench job failed
    (["--base-size", "huge"], "--base-size: invalid choice: 'huge'"),
    pytest.param(["--device", "cuda"], "--device cuda, but torch sees no GPU here; use --device cpu",
                 marks=pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU is here")),
])
def test_the_gpu_bench_refuses_a_bad_setting_before_it_pretrains_anything(flags, named, tmp_path, capsys):
    script = _script()
    with pytest.raises(SystemExit) as stopped:
        script.parse_args(["--out", str(tmp_path / "out"), "--device", "cpu", *flags])
    assert stopped.value.code == 2
    assert named in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
    # 0 where it means "not" or "the suite's" stays allowed
    args = script.parse_args(["--device", "cpu", "--reference-lr", "0", "--reference-edit-steps", "0", "--distill-steps", "0"])
    assert (args.reference_steps, args.distill_steps) == ([], 0)
    # a base without dropped captions benches with neither guidance asked of it
    assert script.parse_args(["--p-uncond", "0", "--baseline-guidance", "1", "1", "--prior-guidance", "1"]).p_uncond == 0


@pytest.mark.parametrize("flags, named", [
    (["--steps", "-3"], "--steps must be > 0, got -3"),  # had written an untrained base
    (["--batch-size", "0"], "--batch-size must be > 0, got 0"),  # had failed in torch.stack
    (["--lr", "0"], "--lr must be > 0, got 0.0"),
    (["--t-shift", "0"], "--t-shift must be > 0, got 0.0"),
    (["--p-uncond", "1.5"], "--p-uncond must be in [0, 1), got 1.5"),  # had trained on empty captions only
    (["--distill-guidance", "-2"], "--distill-guidance must be > 0, got -2.0"),
    (["--adam-beta2", "1"], "--adam-beta2 must be in [0, 1), got 1.0"),
    (["--adam-beta2", "0"], "--adam-beta2 must be > 0, got 0.0"),
    (["--seed", "10000"], "--seed must be in [0, 10000), got 10000"),  # had drawn held-out scenes to pretrain on
])
def test_toy_pretrain_refuses_a_bad_setting_before_it_builds_or_writes_anything(flags, named, tmp_path, capsys):
    out = tmp_path / "base.safetensors"
    assert byg(["toy", "pretrain", "--device", "cpu", "--out", str(out), *flags]) == 2
    assert named in capsys.readouterr().err and not out.exists()


def test_the_cli_pretrains_a_base_size_and_benches_on_it(tmp_path, capsys, monkeypatch):
    base = tmp_path / "medium.safetensors"
    assert byg(["toy", "pretrain", "--base-size", "medium", "--steps", "2", "--batch-size", "2",
                "--device", "cpu", "--out", str(base)]) == 0
    # continuing a base writes elsewhere: the base it starts from is never overwritten
    before = base.read_bytes()
    assert byg(["toy", "pretrain", "--init", str(base), "--out", str(base), "--steps", "1"]) == 2
    assert "--init" in capsys.readouterr().err and base.read_bytes() == before
    assert byg(["toy", "pretrain", "--init", str(base), "--steps", "1", "--batch-size", "2", "--lr", "1e-4",
                "--t-mean", "0.5", "--out", str(tmp_path / "more.safetensors")]) == 0
    assert json.loads(load_checked(tmp_path / "more.safetensors", "toy base")[1]["pretrain"])["init"] == str(base)
    out = tmp_path / "bench"
    # the default device: a test process must not switch accelerate between the CPU and a GPU
    assert byg(["bench", "--smoke", "--base", str(base), "--methods", "identity,byg", "--out", str(out)]) == 0
    report = json.loads((out / "results.json").read_text())
    assert set(report["methods"]) == {"identity", "byg"}
    assert report["base"] == str(base) and report["device"].startswith(default_device())
    assert "| byg | " in capsys.readouterr().out
    # a size never pretrained is named with the command that makes it
    monkeypatch.setattr("byg_core.toy.model.DEFAULT_TOY_WEIGHTS", tmp_path / "assets" / "toy_base.safetensors")
    assert byg(["bench", "--smoke", "--base-size", "large", "--out", str(out)]) == 2
    assert "byg toy pretrain --base-size large" in capsys.readouterr().err
    # without --steps, a size pretrains as long as its shipped base did (a continuation: PRETRAIN_STEPS)
    asked = []
    monkeypatch.setattr("byg_core.toy.model.pretrain", lambda **kwargs: asked.append(kwargs) or {})
    for flags in (["--base-size", "medium"], [], ["--base-size", "medium", "--init", str(base)]):
        assert byg(["toy", "pretrain", *flags, "--out", str(tmp_path / f"never{len(asked)}.safetensors")]) == 0
    assert [kwargs["steps"] for kwargs in asked] == [7000, 20000, 20000]
    assert [kwargs["size"] for kwargs in asked[:2]] == ["medium", "small"]
    if not torch.cuda.is_available():  # asked for a GPU that is not there: said before anything loads
        assert byg(["toy", "pretrain", "--device", "cuda", "--out", str(tmp_path / "x.safetensors")]) == 2
        assert "no GPU" in capsys.readouterr().err
