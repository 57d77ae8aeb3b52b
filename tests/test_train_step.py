"""How a step runs (reproduce/graph_step.py): which mode `auto` picks, the one-line errors of an
explicit choice that cannot work, and a checkpoint's step count carried across modes."""
import copy

import pytest
import torch
from omegaconf import OmegaConf

from reproduce.config import compose
from reproduce.errors import ConfigError
from reproduce.graph_step import GraphedStep, train_step_for
from reproduce.lightning import AUTOMATIC_STEPS, MANUAL_STEPS, carry_step_count


def cfg(*overrides):
    return compose("resnet", "smoke", list(overrides))


@pytest.mark.parametrize("overrides,cuda,expected", [
    ((), True, "cuda-graph"),                                # one CUDA device: the graph
    ((), False, "manual"),                                   # CPU: the same step, uncaptured
    (("trainer.accelerator=cpu",), True, "manual"),          # CPU asked for on a GPU machine
    (("trainer.devices=2",), True, "manual"),                # DDP: the all-reduce is not captured
    (("trainer.strategy=ddp",), True, "manual"),             # DDP's hooks, even on one device
    (("trainer.accumulate=2",), True, "lightning"),          # accumulation needs Lightning's loop
    (("trainer.accumulate=2",), False, "lightning"),
    (("trainer.compile=true",), True, "lightning"),          # compile captures its own graphs
    (("trainer.noise_scale=true",), False, "lightning"),     # the noise estimate hooks into backward
    (("trainer.precision=16-mixed",), True, "lightning"),    # fp16's GradScaler works outside the graph
    (("trainer.train_step=manual",), False, "manual"),
    (("trainer.train_step=lightning",), True, "lightning"),
])
def test_auto_picks_the_graph_only_where_it_can_capture(overrides, cuda, expected):
    assert train_step_for(cfg(*overrides), cuda_available=cuda) == expected


@pytest.mark.parametrize("overrides,message", [
    (("trainer.train_step=cuda-graph", "trainer.accelerator=cpu"), "needs a CUDA device"),
    (("trainer.train_step=manual", "trainer.accumulate=2"), "manual needs trainer.accumulate=1"),
    (("trainer.train_step=cuda-graph", "trainer.precision=16-mixed"), "trainer.precision=16-mixed"),
])
def test_an_impossible_choice_is_one_line_naming_the_key(overrides, message):
    with pytest.raises(ConfigError, match=message) as e:
        compose("resnet", "smoke", list(overrides))
    assert "trainer.train_step" in str(e.value) and "\n" not in str(e.value)


def test_graph_blockers_are_all_named():
    c = cfg("trainer.devices=2", "trainer.accumulate=2", "trainer.compile=true")
    OmegaConf.update(c, "trainer.train_step", "cuda-graph")
    with pytest.raises(ConfigError) as e:
        train_step_for(c, cuda_available=True)
    text = str(e.value)
    assert "trainer.devices=1" in text and "accumulate=1" in text and "compile" in text


def test_a_misspelled_mode_lists_the_valid_ones():
    with pytest.raises(ConfigError, match="auto, lightning, manual, cuda-graph"):
        compose("resnet", "smoke", ["trainer.train_step=graph"])


def _loops(auto_steps: int, manual_steps: int) -> dict:
    def counter(n):
        return {"total": {"ready": n, "completed": n}, "current": {"ready": n, "completed": n}}
    zero_grad = {k: {**v, "started": v["completed"]} for k, v in counter(auto_steps).items()}
    return {"loops": {"fit_loop": {AUTOMATIC_STEPS: {"optimizer": {"step": counter(auto_steps), "zero_grad": zero_grad}},
                                   MANUAL_STEPS: counter(manual_steps)}}}


def test_step_count_moves_to_the_mode_that_resumes():
    # written by Lightning's automatic loop at step 40, resumed by a manual (or cuda-graph) step
    ckpt = _loops(40, 0)
    carry_step_count(ckpt, automatic=False)
    assert ckpt["loops"]["fit_loop"][MANUAL_STEPS]["total"]["completed"] == 40
    # and the other way (a GPU run continued on a CPU)
    ckpt = _loops(0, 40)
    carry_step_count(ckpt, automatic=True)
    auto = ckpt["loops"]["fit_loop"][AUTOMATIC_STEPS]["optimizer"]
    assert auto["step"]["total"]["completed"] == 40 and auto["zero_grad"]["total"]["started"] == 40
    # the same mode: untouched
    for automatic, ckpt in ((True, _loops(40, 0)), (False, _loops(0, 40))):
        before = copy.deepcopy(ckpt)
        carry_step_count(ckpt, automatic)
        assert ckpt == before


class Batches(torch.utils.data.IterableDataset):
    """Random CIFAR-shaped batches, the same each time: `sizes` gives each step's batch size."""

    def __init__(self, sizes):
        self.sizes = sizes

    def __iter__(self):
        g = torch.Generator().manual_seed(0)
        for n in self.sizes:
            yield torch.randn(n, 3, 32, 32, generator=g), torch.randint(0, 10, (n,), generator=g)


def fit_resnet8(train_step, sizes, max_steps, accelerator="cpu", callbacks=(), ckpt_path=None):
    """A ResNet-8 ClassifierModule fitted by a bare Lightning Trainer: the module, the trainer."""
    import pytorch_lightning as pl
    from reproduce.config import OptimConfig
    from reproduce.models import build
    from reproduce.module import ClassifierModule

    torch.manual_seed(0)
    module = ClassifierModule(build("resnet8"), OmegaConf.structured(OptimConfig), log_every=4, train_step=train_step)
    trainer = pl.Trainer(accelerator=accelerator, devices=1, max_steps=max_steps, logger=False,
                         enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                         limit_val_batches=0, callbacks=list(callbacks))
    trainer.fit(module, torch.utils.data.DataLoader(Batches(sizes), batch_size=None), ckpt_path=ckpt_path)
    return module, trainer


@pytest.mark.parametrize("saved_by,resumed_by", [("lightning", "manual"), ("manual", "lightning")])
def test_the_carried_counter_is_the_one_lightning_reads(tmp_path, saved_by, resumed_by):
    """Against Lightning itself: a Trainer restored from a checkpoint of the other mode reports its
    global_step (the private layout lives in lightning.py; this notices a rename). The checkpoint
    is marked as a cuda-graph run's (fused SGD): the resumed run uses its own kernel choice."""
    import pytorch_lightning as pl

    class StartStep(pl.Callback):
        def on_train_start(self, trainer, pl_module):
            self.step = trainer.global_step

    _, first = fit_resnet8(saved_by, [4] * 100, max_steps=3)
    first.save_checkpoint(tmp_path / "first.ckpt")
    ckpt = torch.load(tmp_path / "first.ckpt", weights_only=False)
    for group in ckpt["optimizer_states"][0]["param_groups"]:
        group["fused"] = True  # as a cuda-graph run saves it
    torch.save(ckpt, tmp_path / "first.ckpt")
    start = StartStep()
    _, second = fit_resnet8(resumed_by, [4] * 100, max_steps=5, callbacks=[start], ckpt_path=tmp_path / "first.ckpt")
    assert start.step == 3  # continues at the restored step, not at 0
    assert second.global_step == 5
    assert [g["fused"] for g in second.optimizers[0].param_groups] == [None]  # not the checkpoint's


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a CUDA device")
def test_graphed_step_matches_eager_on_cuda():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.BatchNorm2d(8), torch.nn.Flatten(),
                                torch.nn.LazyLinear(10)).cuda()
    model(torch.randn(2, 3, 8, 8, device="cuda"))
    eager = copy.deepcopy(model)
    params = list(model.parameters())
    step = GraphedStep(params, torch.empty(4, 3, 8, 8, device="cuda"), torch.zeros(4, dtype=torch.long, device="cuda"),
                       lambda x, y: torch.nn.functional.cross_entropy(model(x), y), channels_last=False)
    for i in range(6):  # 3 warm-up steps, the capture, then replays
        x, y = torch.randn(4, 3, 8, 8, device="cuda"), torch.randint(0, 10, (4,), device="cuda")
        step(x, y)
        eager.zero_grad()
        torch.nn.functional.cross_entropy(eager(x), y).backward()
        for p, q in zip(params, eager.parameters()):
            torch.testing.assert_close(p.grad, q.grad, rtol=1e-4, atol=1e-5)
    assert step.graph is not None


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a CUDA device")
def test_cuda_graph_trains_as_the_manual_step_through_lightning():
    """The whole path on a GPU: Trainer, two batch shapes (a batch-size schedule captures one graph
    each and moves `.grad` between them), channels_last, fused SGD. Weights, BN statistics, the
    training sums and the step count must match the eager manual step up to kernel rounding."""
    import pytorch_lightning as pl

    class FixedLr(pl.Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            for group in trainer.optimizers[0].param_groups:
                group["lr"] = 0.05

    trained = {}
    for mode in ("manual", "cuda-graph"):
        module, trainer = fit_resnet8(mode, [8] * 6 + [16] * 6, max_steps=12, accelerator="gpu", callbacks=[FixedLr()])
        assert trainer.global_step == 12
        trained[mode] = ({k: v.detach().cpu() for k, v in module.state_dict().items()}, module.train_sums.cpu())
    (eager, eager_sums), (graphed, graphed_sums) = trained["manual"], trained["cuda-graph"]
    assert eager.keys() == graphed.keys()
    for k in eager:  # parameters and BN running statistics (a double or missing BN update shows here)
        torch.testing.assert_close(graphed[k].float(), eager[k].float(), rtol=1e-3, atol=1e-4, msg=k)
    torch.testing.assert_close(graphed_sums, eager_sums, rtol=1e-4, atol=1e-4)


# --------------------------------------------------------------------------------------------
# steps per call: K iterations per Lightning batch (graph_step.py)

def _steps_per_call(*overrides, train_step=None, fault_step=None, resume_step=None, callbacks=()):
    from reproduce.graph_step import steps_per_call_for
    from reproduce.schedules import Schedule
    c = cfg(*overrides)
    schedule = Schedule.for_run(c)
    return steps_per_call_for(c, train_step or train_step_for(c, cuda_available=False), schedule.total_steps,
                              schedule.batch_phase_starts(), fault_step, resume_step, callbacks)


@pytest.mark.parametrize("overrides,kwargs,expected", [
    ((), {}, 2),                                             # smoke: log_every 2, eval/checkpoint 4, 8 steps
    (("trainer.log_every=50", "trainer.eval_every=1000", "trainer.checkpoint_every=2000",
      "schedule.max_steps=64000"), {}, 10),                  # the paper profile: gcd 50, capped at 10
    (("trainer.log_every=8", "trainer.eval_every=8", "trainer.checkpoint_every=8", "schedule.max_steps=64"), {}, 8),
    ((), {"train_step": "lightning"}, 1),                     # Lightning's automatic loop: one step a batch
    ((), {"train_step": "cuda-graph"}, 2),
    (("trainer.devices=2",), {}, 1),                          # DDP reduces once per forward call
    (("trainer.log_every=1",), {}, 1),
    ((), {"fault_step": 7}, 1),                               # a "step" fault ends a chunk where it fires
    ((), {"resume_step": 5}, 1),                              # a SIGTERM checkpoint at an odd step
    ((), {"resume_step": 4}, 2),
    # a batch-size schedule: 8 steps at 16, 2 at 32, 2 at 64 (12 in all); the phase at step 10 makes it 2, not 4
    (("schedule.decay=batch", "data.batch_size=16", "schedule.max_steps=20", "schedule.milestones=[8,12]",
      "trainer.log_every=4", "trainer.eval_every=4", "trainer.checkpoint_every=4"), {}, 2),
])
def test_auto_steps_per_call_divides_every_period(overrides, kwargs, expected):
    assert _steps_per_call(*overrides, **kwargs) == expected


def test_a_callback_that_needs_every_iteration_gets_one_per_batch():
    from reproduce.callbacks import GradientNoiseScale, StopAtLastStep
    from reproduce.lightning import Callback

    class GradientHistogram(Callback):
        every_iteration = True

        def on_after_backward(self, trainer, pl_module):
            pass

    assert _steps_per_call(callbacks=[GradientHistogram()]) == 1
    # hooked into backward (no every_iteration needed): the noise scale with an explicit manual step
    assert _steps_per_call("trainer.noise_scale=true", train_step="manual", callbacks=[GradientNoiseScale(4)]) == 1

    class GradientNorm(Callback):  # only a backward hook
        def on_after_backward(self, trainer, pl_module):
            pass

    assert _steps_per_call(callbacks=[GradientNorm()]) == 1
    with pytest.raises(ConfigError, match="GradientNorm.on_after_backward runs at every backward"):
        _steps_per_call("trainer.steps_per_call=2", callbacks=[GradientNorm()])
    import pytorch_lightning as pl
    assert _steps_per_call(callbacks=[pl.Callback()]) == 2  # Lightning's own empty hooks are no reason
    assert _steps_per_call("trainer.precision=16-mixed", train_step="manual") == 1  # GradScaler
    assert _steps_per_call(callbacks=[StopAtLastStep()]) == 2  # the package's own act at chunk ends
    with pytest.raises(ConfigError, match="GradientHistogram needs every iteration"):
        _steps_per_call("trainer.steps_per_call=2", callbacks=[GradientHistogram()])


@pytest.mark.parametrize("overrides,message", [
    (("trainer.steps_per_call=4",), r"must divide trainer.log_every \(2\)"),
    (("trainer.steps_per_call=2", "trainer.train_step=lightning"), "needs trainer.train_step manual or cuda-graph"),
    (("trainer.steps_per_call=2", "trainer.devices=2"), "needs one device"),
    (("trainer.steps_per_call=-1",), "must be 0 \\(auto\\) or a positive"),
])
def test_an_impossible_steps_per_call_is_one_line_naming_the_key(overrides, message):
    with pytest.raises(ConfigError, match=message) as e:
        compose("resnet", "smoke", list(overrides))
    assert "trainer.steps_per_call" in str(e.value) and "\n" not in str(e.value)


def test_batch_count_follows_the_resuming_runs_unit():
    from reproduce.lightning import BATCH_PROGRESS, align_batch_count

    def ckpt(step, batches, completed_lag=0):
        counts = {"ready": batches, "started": batches, "processed": batches, "completed": batches - completed_lag}
        return {"global_step": step, "loops": {"fit_loop": {BATCH_PROGRESS: {"total": dict(counts), "current": dict(counts)}}}}

    # written by a run of chunks of 10 at step 40 (in on_train_batch_end: the batch not yet completed)
    c = ckpt(40, 4, completed_lag=1)
    align_batch_count(c, micro_batches_per_step=1, steps_per_call=1)
    assert c["loops"]["fit_loop"][BATCH_PROGRESS]["total"] == {"ready": 40, "started": 40, "processed": 40, "completed": 39}
    align_batch_count(c, 1, 10)  # and back
    assert c["loops"]["fit_loop"][BATCH_PROGRESS]["current"] == {"ready": 4, "started": 4, "processed": 4, "completed": 3}
    before = copy.deepcopy(c)  # the same unit: untouched
    align_batch_count(c, 1, 10)
    assert c == before
    c = ckpt(40, 40)  # one micro-batch a step, resumed accumulating 2 per step
    align_batch_count(c, 2, 1)
    assert c["loops"]["fit_loop"][BATCH_PROGRESS]["total"]["processed"] == 80


SPC_BASE = ["resnet", "--smoke", "models=[resnet8]", "trainer.deterministic=true", "trainer.threads=1",
            "wandb.mode=disabled"]


def _final(run_dir):
    ckpt = torch.load(run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    return ckpt, (run_dir / "metrics.csv").read_text()


@pytest.mark.smoke
@pytest.mark.parametrize("case", [
    # the Figure 6 schedule: lr drops inside chunks
    ["schedule.max_steps=24", "schedule.milestones=[12,18]", "trainer.log_every=4", "trainer.eval_every=8",
     "trainer.checkpoint_every=8"],
    # a batch-size schedule after a gradual warmup: the lr changes every step, the batch at chunk ends
    ["schedule.decay=batch", "schedule.warmup=gradual", "schedule.warmup_steps=8", "data.batch_size=16",
     "schedule.max_steps=64", "schedule.milestones=[32,48]", "trainer.log_every=4", "trainer.eval_every=4",
     "trainer.checkpoint_every=4"],
    # bf16 autocast on the CPU: Lightning before 2.5.5 caches the weights' casts for a whole
    # training_step, which a chunk must not reuse across its iterations (the lowest-versions CI runs this)
    ["schedule.max_steps=16", "schedule.milestones=[8,12]", "trainer.log_every=4", "trainer.eval_every=8",
     "trainer.checkpoint_every=8", "trainer.precision=bf16-mixed"],
], ids=["milestones", "batch_decay_warmup", "bf16"])
def test_a_chunked_run_is_bit_identical_to_one_step_per_call(tmp_path, case):
    """Weights, BN statistics, momentum, the training sums and every row of metrics.csv (its
    iteration numbers included) of a run with 4 iterations per Lightning batch equal those of
    1 per batch; the checkpoint counts its batches in its own unit."""
    from .conftest import run_cli
    runs = {}
    for k in (1, 4):
        run_cli(*SPC_BASE, *case, f"trainer.steps_per_call={k}", f"out_dir={tmp_path / str(k)}", timeout=300)
        runs[k] = _final(tmp_path / str(k) / "resnet" / "resnet8")
    (one, one_csv), (four, four_csv) = runs[1], runs[4]
    assert one["global_step"] == four["global_step"]
    for key in one["state_dict"]:
        assert torch.equal(one["state_dict"][key], four["state_dict"][key]), key
    for a, b in zip(one["optimizer_states"][0]["state"].values(), four["optimizer_states"][0]["state"].values()):
        assert torch.equal(a["momentum_buffer"], b["momentum_buffer"])
    assert torch.equal(one["train_metric_sums"], four["train_metric_sums"])
    assert one_csv == four_csv and "val/err" in one_csv
    batches = lambda c: c["loops"]["fit_loop"]["epoch_loop.batch_progress"]["total"]["completed"]  # noqa: E731
    assert batches(one) == one["global_step"] and batches(four) == four["global_step"] // 4


def test_a_blocking_callback_added_at_fit_time_stops_a_chunked_run(tmp_path):
    """build_run decides K from its own callbacks; one added through Lightning's
    `configure_callbacks` (as the bench adds its timer) is checked when training starts."""
    from reproduce.bench import extra_callbacks
    from reproduce.lightning import Callback
    from reproduce.train import run_one

    class GradientNorm(Callback):
        def on_after_backward(self, trainer, pl_module):
            pass

    c = cfg("models=[resnet8]", "wandb.mode=disabled", "trainer.threads=1")
    with extra_callbacks([GradientNorm()]):
        status = run_one(c, tmp_path / "run", group="test")
    assert status["status"] == "failed" and status["step"] == 0
    assert "trainer.steps_per_call=2: GradientNorm.on_after_backward" in status["error"]
