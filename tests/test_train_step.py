"""The training step (reproduce/module.py, reproduce/graph_step.py): where `auto` replays it as a
CUDA graph, the one-line errors of an explicit choice that cannot work, the checkpoint counters
the step relies on (checked against Lightning itself), and the graph against the eager step."""
import copy

import pytest
import torch
from omegaconf import OmegaConf

from reproduce.config import compose
from reproduce.errors import ConfigError
from reproduce.graph_step import GraphedStep, uses_cuda_graph
from reproduce.lightning import check_step_count


def cfg(*overrides):
    return compose("resnet", "smoke", list(overrides))


@pytest.mark.parametrize("overrides,cuda,expected", [
    ((), True, True),                                        # one CUDA device: the graph
    ((), False, False),                                      # CPU: the same step, uncaptured
    (("trainer.accelerator=cpu",), True, False),             # CPU asked for on a GPU machine
    (("trainer.devices=2",), True, False),                   # DDP: the all-reduce is not captured
    (("trainer.strategy=ddp",), True, False),                # DDP's hooks, even on one device
    (("trainer.accumulate=2",), True, False),                # several backward calls per step
    (("trainer.compile=true",), True, False),                # compile captures its own graphs
    (("trainer.noise_scale=true",), True, False),            # the noise estimate hooks into backward
    (("trainer.precision=16-mixed",), True, False),          # fp16's GradScaler works outside the graph
    (("trainer.train_step=eager",), True, False),
    (("trainer.train_step=cuda-graph",), True, True),
])
def test_auto_picks_the_graph_only_where_it_can_capture(overrides, cuda, expected):
    assert uses_cuda_graph(cfg(*overrides), cuda_available=cuda) is expected


@pytest.mark.parametrize("overrides,message", [
    (("trainer.train_step=cuda-graph", "trainer.accumulate=2"), "needs trainer.accumulate=1"),
    (("trainer.train_step=cuda-graph", "trainer.precision=16-mixed"), "trainer.precision=16-mixed"),
])
def test_an_impossible_choice_is_one_line_naming_the_key(overrides, message):
    with pytest.raises(ConfigError, match=message) as e:
        compose("resnet", "smoke", list(overrides))
    assert "trainer.train_step" in str(e.value) and "\n" not in str(e.value)


def test_the_config_does_not_depend_on_the_machine_a_run_is_built_on():
    """cuda-graph validates anywhere (a config written on a laptop for a GPU); only building the
    run without a CUDA device fails, in one line naming the key."""
    c = cfg("trainer.train_step=cuda-graph")
    with pytest.raises(ConfigError, match="needs a CUDA device") as e:
        uses_cuda_graph(c, cuda_available=False)
    assert "trainer.train_step" in str(e.value) and "\n" not in str(e.value)


def test_graph_blockers_are_all_named():
    with pytest.raises(ConfigError) as e:
        compose("resnet", "smoke", ["trainer.train_step=cuda-graph", "trainer.devices=2", "trainer.accumulate=2",
                                    "trainer.compile=true", "data.batch_size=32"])
    text = str(e.value)
    assert "trainer.devices=1" in text and "accumulate=1" in text and "compile" in text


def test_a_misspelled_mode_lists_the_valid_ones():
    with pytest.raises(ConfigError, match="auto, eager, cuda-graph"):
        compose("resnet", "smoke", ["trainer.train_step=graph"])


class Batches(torch.utils.data.IterableDataset):
    """Random CIFAR-shaped batches, the same each time: `sizes` gives each step's batch size."""

    def __init__(self, sizes):
        self.sizes = sizes

    def __iter__(self):
        g = torch.Generator().manual_seed(0)
        for n in self.sizes:
            yield torch.randn(n, 3, 32, 32, generator=g), torch.randint(0, 10, (n,), generator=g)


def fit_resnet8(cuda_graph, sizes, max_steps, accelerator="cpu", callbacks=(), ckpt_path=None, accumulate=1):
    """A ResNet-8 ClassifierModule fitted by a bare Lightning Trainer: the module, the trainer."""
    import pytorch_lightning as pl
    from reproduce.config import OptimConfig
    from reproduce.module import ClassifierModule

    torch.manual_seed(0)
    module = ClassifierModule("resnet8", OmegaConf.structured(OptimConfig), log_every=4,
                              accumulate=accumulate, cuda_graph=cuda_graph)
    bar = any(isinstance(c, pl.callbacks.ProgressBar) for c in callbacks)
    trainer = pl.Trainer(accelerator=accelerator, devices=1, max_steps=max_steps, logger=False,
                         enable_checkpointing=False, enable_progress_bar=bar, enable_model_summary=False,
                         limit_val_batches=0, callbacks=list(callbacks))
    trainer.fit(module, torch.utils.data.DataLoader(Batches(sizes), batch_size=None), ckpt_path=ckpt_path)
    return module, trainer


def test_the_step_counters_are_where_the_resume_check_reads_them(tmp_path):
    """Against Lightning itself: a checkpoint of the manual step passes `check_step_count` (its
    private layout lives in lightning.py; this notices a rename), a Trainer restored from it
    continues at its step, and a checkpoint counting its steps elsewhere is refused in one line.
    The checkpoint is marked as a CUDA-graph run's (fused SGD): the resumed run uses its own kernel."""
    import pytorch_lightning as pl

    class StartStep(pl.Callback):
        def on_train_start(self, trainer, pl_module):
            self.step = trainer.global_step

    _, first = fit_resnet8(False, [4] * 100, max_steps=3)
    first.save_checkpoint(tmp_path / "first.ckpt")
    ckpt = torch.load(tmp_path / "first.ckpt", weights_only=False)
    check_step_count(ckpt, accumulate=1)
    for group in ckpt["optimizer_states"][0]["param_groups"]:
        group["fused"] = True  # as a cuda-graph run saves it
    torch.save(ckpt, tmp_path / "first.ckpt")
    start = StartStep()
    _, second = fit_resnet8(False, [4] * 100, max_steps=5, callbacks=[start], ckpt_path=tmp_path / "first.ckpt")
    assert start.step == 3  # continues at the restored step, not at 0
    assert second.global_step == 5
    assert [g["fused"] for g in second.optimizers[0].param_groups] == [None]  # not the checkpoint's
    with pytest.raises(ConfigError, match="trainer.accumulate=2") as e:  # 3 batches are not 3 steps of 2
        check_step_count(ckpt, accumulate=2, path="last.ckpt")
    assert str(e.value).startswith("last.ckpt: ") and "\n" not in str(e.value)
    old = copy.deepcopy(ckpt)  # an automatic-optimization checkpoint: the manual counter never moved
    old["loops"]["fit_loop"]["epoch_loop.manual_optimization.optim_step_progress"]["total"]["completed"] = 0
    with pytest.raises(ConfigError, match="older version"):
        check_step_count(old, accumulate=1)


def test_accumulation_steps_once_per_iteration_and_the_bar_counts_iterations(capsys):
    """With accumulate=2 Lightning sees two batches per iteration: the optimizer steps after the
    second (global_step counts iterations), and the terminal bar counts iterations of the run."""
    from reproduce.callbacks import IterationBar

    bar = IterationBar()
    module, trainer = fit_resnet8(False, [4] * 100, max_steps=3, callbacks=[bar], accumulate=2)
    assert trainer.global_step == 3 and module.micro_batch == 0 and module.stepped
    assert module.counts == [0, 0]  # the last iteration logged (and reset) the sums of all 6 micro-batches
    assert (bar.train_progress_bar.n, bar.train_progress_bar.total) == (3, 3)
    assert "v_num" not in capsys.readouterr().err


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
def test_cuda_graph_trains_as_the_eager_step_through_lightning():
    """The whole path on a GPU: Trainer, two batch shapes (a batch-size schedule captures one graph
    each and moves `.grad` between them), channels_last, fused SGD. Weights, BN statistics, the
    training sums and the step count must match the eager step up to kernel rounding."""
    import pytorch_lightning as pl

    class FixedLr(pl.Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            for group in trainer.optimizers[0].param_groups:
                group["lr"] = 0.05

    trained = {}
    for mode in ("eager", "cuda-graph"):
        module, trainer = fit_resnet8(mode == "cuda-graph", [8] * 6 + [16] * 6, max_steps=12, accelerator="gpu",
                                      callbacks=[FixedLr()])
        assert trainer.global_step == 12
        trained[mode] = ({k: v.detach().cpu() for k, v in module.state_dict().items()}, module.train_sums.cpu())
    (eager, eager_sums), (graphed, graphed_sums) = trained["eager"], trained["cuda-graph"]
    assert eager.keys() == graphed.keys()
    for k in eager:  # parameters and BN running statistics (a double or missing BN update shows here)
        torch.testing.assert_close(graphed[k].float(), eager[k].float(), rtol=1e-3, atol=1e-4, msg=k)
    torch.testing.assert_close(graphed_sums, eager_sums, rtol=1e-4, atol=1e-4)
