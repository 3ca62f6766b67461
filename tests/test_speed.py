"""`byg bench speed`: one interleaved run's ratios, written to speed.json (figures themselves are benchmarks)."""

import json

import pytest
import torch

from byg_core import cli


def test_bench_speed_writes_the_ratios_and_where_a_step_goes(tmp_path, capsys):
    assert cli.main(["bench", "speed", "--model", "toy", "--batch", "2", "--rank", "2", "--repeats", "1",
                     "--device", "cpu", "--out", str(tmp_path), "--matmul-precision", "high"]) == 0
    report = json.loads((tmp_path / "speed.json").read_text())
    # the flag had been taken and ignored by the speed bench; the process's precision is restored after
    assert report["float32_matmul_precision"] == "high" and torch.get_float32_matmul_precision() == "highest"
    assert {"time_ratio", "time_ratio_cache", "flop_ratio", "memory_ratio", "batch", "rank"} <= set(report)
    # the rollout alone is n = 10 no-grad passes: ByG costs several supervised steps in FLOPs
    assert report["flop_ratio"] > 4 and report["time_ratio"] > 1 and report["byg_peak_mib"] > 0
    # without its rollout a step is still three grad passes and four base queries: (3 x 3 + 4) / 3 supervised passes
    assert 3.5 < report["flop_ratio_no_rollout"] < 5 < report["flop_ratio"]
    assert set(report["byg_phases_s"]) == {"rollout", "identity", "forward", "base", "reverse", "backward", "optimizer"}
    assert "time ratio" in capsys.readouterr().out


@pytest.mark.parametrize("flags, named", [
    (["--model", "flux-256", "--size", "72"], "--size 72"),  # had failed in einops after building the model
    (["--model", "flux-256", "--size", "64", "--width", "100"], "--width 100"),  # had run 96 wide, reported 100
    (["--model", "wan-256", "--size", "64", "--frames", "6"], "--frames 6"),  # had run 5 frames, labelled 6
    (["--model", "flux-100"], "flux-100: a width divisible by 64"),  # had been built 64 wide
    (["--model", "wan-0"], "wan-0: a width divisible by 128"),  # had failed building a 0-wide text projection
    (["--device", "cuda:1"], "--device cuda:1"),  # had run on cuda:0 unsynchronised, and reported a peak of 0
])
def test_bench_speed_refuses_what_it_would_not_measure_as_named(tmp_path, capsys, flags, named):
    args = ["bench", "speed", "--batch", "2", "--rank", "2", "--repeats", "1", "--device", "cpu", "--out", str(tmp_path)]
    assert cli.main([*args, *flags]) == 2
    assert named in capsys.readouterr().err and not (tmp_path / "speed.json").exists()


def test_the_cpu_peak_is_measured_on_the_model_as_stored(monkeypatch):
    """A --storage fp8 row's CPU peak came from a bf16 model; and a peak process that died is named at once."""
    import multiprocessing

    from byg_core import speed

    seen, spawn = [], multiprocessing.get_context("spawn")

    class Dying:
        exitcode, alive = 1, False

        def __init__(self, target, args):
            seen.append(args)

        def start(self):
            pass

        def is_alive(self):
            return self.alive

        def kill(self):
            pass

        def join(self):
            pass

    class Context:
        Process = Dying

        def Queue(self):
            return spawn.Queue()

    monkeypatch.setattr(multiprocessing, "get_context", lambda name: Context())
    monkeypatch.setattr(speed, "PEAK_POLL_SECONDS", 0.01)
    with pytest.raises(RuntimeError, match="the process measuring the CPU peak ended with exit code 1"):
        speed.cpu_step_peak("flux-64", 32, 2, 2, "byg", "out", storage="fp8")
    assert "fp8" in seen[0]
    # one that lives on without measuring is given up on (the wait had no end)
    Dying.exitcode, Dying.alive = None, True
    monkeypatch.setattr(speed, "PEAK_TIMEOUT_SECONDS", 0.03)
    with pytest.raises(RuntimeError, match="the process measuring the CPU peak measured nothing in"):
        speed.cpu_step_peak("flux-64", 32, 2, 2, "byg", "out")
