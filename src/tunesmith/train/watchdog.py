"""Training watchdogs: each looks at per-step values and answers with alarms.

Pure logic, called by the step loop on the training thread; nothing here prints. An alarm's
message is one line that says what was seen and what the guide (seed/fine-tuning-on-cloud-
gpus.txt, "Monitoring During Training" and "Common Failure Modes") advises; its `detail`
holds the numbers for metrics.jsonl and train.json.

Every watchdog's state goes into a checkpoint as JSON (`state()`, `load_state()`), so a
resumed run raises exactly the alarms an uninterrupted one would. The one exception is GPU
utilisation, a property of the machine now: after a resume it starts a fresh window.
"""

from __future__ import annotations

import math
import statistics
import threading
import time
from collections import deque
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Mapping, Sequence

ADVICE_SPIKE = 'the guide: "Spikes indicate data quality issues or learning rate problems"'
ADVICE_LR = "the guide's learning rate for LoRA is 1e-4 to 2e-4: lower train.lr"
ADVICE_SLOW = ('the guide: slow convergence "usually means the learning rate is too low or the LoRA rank is '
               'too small. Increase both and retry" (train.lr, method.r)')
ADVICE_GPU = ('the guide: GPU utilisation "should be above 90%. Anything below 80% means your data pipeline is '
              'bottlenecking the GPU": raise train.micro_batch ("as large as your GPU memory allows") and keep '
              'the data on local NVMe, not network storage')
ROWS_IN_MESSAGE = 5


@dataclass(frozen=True)
class Alarm:
    kind: str  # "loss_spike", "non_finite", "non_finite_stop", "slow_convergence", "low_gpu_utilisation"
    step: int
    message: str  # one line: what was seen and the guide's advice
    detail: dict[str, Any] = field(default_factory=dict)  # numbers, JSON-able

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _finite(x: float | None) -> bool:
    return x is not None and math.isfinite(x)


def _g(x: float) -> str:
    """Losses in messages: four significant digits (1.923, 0.0412)."""
    return f"{x:.4g}"


# ---------------------------------------------------------------- loss spikes

class LossSpike:
    """A training loss far above the recent ones: a robust z-score against the median and
    the MAD (median absolute deviation) of the last `window` finite losses.

    Median and MAD, not mean and standard deviation: one spike in the window would inflate
    the standard deviation and hide the next one, and the loss falls all through training,
    so only a recent window says what "normal" is now. 50 steps is long enough for a stable
    median and short enough to follow the falling curve; below `min_count` (10) losses the
    MAD is too rough to judge by, so nothing fires.

    threshold 6: per-step losses are heavy-tailed (batches differ in length and topic).
    Measured on simulated series with this window: Gaussian noise never crosses 6, while
    Student-t noise (3 degrees of freedom, heavier than real curves) crosses 3 once every
    ~40 steps and 6 once every ~250; with 5 degrees of freedom 6 is crossed once every
    ~1000 steps. A bad batch or an LR blow-up is typically 2x the loss or more, far past 6.
    The price: while the loss still falls steeply the window's spread includes the trend,
    so early on only a bigger jump fires (on the test curve, ~2.3x the median at step 60,
    ~1.5x at step 170).

    The spread is floored at 2% of the median (`min_spread`): a nearly flat curve has a tiny
    MAD, and a 5% wiggle on it is not a spike (and a window of equal losses must not divide
    by zero). Only upward jumps alarm: a sudden drop is no trouble.
    """

    kind = "loss_spike"

    def __init__(self, window: int = 50, min_count: int = 10, threshold: float = 6.0,
                 min_spread: float = 0.02) -> None:
        if min_count > window or min_count < 3:
            raise ValueError(f"min_count must be 3..window ({window}), not {min_count}")
        self.window = window
        self.min_count = min_count
        self.threshold = threshold
        self.min_spread = min_spread
        self.losses: deque[float] = deque(maxlen=window)

    def check(self, step: int, loss: float, rows: Sequence[str] = ()) -> Alarm | None:
        """Judge this step's loss against the window before it, then add it to the window.
        `rows`: the step's input rows as "file:line", named in the alarm (the first 5 in
        the message, all of them in the detail). A non-finite loss is NonFinite's business:
        ignored here, and kept out of the window."""
        if not _finite(loss):
            return None
        alarm = self._judge(step, loss, rows) if len(self.losses) >= self.min_count else None
        self.losses.append(loss)
        return alarm

    def _judge(self, step: int, loss: float, rows: Sequence[str]) -> Alarm | None:
        median = statistics.median(self.losses)
        mad = statistics.median(abs(x - median) for x in self.losses)
        # 1.4826 * MAD estimates the standard deviation of normally distributed values.
        spread = max(1.4826 * mad, self.min_spread * abs(median), 1e-12)
        z = (loss - median) / spread
        if z <= self.threshold:
            return None
        shown = ", ".join(rows[:ROWS_IN_MESSAGE]) + (f" (+{len(rows) - ROWS_IN_MESSAGE} more)"
                                                      if len(rows) > ROWS_IN_MESSAGE else "")
        where = f"; check the rows of this step: {shown}" if rows else ""
        message = (f"loss spike at step {step}: {_g(loss)} against a median of {_g(median)} over the last "
                   f"{len(self.losses)} steps (robust z {z:.1f} > {self.threshold:g}); {ADVICE_SPIKE}{where}; "
                   f"if spikes recur on other rows, {ADVICE_LR}")
        return Alarm(self.kind, step, message, {
            "step": step, "loss": loss, "median": median, "mad": mad, "z": round(z, 3),
            "threshold": self.threshold, "rows": list(rows)})

    def state(self) -> dict[str, Any]:
        return {"losses": list(self.losses)}

    def load_state(self, state: Mapping[str, Any]) -> None:
        # json keeps floats exactly (shortest repr round-trips), so the window, and with it
        # every later verdict, is the one an uninterrupted run would have.
        self.losses = deque((float(x) for x in state["losses"]), maxlen=self.window)


# ---------------------------------------------------------------- non-finite values

@dataclass(frozen=True)
class Verdict:
    skip: bool  # do not apply this step's update (zero the gradients instead)
    stop: bool  # stop training; the last good checkpoint stays the result
    alarm: Alarm | None = None


OK = Verdict(skip=False, stop=False)


class NonFinite:
    """A NaN or infinite loss or gradient norm: the step's update must be skipped (one
    poisoned update leaves NaN in the weights and the optimizer's moments for good). One
    bad batch is survivable; `max_in_a_row` (3) bad steps in a row mean the run itself is
    broken (learning rate, precision, weights already gone), so the verdict is stop.

    Called after the backward pass and the gradient clipping, before optimizer.step().
    """

    kind = "non_finite"

    def __init__(self, max_in_a_row: int = 3) -> None:
        if max_in_a_row < 1:
            raise ValueError(f"max_in_a_row must be at least 1, not {max_in_a_row}")
        self.max_in_a_row = max_in_a_row
        self.in_a_row = 0
        self.skipped = 0  # over the whole run

    def check(self, step: int, loss: float | None, grad_norm: float | None) -> Verdict:
        """`None` means "not measured" and is not counted as bad."""
        bad = [f"{name} {value}" for name, value in (("loss", loss), ("grad norm", grad_norm))
               if value is not None and not math.isfinite(value)]
        if not bad:
            self.in_a_row = 0
            return OK
        self.in_a_row += 1
        self.skipped += 1
        detail = {"step": step, "loss": _json_number(loss), "grad_norm": _json_number(grad_norm),
                  "in_a_row": self.in_a_row, "max_in_a_row": self.max_in_a_row}
        seen = ", ".join(bad)
        if self.in_a_row >= self.max_in_a_row:
            first = step - self.in_a_row + 1
            message = (f"{seen} at step {step}: {self.in_a_row} non-finite steps in a row (steps {first}-{step}), "
                       f"training stops and the last good checkpoint is kept; {ADVICE_LR}, and check the rows of "
                       f"those steps ({ADVICE_SPIKE})")
            return Verdict(skip=True, stop=True, alarm=Alarm("non_finite_stop", step, message, detail))
        message = (f"{seen} at step {step}: its update was skipped ({self.in_a_row} in a row; training stops "
                   f"at {self.max_in_a_row})")
        return Verdict(skip=True, stop=False, alarm=Alarm(self.kind, step, message, detail))

    def state(self) -> dict[str, Any]:
        return {"in_a_row": self.in_a_row, "skipped": self.skipped}

    def load_state(self, state: Mapping[str, Any]) -> None:
        self.in_a_row = int(state["in_a_row"])
        self.skipped = int(state["skipped"])


def _json_number(x: float | None) -> float | str | None:
    """NaN and infinity are not JSON: they go into the detail as the strings "nan", "inf"."""
    return x if x is None or math.isfinite(x) else str(x)


# ---------------------------------------------------------------- slow convergence

class SlowConvergence:
    """Validation loss that barely moves early in the run: the guide's "slow convergence",
    too low a learning rate or too small a LoRA rank. Caught early, it costs one short run
    instead of a full one.

    Judged once, at the `evals`-th evaluation (3), if that falls within the first
    `early_fraction` (30%) of the planned steps: when the validation loss has moved less
    than `min_change` (1%) from the first evaluation, in either direction, one alarm.
    Three evaluations: the first is the baseline, and two more intervals keep one slow
    interval (warmup) from deciding. 1%: the validation set is the same every time, so its
    loss carries no sampling noise between evaluations, and a learning rate that works moves
    it by several percent over two intervals this early. A loss that rose by more than 1%
    is not slow convergence (overfitting is another alarm) and is left alone. Runs too short
    for three evaluations in their first 30% are not judged.
    """

    kind = "slow_convergence"

    def __init__(self, total_steps: int, evals: int = 3, early_fraction: float = 0.3, min_change: float = 0.01,
                 settings: Mapping[str, Any] | None = None) -> None:
        """`settings`: the values the advice is about, shown in the message, e.g.
        {"train.lr": 1e-5, "method.r": 8}."""
        if evals < 2:
            raise ValueError(f"evals must be at least 2, not {evals}")
        self.total_steps = total_steps
        self.evals = evals
        self.early_fraction = early_fraction
        self.min_change = min_change
        self.settings = dict(settings or {})
        self.seen: list[tuple[int, float]] = []  # (step, eval loss) of the first `evals` evaluations
        self.judged = False

    @property
    def last_early_step(self) -> int:
        return math.floor(self.total_steps * self.early_fraction)

    def check(self, step: int, eval_loss: float | None) -> Alarm | None:
        if self.judged or not _finite(eval_loss):
            return None
        self.seen.append((step, float(eval_loss)))
        if len(self.seen) < self.evals:
            return None
        self.judged = True
        if step > self.last_early_step:
            return None
        (first_step, first), (_, last) = self.seen[0], self.seen[-1]
        change = (first - last) / abs(first) if first else 0.0  # > 0: it fell
        if not -self.min_change < change < self.min_change:
            return None
        now = ", ".join(f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}" for k, v in self.settings.items())
        message = (f"slow convergence: validation loss moved {change:.1%} from step {first_step} ({_g(first)}) to "
                   f"step {step} ({_g(last)}), under {self.min_change:.0%} in the first {self.evals} evaluations; "
                   f"{ADVICE_SLOW}" + (f"; now {now}" if now else ""))
        return Alarm(self.kind, step, message, {
            "step": step, "evals": [list(e) for e in self.seen], "change": round(change, 6),
            "min_change": self.min_change, "settings": self.settings})

    def state(self) -> dict[str, Any]:
        return {"seen": [list(e) for e in self.seen], "judged": self.judged}

    def load_state(self, state: Mapping[str, Any]) -> None:
        self.seen = [(int(s), float(x)) for s, x in state["seen"]]
        self.judged = bool(state["judged"])


# ---------------------------------------------------------------- GPU utilisation

Sample = tuple[float, float]  # (clock seconds, utilisation %)


class LowUtilisation:
    """GPU utilisation under `threshold` (80%) on average over the last `window_s` (60 s):
    the guide's sign of a data pipeline that starves the GPU.

    A mean over a minute, not single samples: NVML's figure is the share of the last
    sample period in which a kernel ran, and a checkpoint save or an evaluation dips it for
    seconds without anything being wrong. Judged only once a whole window has been observed
    (the first minute includes the warm-up of a fresh process), and then at most once per
    `repeat_s` (10 minutes): a real bottleneck does not go away by itself, and one line per
    step would drown the log.

    Times are the sampler's clock (monotonic seconds). They mean nothing in another process,
    so `state()` keeps only the count of alarms; a resumed run observes a fresh window.
    """

    kind = "low_gpu_utilisation"

    def __init__(self, window_s: float = 60.0, threshold: float = 80.0, repeat_s: float = 600.0) -> None:
        self.window_s = window_s
        self.threshold = threshold
        self.repeat_s = repeat_s
        self.samples: deque[Sample] = deque()
        self.first_at: float | None = None
        self.last_alarm_at: float | None = None
        self.alarms = 0

    def add(self, samples: Sequence[Sample]) -> None:
        for t, value in samples:
            if self.first_at is None:
                self.first_at = t
            self.samples.append((t, value))

    def check(self, step: int, now: float) -> Alarm | None:
        """The window is (now - window_s, now]: samples at or before its start are dropped."""
        while self.samples and self.samples[0][0] <= now - self.window_s:
            self.samples.popleft()
        if self.first_at is None or now - self.first_at < self.window_s or not self.samples:
            return None  # not a whole window observed yet, or the sampler has gone quiet
        if self.last_alarm_at is not None and now - self.last_alarm_at < self.repeat_s:
            return None
        mean = sum(v for _, v in self.samples) / len(self.samples)
        if mean >= self.threshold:
            return None
        self.last_alarm_at = now
        self.alarms += 1
        message = (f"GPU utilisation averaged {mean:.0f}% over the last {self.window_s:g} s at step {step} "
                   f"(under {self.threshold:g}%); {ADVICE_GPU}")
        return Alarm(self.kind, step, message, {
            "step": step, "mean": round(mean, 2), "samples": len(self.samples), "window_s": self.window_s,
            "threshold": self.threshold})

    def state(self) -> dict[str, Any]:
        return {"alarms": self.alarms}

    def load_state(self, state: Mapping[str, Any]) -> None:
        self.alarms = int(state["alarms"])


class NvmlSampler:
    """Samples the GPU's utilisation every `interval` seconds on its own daemon thread, so
    the training thread never waits for NVML; `drain()` hands over what was sampled since
    the last call, for `LowUtilisation.add`.

    `nvml` is the pynvml module (from the nvidia-ml-py package), imported lazily; tests pass
    a fake with the same functions. No package, no NVIDIA driver, or a device that cannot
    report utilisation (a MIG slice): the sampler stays inactive and says why in `note`;
    nothing raises.

    `device`: an NVML index, or better the GPU's UUID ("GPU-..." or the bare UUID torch
    gives in `torch.cuda.get_device_properties(i).uuid`): NVML ignores CUDA_VISIBLE_DEVICES,
    so CUDA's device 0 is not always NVML's index 0.
    """

    def __init__(self, device: int | str = 0, interval: float = 1.0, nvml: Any = None,
                 clock: Callable[[], float] = time.monotonic, max_samples: int = 3600) -> None:
        self.device = device
        self.interval = interval
        self.clock = clock
        self.note: str | None = None
        self._nvml = nvml
        self._handle: Any = None
        self._pending: deque[Sample] = deque(maxlen=max_samples)  # an hour at 1 s, if never drained
        self._lock = threading.Lock()
        self._closing = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def active(self) -> bool:
        return self._handle is not None and self.note is None

    def start(self) -> "NvmlSampler":
        """Initialise NVML here (on the caller's thread, so `active` and `note` are known at
        once), then sample on a daemon thread."""
        if self._open():
            self._thread = threading.Thread(target=self._run, name="tunesmith-nvml", daemon=True)
            self._thread.start()
        return self

    def close(self) -> None:
        self._closing.set()
        if self._thread is not None:
            self._thread.join(timeout=self.interval + 2)
        if self._handle is not None:
            try:
                self._nvml.nvmlShutdown()
            except Exception:
                pass
            self._handle = None

    def __enter__(self) -> "NvmlSampler":
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def drain(self) -> list[Sample]:
        with self._lock:
            out = list(self._pending)
            self._pending.clear()
        return out

    def sample_once(self) -> Sample | None:
        """One reading into the pending samples; None (and inactive from then on) when NVML
        cannot give one."""
        try:
            value = float(self._nvml.nvmlDeviceGetUtilizationRates(self._handle).gpu)
        except Exception as e:  # pynvml.NVMLError: not supported on this device, GPU lost
            self.note = f"GPU utilisation not sampled: NVML could not read it ({type(e).__name__}: {e})"
            return None
        sample = (self.clock(), value)
        with self._lock:
            self._pending.append(sample)
        return sample

    def _open(self) -> bool:
        if self._nvml is None:
            try:
                import pynvml  # nvidia-ml-py
            except ImportError:
                self.note = "GPU utilisation not sampled: nvidia-ml-py is not installed"
                return False
            self._nvml = pynvml
        try:
            self._nvml.nvmlInit()
            self._handle = self._device_handle()
        except Exception as e:  # NVMLError_LibraryNotFound / DriverNotLoaded: no NVIDIA driver here
            self.note = f"GPU utilisation not sampled: NVML unavailable ({type(e).__name__}: {e})"
            self._handle = None
            return False
        return True

    def _device_handle(self) -> Any:
        if isinstance(self.device, int):
            return self._nvml.nvmlDeviceGetHandleByIndex(self.device)
        uuid = self.device if self.device.startswith(("GPU-", "MIG-")) else f"GPU-{self.device}"
        # bytes: older nvidia-ml-py hands the argument to ctypes' c_char_p as it is; newer ones
        # convert str to bytes themselves and pass bytes through.
        return self._nvml.nvmlDeviceGetHandleByUUID(uuid.encode())

    def _run(self) -> None:
        while not self._closing.is_set():
            if self.sample_once() is None:
                return
            self._closing.wait(self.interval)


class Watchdogs:
    """The watchdogs one training run keeps, as the step loop uses them: `before_update`
    decides whether a step's update is applied, `after_step` and `after_eval` return the
    alarms to record. Their state goes into each checkpoint."""

    def __init__(self, total_steps: int, settings: Mapping[str, Any], sampler: NvmlSampler | None = None) -> None:
        self.spike = LossSpike()
        self.nonfinite = NonFinite()
        self.slow = SlowConvergence(total_steps, settings=settings)
        self.utilisation = LowUtilisation()
        self.sampler = sampler
        self.verdict = Verdict(skip=False, stop=False, alarm=None)

    def before_update(self, step: int, loss: float, grad_norm: float) -> bool:
        """Apply this step's update? Not when its loss or gradients are not finite."""
        self.verdict = self.nonfinite.check(step, loss, grad_norm)
        return not self.verdict.skip

    def after_step(self, step: int, loss: float, rows: Sequence[str]) -> list[Alarm]:
        alarms = [self.verdict.alarm] if self.verdict.alarm else []
        if not self.verdict.skip:
            alarms.append(self.spike.check(step, loss, rows))
        if self.sampler is not None and self.sampler.active:
            self.utilisation.add(self.sampler.drain())
            alarms.append(self.utilisation.check(step, time.monotonic()))
        return [a for a in alarms if a is not None]

    def after_eval(self, step: int, eval_loss: float | None) -> list[Alarm]:
        alarm = self.slow.check(step, eval_loss)
        return [alarm] if alarm else []

    @property
    def stop(self) -> bool:
        return self.verdict.stop

    def state(self) -> dict[str, Any]:
        return {"loss_spike": self.spike.state(), "non_finite": self.nonfinite.state(),
                "slow_convergence": self.slow.state(), "low_gpu_utilisation": self.utilisation.state()}

    def load_state(self, state: Mapping[str, Any]) -> None:
        self.spike.load_state(state["loss_spike"])
        self.nonfinite.load_state(state["non_finite"])
        self.slow.load_state(state["slow_convergence"])
        self.utilisation.load_state(state["low_gpu_utilisation"])
