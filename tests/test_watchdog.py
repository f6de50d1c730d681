"""Watchdogs: each fires exactly where it should and nowhere else, and one restored from
its JSON state gives the verdicts of one that never stopped."""

from __future__ import annotations

import json
import math
import sys
import time
from types import SimpleNamespace

import pytest

from tunesmith.train.watchdog import (Alarm, LossSpike, LowUtilisation, NonFinite, NvmlSampler, SlowConvergence,
                                      Verdict)

NAN, INF = float("nan"), float("inf")


def curve(n: int, spikes: dict[int, float] | None = None) -> dict[int, float]:
    """A falling loss with deterministic noise (steps 1..n), plus the given spikes."""
    losses = {s: 2.5 * math.exp(-s / 80) + 0.8 + 0.03 * math.sin(s * 1.7) + 0.02 * math.cos(s * 0.3)
              for s in range(1, n + 1)}
    losses.update(spikes or {})
    return losses


def round_trip(state: dict) -> dict:
    """What a checkpoint does to a state: JSON text and back."""
    return json.loads(json.dumps(state))


# ---------------------------------------------------------------- loss spikes

def test_loss_spike_fires_at_the_spike_and_nowhere_else():
    losses = curve(200, {120: 4.0})
    spike = LossSpike()
    alarms = [a for s, loss in losses.items() if (a := spike.check(s, loss)) is not None]
    assert [a.step for a in alarms] == [120]
    a = alarms[0]
    assert a.kind == "loss_spike" and a.detail["step"] == 120 and a.detail["loss"] == 4.0
    assert a.detail["z"] > 6
    assert "Spikes indicate data quality issues or learning rate problems" in a.message
    assert "\n" not in a.message


def test_a_modest_bump_and_an_early_spike_do_not_fire():
    # Step 5: fewer than min_count losses seen, nothing is judged. Step 100: 10% up, noise-sized.
    losses = curve(150, {5: 9.0, 100: curve(150)[100] * 1.1})
    spike = LossSpike()
    assert all(spike.check(s, loss) is None for s, loss in losses.items())


def test_flat_curve_does_not_divide_by_zero_and_still_sees_a_jump():
    spike = LossSpike()
    assert [spike.check(s, 1.0) for s in range(1, 21)] == [None] * 20
    assert spike.check(21, 1.05) is None  # 5% on a flat curve: under the 2% floor times 6
    alarm = spike.check(22, 1.5)
    assert alarm is not None and alarm.detail["mad"] == 0.0


def test_spike_names_up_to_five_rows_in_the_message_and_all_in_the_detail():
    spike = LossSpike()
    for s in range(1, 31):
        spike.check(s, 1.0 + 0.01 * (s % 3))
    rows = [f"train.jsonl:{n}" for n in (3, 14, 15, 92, 65, 35, 89)]
    alarm = spike.check(31, 5.0, rows=rows)
    assert "check the rows of this step: train.jsonl:3, train.jsonl:14, train.jsonl:15, train.jsonl:92, " \
           "train.jsonl:65 (+2 more)" in alarm.message
    assert alarm.detail["rows"] == rows
    assert json.loads(json.dumps(alarm.to_dict())) == alarm.to_dict()


def test_non_finite_losses_stay_out_of_the_spike_window():
    spike = LossSpike()
    assert spike.check(1, NAN) is None and spike.check(2, INF) is None
    assert spike.state() == {"losses": []}


def test_loss_spike_restored_from_state_gives_the_same_alarms():
    losses = curve(300, {60: 5.0, 170: 5.0, 171: 4.8})
    whole = LossSpike()
    expected = [a.to_dict() for s, loss in losses.items() if (a := whole.check(s, loss)) is not None]
    assert [a["step"] for a in expected] == [60, 170, 171]

    first, got = LossSpike(), []
    for s in range(1, 166):  # "preempted" after step 165, inside the next spike's window
        if (a := first.check(s, losses[s])) is not None:
            got.append(a.to_dict())
    resumed = LossSpike()
    resumed.load_state(round_trip(first.state()))
    for s in range(166, 301):
        if (a := resumed.check(s, losses[s])) is not None:
            got.append(a.to_dict())
    assert got == expected


# ---------------------------------------------------------------- non-finite values

def test_nan_at_5_and_7_to_9_skips_at_5_and_stops_at_9():
    bad = {5: (NAN, 1.0), 7: (1.0, INF), 8: (NAN, NAN), 9: (NAN, 2.0)}
    watch = NonFinite(max_in_a_row=3)
    verdicts = {s: watch.check(s, *bad.get(s, (2.0, 1.0))) for s in range(1, 10)}
    assert {s: (v.skip, v.stop) for s, v in verdicts.items()} == {
        1: (False, False), 2: (False, False), 3: (False, False), 4: (False, False),
        5: (True, False), 6: (False, False), 7: (True, False), 8: (True, False), 9: (True, True)}
    assert [s for s, v in verdicts.items() if v.alarm] == [5, 7, 8, 9]
    stop = verdicts[9].alarm
    assert stop.kind == "non_finite_stop" and stop.detail["in_a_row"] == 3
    assert "3 non-finite steps in a row (steps 7-9)" in stop.message
    assert "last good checkpoint is kept" in stop.message
    assert verdicts[7].alarm.message == "grad norm inf at step 7: its update was skipped (1 in a row; training stops at 3)"
    assert json.loads(json.dumps(stop.to_dict()))["detail"]["loss"] == "nan"  # NaN is not JSON
    assert verdicts[1] == Verdict(skip=False, stop=False, alarm=None)


def test_unmeasured_values_are_not_bad():
    assert NonFinite().check(1, 1.0, None).skip is False


def test_non_finite_restored_mid_run_still_stops_at_the_third():
    first = NonFinite()
    first.check(7, NAN, 1.0)
    first.check(8, NAN, 1.0)
    resumed = NonFinite()
    resumed.load_state(round_trip(first.state()))
    assert resumed.check(9, NAN, 1.0).stop is True
    assert resumed.skipped == 3


# ---------------------------------------------------------------- slow convergence

def evals(watch: SlowConvergence, losses: dict[int, float]) -> list[Alarm]:
    return [a for s, loss in losses.items() if (a := watch.check(s, loss)) is not None]


def test_slow_convergence_fires_once_at_the_third_eval():
    watch = SlowConvergence(total_steps=1000, settings={"train.lr": 1e-5, "method.r": 8})
    alarms = evals(watch, {50: 2.000, 100: 1.995, 150: 1.990, 200: 1.99, 250: 1.99, 300: 1.99})
    assert [a.step for a in alarms] == [150]
    a = alarms[0]
    assert a.detail["evals"] == [[50, 2.0], [100, 1.995], [150, 1.99]]
    assert a.detail["change"] == 0.005
    assert "validation loss moved 0.5% from step 50 (2) to step 150 (1.99)" in a.message
    assert "Increase both and retry" in a.message and a.message.endswith("now train.lr=1e-05, method.r=8")


@pytest.mark.parametrize("losses", [
    {50: 2.0, 100: 1.9, 150: 1.8},  # converging
    {50: 2.0, 100: 2.05, 150: 2.1},  # rising: not slow convergence
], ids=["converging", "rising"])
def test_slow_convergence_quiet_when_the_loss_moves(losses):
    assert evals(SlowConvergence(total_steps=1000), losses) == []


def test_slow_convergence_not_judged_after_the_early_part():
    # 30% of 400 = step 120; the third evaluation at 150 is too late to call "early".
    assert evals(SlowConvergence(total_steps=400), {50: 2.0, 100: 2.0, 150: 2.0}) == []


def test_slow_convergence_restored_between_evals_fires_the_same():
    losses = {50: 2.0, 100: 1.999, 150: 1.998}
    expected = [a.to_dict() for a in evals(SlowConvergence(total_steps=1000), losses)]
    first = SlowConvergence(total_steps=1000)
    evals(first, {50: 2.0, 100: 1.999})
    resumed = SlowConvergence(total_steps=1000)
    resumed.load_state(round_trip(first.state()))
    assert [a.to_dict() for a in evals(resumed, {150: 1.998})] == expected
    assert len(expected) == 1


# ---------------------------------------------------------------- GPU utilisation

def feed(watch: LowUtilisation, values: dict[int, float], check_at: range) -> list[Alarm]:
    """One sample per second at t = key, checked every second as the loop would."""
    alarms = []
    for t in check_at:
        if t in values:
            watch.add([(float(t), values[t])])
        if (a := watch.check(step=t, now=float(t))) is not None:
            alarms.append(a)
    return alarms


def test_utilisation_judged_only_after_a_whole_window():
    watch = LowUtilisation(window_s=60, threshold=80)
    alarms = feed(watch, {t: 50.0 for t in range(0, 100)}, range(0, 100))
    assert [a.step for a in alarms] == [60]
    # At t=60 the window is (0, 60]: t=1..60, sixty samples.
    assert alarms[0].detail == {"step": 60, "mean": 50.0, "samples": 60, "window_s": 60, "threshold": 80}
    assert "Anything below 80% means your data pipeline is bottlenecking the GPU" in alarms[0].message


def test_utilisation_mean_is_over_the_window_only():
    # 0% for t < 40, then 100%. The window (t-60, t] holds t-59..t, of which t-39 are at 100%:
    # the mean is 100 * (t - 39) / 60, under 80 for t <= 86; the first whole window is at t = 60.
    values = {t: (0.0 if t < 40 else 100.0) for t in range(0, 200)}
    watch = LowUtilisation(window_s=60, threshold=80, repeat_s=1)
    alarms = feed(watch, values, range(0, 200))
    assert [a.step for a in alarms] == list(range(60, 87))
    assert alarms[-1].detail["mean"] == round(100 * 47 / 60, 2)  # 78.33: the last one under 80


def test_utilisation_at_the_threshold_is_fine():
    watch = LowUtilisation(window_s=10, threshold=80)
    assert feed(watch, {t: (70.0 if t % 2 else 90.0) for t in range(0, 30)}, range(0, 30)) == []


def test_utilisation_alarm_repeats_only_after_repeat_s():
    watch = LowUtilisation(window_s=60, threshold=80, repeat_s=600)
    alarms = feed(watch, {t: 10.0 for t in range(0, 1300)}, range(0, 1300))
    assert [a.step for a in alarms] == [60, 660, 1260]


def test_utilisation_quiet_when_the_sampler_stops():
    watch = LowUtilisation(window_s=60, threshold=80)
    watch.add([(0.0, 10.0), (1.0, 10.0)])
    assert watch.check(step=1, now=200.0) is None  # both samples are long out of the window


def test_utilisation_state_keeps_the_count_and_starts_a_fresh_window():
    watch = LowUtilisation(window_s=60)
    feed(watch, {t: 10.0 for t in range(0, 61)}, range(0, 61))
    resumed = LowUtilisation(window_s=60)
    resumed.load_state(round_trip(watch.state()))
    assert resumed.alarms == 1
    resumed.add([(5000.0, 10.0)])
    assert resumed.check(step=61, now=5000.0) is None  # a new process: a whole window first


# ---------------------------------------------------------------- the NVML sampler

class FakeNvml:
    """The parts of pynvml the sampler uses."""

    def __init__(self, values, init_error: Exception | None = None):
        self.values = list(values)
        self.init_error = init_error
        self.handles = []
        self.shut = False

    def nvmlInit(self):
        if self.init_error:
            raise self.init_error

    def nvmlDeviceGetHandleByIndex(self, i):
        self.handles.append(("index", i))
        return f"handle-{i}"

    def nvmlDeviceGetHandleByUUID(self, uuid):
        self.handles.append(("uuid", uuid))
        return f"handle-{uuid}"

    def nvmlDeviceGetUtilizationRates(self, handle):
        if not self.values:
            raise RuntimeError("GPU is lost")
        return SimpleNamespace(gpu=self.values.pop(0), memory=0)

    def nvmlShutdown(self):
        self.shut = True


def test_sampler_samples_off_thread_and_drains_in_order():
    nvml = FakeNvml([10, 20, 30, 40])
    clock = iter(range(100)).__next__
    sampler = NvmlSampler(interval=0.001, nvml=nvml, clock=lambda: float(clock())).start()
    deadline = time.monotonic() + 5
    while sampler._thread.is_alive() and time.monotonic() < deadline:
        time.sleep(0.005)  # it stops by itself when the fake runs out of values
    assert sampler.drain() == [(0.0, 10.0), (1.0, 20.0), (2.0, 30.0), (3.0, 40.0)]
    assert sampler.drain() == []
    assert not sampler.active and "GPU is lost" in sampler.note
    sampler.close()
    assert nvml.shut and nvml.handles == [("index", 0)]


def test_sampler_close_stops_the_thread():
    nvml = FakeNvml([50] * 100_000)
    with NvmlSampler(interval=0.01, nvml=nvml) as sampler:
        time.sleep(0.05)
        assert sampler.active
    assert not sampler._thread.is_alive() and nvml.shut
    assert len(sampler.drain()) >= 1


def test_sampler_finds_the_gpu_by_uuid():
    nvml = FakeNvml([])
    NvmlSampler(device="58d3c2a4-0000-1111-2222-333344445555", nvml=nvml)._open()
    NvmlSampler(device="MIG-abc", nvml=nvml)._open()
    assert nvml.handles == [("uuid", b"GPU-58d3c2a4-0000-1111-2222-333344445555"), ("uuid", b"MIG-abc")]


def test_sampler_without_a_driver_is_inactive_without_error():
    sampler = NvmlSampler(nvml=FakeNvml([], init_error=RuntimeError("NVML Shared Library Not Found"))).start()
    assert not sampler.active and sampler._thread is None
    assert sampler.note == "GPU utilisation not sampled: NVML unavailable (RuntimeError: NVML Shared Library Not Found)"
    sampler.close()
    assert sampler.drain() == []


def test_sampler_without_the_package_is_inactive_without_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "pynvml", None)  # import pynvml -> ImportError
    sampler = NvmlSampler().start()
    assert not sampler.active
    assert sampler.note == "GPU utilisation not sampled: nvidia-ml-py is not installed"
    sampler.close()


def test_sampler_feeds_the_utilisation_check():
    nvml = FakeNvml([30.0] * 70)
    ticks = iter(range(1000))
    sampler = NvmlSampler(nvml=nvml, clock=lambda: float(next(ticks)))
    sampler._open()
    watch = LowUtilisation(window_s=60)
    alarms = []
    for step in range(70):  # the loop: one sample a second, drained each step
        sampler.sample_once()
        watch.add(sampler.drain())
        if (a := watch.check(step, now=float(step))) is not None:
            alarms.append(a)
    assert [(a.step, a.detail["mean"]) for a in alarms] == [(60, 30.0)]
