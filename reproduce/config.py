"""The configuration schema: every key a run reads, with the paper's recipe as the default.

Structured OmegaConf configs (dataclasses, struct mode): a misspelled key fails with a
suggestion, a value of the wrong type fails naming the key. Defaults are He et al. 2015,
Section 4.2 (CIFAR-10); `reproduce/configs/<experiment>.yaml` (package data) holds only what an
experiment changes.
Hyperparameters are stated per reference batch (`schedule.ref_batch`): the learning rate and
the iteration counts below are those of a batch of 128, and the batch-scaling rules convert
them when the batch changes (see `schedules.py`).
"""
from __future__ import annotations

import difflib
import math
import re
from dataclasses import dataclass, field
from importlib import resources
from typing import Any, Dict, List, Optional

from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from .errors import ConfigError
from .model_names import check_name, is_imagenet
from .schedules import Schedule

# The experiments' YAMLs are package data, so an installed wheel finds them wherever it runs.
CONFIG_DIR = resources.files("reproduce") / "configs"
PROFILES = ("paper", "quick", "smoke")


@dataclass
class DataConfig:
    dataset: str = "cifar10"  # cifar10 | synthetic | imagefolder
    root: str = "data"  # holds cifar-10-batches-py/ (downloaded there when absent)
    download: bool = True  # fetch CIFAR-10 from its official URL when data.root lacks it
    batch_size: int = 128  # global (effective) batch at the start of training; Section 4.2
    per_device_batch: Optional[int] = None  # when set: batch_size = this x devices x nodes x accumulate
    val_size: int = 5000  # Section 4.2: "45k/5k train/val split"
    split_seed: int = 0  # the val split is fixed, independent of the training seed
    augment: bool = True  # Section 4.2: 4-pixel padding, random 32x32 crop, horizontal flip
    eval_batch_size: int = 1000
    eval_limit: Optional[int] = None  # evaluate on the first N val/test images at each point
    train_limit: Optional[int] = None  # train on the first N images of the training split only
    on_device: bool = True  # keep the whole dataset on the training device as uint8
    synthetic_train: int = 2048  # synthetic dataset sizes (smoke runs)
    synthetic_test: int = 512
    image_size: int = 224  # imagefolder: the crop (Section 3.4); shorter side in [256, 480] x size/224
    color_aug: bool = False  # imagefolder: Krizhevsky et al. 2012's colour augmentation (Section 3.4)
    workers: int = 4  # imagefolder: decoding processes per device


@dataclass
class ScheduleConfig:
    lr: float = 0.1  # Section 4.2, at ref_batch
    ref_batch: int = 128  # the batch the lr and the iteration counts are stated for
    scaling: str = "linear"  # linear | sqrt | none: lr used = lr * rule(B / ref_batch)
    factor: float = 0.1  # Section 4.2: "divide it by 10 at 32k and 48k iterations"
    milestones: List[int] = field(default_factory=lambda: [32000, 48000])  # iterations at ref_batch
    max_steps: int = 64000  # Section 4.2: "terminate training at 64k iterations"
    decay: str = "lr"  # lr: multiply lr by factor at milestones | batch: divide B by factor instead
    max_batch: Optional[int] = None  # cap for the batch-size schedule (then the lr decays instead)
    warmup: str = "none"  # none | gradual (Goyal et al. 2017) | constant (Section 4.2, ResNet-110)
    warmup_steps: int = 0  # iterations at ref_batch
    warmup_lr: Optional[float] = None  # constant warmup: the lr held during warmup
    warmup_until_err: Optional[float] = None  # constant warmup ends when train/err (%) drops below
    cycle: List[float] = field(default_factory=list)  # lr multipliers per phase (heat/cool runs)
    on_plateau: bool = False  # ImageNet (Section 3.4): drop the lr when val/err plateaus, not at milestones
    plateau_patience: int = 3  # evaluations without improvement before a drop
    plateau_threshold: float = 0.1  # improvement (error points) that counts
    max_drops: int = 2  # "reduced twice" (Figure 4)


@dataclass
class OptimConfig:
    momentum: float = 0.9  # Section 4.2
    weight_decay: float = 1e-4  # Section 4.2
    nesterov: bool = False


@dataclass
class TrainerConfig:
    accelerator: str = "auto"
    devices: int = 1
    num_nodes: int = 1
    strategy: str = "auto"
    precision: str = "auto"  # auto: bf16-mixed on GPUs that support it, 32-true elsewhere
    accumulate: int = 1  # gradient-accumulation steps (part of the effective batch)
    eval_every: int = 1000  # iterations between evaluations; Figure 6 is plotted per 1k
    log_every: int = 50  # iterations between train/* logs (no per-step host syncs)
    checkpoint_every: int = 2000  # iterations between atomic checkpoints
    channels_last: bool = True
    compile: bool = False  # torch.compile the model (training and evaluation use the compiled one)
    # auto: reduce-overhead (CUDA graphs: a ResNet-20 step at batch 128 is launch-bound on a large
    # GPU) on CUDA, default elsewhere; or default | reduce-overhead | max-autotune | max-autotune-no-cudagraphs
    compile_mode: str = "auto"
    # the one training step (module.py), eager or replayed as a CUDA graph (graph_step.py):
    # auto = cuda-graph where it can run (one CUDA device, see graph_blockers), else eager
    train_step: str = "auto"
    deterministic: bool = False
    progress: bool = True
    threads: Optional[int] = None  # CPU threads for torch (default: torch's choice)
    parallel: int = 1  # runs of a sweep trained at once, one process each (GPUs shared round-robin)
    # the runs of a sweep with one parameter shape (seeds; plain and ResNet of a depth) as one stacked
    # network (stacked.py): on | off | auto (on where docs/performance.md measured a stack faster)
    stack: str = "auto"
    stack_max: int = 20  # runs per stack at most
    noise_scale: bool = False  # log the gradient noise scale (McCandlish et al. 2018)
    noise_every: int = 50


@dataclass
class WandbConfig:
    mode: str = "auto"  # auto (online when logged in, else offline) | online | offline | disabled
    project: str = "reproduce"
    entity: Optional[str] = None
    group: Optional[str] = None  # default: experiment name + timestamp
    tags: List[str] = field(default_factory=list)
    log_model: bool = True
    init_timeout: int = 30
    flush_every_s: float = 2.0  # flush the offline .wandb log this often, so a kill -9 loses at most this


@dataclass
class ModelConfig:
    shortcut: Optional[str] = None  # ImageNet nets: A | B | C (Section 3.3); default A, B for bottlenecks
    zero_init_residual: bool = False  # Goyal et al. 2017, Section 5.1: last BN gamma of each block = 0


@dataclass
class SweepConfig:
    """Grids of the temperature and batch-scaling experiments (ignored by the others)."""
    # temperature (a): SGD on a least-squares problem with a known gradient-noise covariance
    quadratic_dim: int = 8  # small tr(H): the 4th-moment correction lr tr(H) / 2B stays under 7%
    quadratic_noise: float = 1.0  # label-noise std sigma: C = sigma^2 H per example
    quadratic_eig_range: List[float] = field(default_factory=lambda: [0.1, 1.0])  # spectrum of H
    quadratic_lrs: List[float] = field(default_factory=lambda: [0.0025, 0.005, 0.01, 0.02, 0.04])
    quadratic_batches: List[int] = field(default_factory=lambda: [1, 4, 16, 64])
    quadratic_steps: int = 40000  # per (lr, B); the second half is averaged
    quadratic_chains: int = 256  # independent SGD chains run side by side
    # temperature (b): heat and cool one ResNet
    cycle: List[float] = field(default_factory=lambda: [1.0, 0.1, 1.0, 0.1])  # lr multipliers per phase
    # temperature (c) and batch-scaling: batch sizes, and the training length in examples
    batches: List[int] = field(default_factory=lambda: [128, 512, 2048])
    modes: List[str] = field(default_factory=lambda: ["linear+warmup", "linear", "none"])
    warmup_epochs: float = 5.0  # Goyal et al. 2017, Section 2.2: gradual warmup over 5 epochs


# The `sweep` keys each experiment kind reads (temperature.py, batch_scaling.py); a run's W&B config
# carries only its own kind's (loggers.wandb_config), so a ResNet run shows no quadratic grid.
SWEEP_KEYS = {
    "temperature": ("quadratic_dim", "quadratic_noise", "quadratic_eig_range", "quadratic_lrs", "quadratic_batches",
                    "quadratic_steps", "quadratic_chains", "cycle", "batches"),
    "batch_scaling": ("batches", "modes", "warmup_epochs"),
}


@dataclass
class RunConfig:
    experiment: str = "resnet"
    kind: str = "curves"  # one of experiments.KINDS: curves | temperature | batch_scaling | imagenet
    profile: str = "paper"
    description: str = ""
    models: List[str] = field(default_factory=lambda: ["resnet20"])
    seeds: List[int] = field(default_factory=lambda: [0])
    seed: int = 0  # the seed of the current run: set per run from `seeds`, never by the user
    out_dir: str = "runs"
    resume: bool = False
    only: List[str] = field(default_factory=list)  # train only these runs of the sweep (by run name)
    data: DataConfig = field(default_factory=DataConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    wandb: WandbConfig = field(default_factory=WandbConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    per_model: Dict[str, Any] = field(default_factory=dict)  # model name -> overrides for that run
    sweep: SweepConfig = field(default_factory=SweepConfig)


CHOICES = {
    "profile": PROFILES,
    "data.dataset": ("cifar10", "synthetic", "imagefolder"),
    "schedule.scaling": ("linear", "sqrt", "none"),
    "schedule.decay": ("lr", "batch"),
    "schedule.warmup": ("none", "gradual", "constant"),
    "wandb.mode": ("auto", "online", "offline", "disabled"),
    "trainer.compile_mode": ("auto", "default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs"),
    "trainer.train_step": ("auto", "eager", "cuda-graph"),
    "trainer.stack": ("auto", "on", "off"),
}


COMMANDS = ("list", "report")  # `python -m reproduce COMMAND`: never an experiment's name


def _source(name: str) -> str:
    """How an experiment's YAML is named in messages."""
    return f"reproduce/configs/{name}.yaml"


def experiments(config_dir=CONFIG_DIR) -> List[str]:
    """The experiments of this install: one YAML each in the package's `configs/`; none is an error."""
    files = config_dir.iterdir() if config_dir.is_dir() else ()
    names = sorted(p.name[:-5] for p in files if p.name.endswith(".yaml") and not p.name.startswith("_"))
    if not names:
        raise ConfigError(f"no experiment configs in {config_dir}: this install lacks the package data "
                          f"reproduce/configs/*.yaml; reinstall the package (pip install reproduce, or pip install -e .)")
    for name in names:
        if name in COMMANDS:
            raise ConfigError(f"{_source(name)}: '{name}' is a command of `reproduce`, so this "
                              f"experiment could never run; rename the file")
    return names


def _all_keys(node: Any, prefix: str = "") -> List[str]:
    keys = []
    if isinstance(node, DictConfig):
        for k in node.keys():
            full = f"{prefix}{k}"
            keys.append(full)
            keys.extend(_all_keys(node[k], full + ".") if OmegaConf.is_dict(node._get_node(k)) else [])
    return keys


def _suggest(word: str, options: List[str]) -> str:
    close = difflib.get_close_matches(word, options, n=1, cutoff=0.5)
    return f" (did you mean '{close[0]}'?)" if close else ""


def _suggest_key(bad: str, keys: List[str]) -> str:
    """A suggestion for an unknown key: the keys that end in its last part (`trainer.max_steps` ->
    `schedule.max_steps`: the right name in the wrong section), else the closest spelling."""
    last = bad.rsplit(".", 1)[-1]
    same = [k for k in keys if k.rsplit(".", 1)[-1] == last]
    if same:
        return " (did you mean " + " or ".join(f"'{k}'" for k in same) + "?)"
    return _suggest(bad, keys) or _suggest(last, keys)


def _merge(base: DictConfig, other: Any, source: str) -> DictConfig:
    """Merge `other` into `base`; turn OmegaConf's errors into one line naming key and source."""
    try:
        return OmegaConf.merge(base, other)
    except OmegaConfBaseException as e:
        key = getattr(e, "full_key", None) or ""
        msg = str(e).splitlines()[0]
        if "not in struct" in msg or "Key '" in msg and "not" in msg:
            bad = key or re.findall(r"Key '([^']+)'", msg)[0]
            raise ConfigError(f"{source}: unknown config key '{bad}'{_suggest_key(bad, _all_keys(base))}") from None
        raise ConfigError(f"{source}: bad value for '{key}': {msg}") from None


def load_yaml(path) -> DictConfig:
    """A YAML file: a path, or a file of the package's data (an importlib.resources Traversable)."""
    try:
        with path.open("r") as f:
            return OmegaConf.load(f)
    except FileNotFoundError:
        raise ConfigError(f"config file not found: {path}") from None
    except Exception as e:  # a YAML syntax error: name the file and the line
        raise ConfigError(f"{path}: cannot parse YAML: {str(e).splitlines()[0]}") from None


def new_config() -> DictConfig:
    """The schema with its defaults, in struct mode; `per_model` and `sweep` stay open maps."""
    cfg = OmegaConf.structured(RunConfig)
    OmegaConf.set_struct(cfg, True)
    OmegaConf.set_struct(cfg.per_model, False)
    return cfg


def _experiment_layers(experiment: str, seen=()):
    """The YAML layers of an experiment, following `extends:` to its parent first."""
    if experiment in seen:
        raise ConfigError(f"{_source(experiment)}: 'extends' forms a cycle")
    names = experiments()
    if experiment not in names:
        raise ConfigError(f"unknown experiment '{experiment}'{_suggest(experiment, names)}; "
                          f"valid: {', '.join(names)}")
    source = _source(experiment)
    layer = load_yaml(CONFIG_DIR / f"{experiment}.yaml")
    parent = layer.pop("extends", None)
    main, profiles = _experiment_layers(parent, (*seen, experiment)) if parent else ([], {})
    for p in ("quick", "smoke"):
        if p in layer:
            profiles.setdefault(p, []).append((source, layer.pop(p)))
    main.append((source, layer))
    return main, profiles


RUN_ONLY_KEYS = {"seed": "the seed of each run comes from `seeds`: to run seed {value} use seeds=[{value}] "
                         "(several at once: seeds=[0,1,2])",
                 # the CLI sets these: accepting them would relabel or move a sweep without doing what they say
                 "experiment": "the experiment is the command's first word: python -m reproduce EXPERIMENT "
                               "(`python -m reproduce list` shows them); to put a sweep elsewhere use out_dir=",
                 "profile": "choose the profile with --quick or --smoke (the paper's recipe is the default)",
                 "resume": "continue a sweep with --resume [DIR]"}


def reject_run_only_keys(layer: Any, source: str) -> None:
    """Keys that the sweep sets per run: accepting them from the user would silently do nothing."""
    for key, why in RUN_ONLY_KEYS.items():
        if isinstance(layer, (dict, DictConfig)) and key in layer:
            raise ConfigError(f"{source}: '{key}' cannot be set; {why.format(value=layer[key])}")


def compose(experiment: str, profile: str = "paper", overrides: List[str] = ()) -> DictConfig:
    """defaults (the paper) <- reproduce/configs/<experiment>.yaml <- its profile section <- key=value."""
    names = experiments()
    if experiment not in names:
        raise ConfigError(f"unknown experiment '{experiment}'{_suggest(experiment, names)}; "
                          f"valid: {', '.join(names)}")
    if profile not in PROFILES:
        raise ConfigError(f"unknown profile '{profile}'; valid: {', '.join(PROFILES)}")
    cfg = new_config()
    main, profiles = _experiment_layers(experiment)
    for source, layer in main:
        reject_run_only_keys(layer, source)
        cfg = _merge(cfg, layer, source)
    if profile == "smoke":
        cfg = _merge(cfg, load_yaml(CONFIG_DIR / "_smoke.yaml"), _source("_smoke"))
    for source, layer in profiles.get(profile, []):
        reject_run_only_keys(layer, f"{source} [{profile}]")
        cfg = _merge(cfg, layer, f"{source} [{profile}]")
    cfg.experiment, cfg.profile = experiment, profile
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override '{item}' is not key=value (e.g. schedule.factor=0.1)")
        cfg = apply_override(cfg, item)
    cfg = derive(cfg)
    validate(cfg)
    return cfg


def quick_equivalent(experiment: str) -> str:
    """The experiment whose `--quick` run is the same as this one's: the furthest ancestor along
    `extends:` whose quick config differs only in name and description. `resnet-8k --quick` is
    `resnet --quick` (its models and lengths are all overridden by resnet's quick section), while
    `resnet-paper --quick` keeps its own ÷10 schedule and stays itself."""
    identity = {"experiment": "", "description": ""}
    mine = OmegaConf.merge(compose(experiment, "quick"), identity)
    best, name = experiment, experiment
    while True:
        parent = load_yaml(CONFIG_DIR / f"{name}.yaml").get("extends")
        if not parent:
            return best
        if OmegaConf.merge(compose(parent, "quick"), identity) == mine:
            best = parent
        name = parent


def apply_override(cfg: DictConfig, item: str) -> DictConfig:
    """One `key=value` from the command line."""
    if "=" not in item:
        raise ConfigError(f"override '{item}' is not key=value (e.g. schedule.factor=0.1)")
    try:
        dot = OmegaConf.from_dotlist([item])
    except Exception as e:
        raise ConfigError(f"override '{item}': {str(e).splitlines()[0]}") from None
    reject_run_only_keys(dot, f"override '{item}'")
    return _merge(cfg, _as_list_where_a_list_is_expected(cfg, item, dot), f"override '{item}'")


def _as_list_where_a_list_is_expected(cfg: DictConfig, item: str, dot: DictConfig) -> DictConfig:
    """`models=resnet20` means `models=[resnet20]`: one value for a list key is a list of one."""
    key, value = item.split("=", 1)
    try:
        expected, given = OmegaConf.select(cfg, key), OmegaConf.select(dot, key)
    except OmegaConfBaseException:
        return dot  # a key the merge will name as unknown
    if isinstance(expected, ListConfig) and given is not None and not isinstance(given, ListConfig):
        return OmegaConf.from_dotlist([f"{key}=[{value}]"])
    return dot


def derive(cfg: DictConfig) -> DictConfig:
    """A copy of `cfg` with the keys that follow from others filled in: data.batch_size from
    data.per_device_batch when that is set (the global batch is what the schedule is stated for).
    `trainer.stack=on` / `off` read as YAML booleans (the string field holds "True" / "False"):
    back to their names."""
    d, t = cfg.data, cfg.trainer
    if t.stack in ("True", "False"):
        cfg = _merge(cfg, {"trainer": {"stack": "on" if t.stack == "True" else "off"}}, "trainer.stack")
        d, t = cfg.data, cfg.trainer
    if d.per_device_batch is None:
        return cfg
    if d.per_device_batch <= 0:
        raise ConfigError(f"data.per_device_batch must be positive, got {d.per_device_batch}")
    return _merge(cfg, {"data": {"batch_size": d.per_device_batch * t.devices * t.num_nodes * t.accumulate}},
                  "data.per_device_batch")


def validate(cfg: DictConfig) -> None:
    """Checks that span keys or need more than a type: one line per mistake, naming the key. Reads
    `cfg` only (`derive` fills in the derived keys before)."""
    for key, valid in CHOICES.items():
        value = OmegaConf.select(cfg, key)
        if value not in valid:
            raise ConfigError(f"{key}={value!r} is not valid; choose one of: {', '.join(valid)}")
    validate_values(cfg)
    s, d, t = cfg.schedule, cfg.data, cfg.trainer
    for key, value in (("schedule.lr", s.lr), ("data.batch_size", d.batch_size),
                       ("schedule.ref_batch", s.ref_batch), ("schedule.max_steps", s.max_steps),
                       ("data.eval_batch_size", d.eval_batch_size), ("trainer.devices", t.devices),
                       ("trainer.accumulate", t.accumulate), ("trainer.eval_every", t.eval_every),
                       ("trainer.log_every", t.log_every), ("trainer.checkpoint_every", t.checkpoint_every),
                       ("trainer.parallel", t.parallel), ("trainer.stack_max", t.stack_max)):
        if not value > 0:
            raise ConfigError(f"{key} must be positive, got {value}")
    if not 0 < s.factor <= 1:
        raise ConfigError(f"schedule.factor must be in (0, 1] (0.5 halves the lr, 0.1 is the paper's ÷10), got {s.factor}")
    if list(s.milestones) != sorted(s.milestones) or any(m <= 0 for m in s.milestones):
        raise ConfigError(f"schedule.milestones must be increasing positive iterations, got {list(s.milestones)}")
    if s.cycle and len(s.cycle) != len(s.milestones) + 1:
        raise ConfigError(f"schedule.cycle needs one multiplier per phase ({len(s.milestones) + 1}), got {len(s.cycle)}")
    if d.train_limit is not None and d.train_limit < d.batch_size:
        raise ConfigError(f"data.train_limit={d.train_limit} is smaller than data.batch_size={d.batch_size}")
    if d.dataset == "imagefolder" and s.decay == "batch":
        raise ConfigError("schedule.decay=batch needs an in-memory dataset (cifar10 or synthetic), not imagefolder")
    for mode in cfg.sweep.modes:
        if mode not in ("linear+warmup", "linear", "none", "sqrt"):
            raise ConfigError(f"sweep.modes: '{mode}' is not one of linear+warmup, linear, sqrt, none")
    per_device = t.devices * t.num_nodes * t.accumulate
    if d.batch_size % per_device:
        raise ConfigError(f"data.batch_size={d.batch_size} is not divisible by devices x nodes x accumulate "
                          f"= {per_device}; choose a multiple of {per_device}")
    blockers = graph_blockers(t)
    if t.train_step == "cuda-graph" and blockers:
        raise ConfigError(f"trainer.train_step=cuda-graph: {'; '.join(blockers)} (use auto or eager)")
    if t.stack == "on" and stack_blockers(cfg):
        raise ConfigError(f"trainer.stack=on: {'; '.join(stack_blockers(cfg))} (use auto or off)")
    if s.warmup == "constant" and s.warmup_steps <= 0 and s.warmup_until_err is None:
        raise ConfigError("schedule.warmup=constant needs schedule.warmup_steps > 0 or schedule.warmup_until_err")
    if s.warmup == "gradual" and s.warmup_steps <= 0:
        raise ConfigError("schedule.warmup=gradual needs schedule.warmup_steps > 0")
    if not cfg.models:
        raise ConfigError("models is empty; e.g. models=[resnet20,plain20]")
    if not cfg.seeds:
        raise ConfigError("seeds is empty; e.g. seeds=[0] or seeds=[0,1,2]")
    if len(set(cfg.seeds)) != len(cfg.seeds):
        raise ConfigError(f"seeds lists a seed twice: {list(cfg.seeds)}")
    for name in cfg.models:
        check_name(name)
    for name in cfg.per_model:
        check_name(name)
    Schedule.for_run(cfg)  # a schedule that cannot be built fails here, in one line


def graph_blockers(t) -> List[str]:
    """Why a CUDA graph cannot capture the step of a run with trainer config `t`, whatever the
    machine (graph_step.uses_cuda_graph adds the device)."""
    blockers = []
    if t.devices != 1 or t.num_nodes != 1:
        blockers.append(f"it needs trainer.devices=1 and trainer.num_nodes=1, got {t.devices} and {t.num_nodes} "
                        f"(DDP's gradient all-reduce is not captured)")
    if t.strategy not in ("auto", "single_device"):
        blockers.append(f"it needs trainer.strategy=auto, got {t.strategy} (a strategy's backward hooks are not captured)")
    if str(t.precision) in ("16", "16-mixed"):
        blockers.append(f"trainer.precision={t.precision} scales the loss with a GradScaler outside the graph "
                        f"(use bf16-mixed or 32-true)")
    if t.accumulate != 1:
        blockers.append("it needs trainer.accumulate=1")
    if t.compile:
        blockers.append("trainer.compile=true captures its own graphs")
    if t.noise_scale:
        blockers.append("trainer.noise_scale hooks into every backward")
    return blockers


def stack_blockers(cfg) -> List[str]:
    """Why the runs of a sweep with config `cfg` cannot train as stacks (stacked.py), whatever the machine."""
    t, blockers = cfg.trainer, []
    if any(is_imagenet(m) for m in cfg.models) or cfg.data.dataset == "imagefolder":
        blockers.append("it stacks the CIFAR nets on in-memory data only (data.dataset=cifar10 or synthetic)")
    if t.devices != 1 or t.num_nodes != 1 or t.strategy not in ("auto", "single_device"):
        blockers.append("a stack trains on one device (trainer.devices=1, num_nodes=1, strategy=auto)")
    if str(t.precision) in ("16", "16-mixed", "16-true"):
        blockers.append(f"trainer.precision={t.precision}: fp16 needs a loss scale, which would couple the runs "
                        f"(use bf16-mixed or 32-true)")
    if t.accumulate != 1:
        blockers.append("it needs trainer.accumulate=1")
    if t.compile:
        blockers.append("trainer.compile=true compiles one net")
    if t.noise_scale:
        blockers.append("trainer.noise_scale measures one net's gradients")
    if cfg.schedule.on_plateau:
        blockers.append("schedule.on_plateau decides the drops from one run's validation error")
    if t.parallel > 1:
        blockers.append("a stack trains in the sweep's process: set trainer.parallel=1")
    return blockers


# What `--resume` may change: how the rest of the run is executed and logged, never what it trains
# (a changed lr, length or batch would splice two runs into one set of curves)
RESUME_KEYS = ("trainer.threads", "trainer.progress", "trainer.parallel", "trainer.accelerator", "trainer.train_step",
               "trainer.stack", "trainer.stack_max",
               "data.root", "data.download", "data.workers", "data.on_device", "wandb.mode", "wandb.init_timeout",
               "wandb.flush_every_s", "wandb.log_model", "only")


def _leaves(node: Any, prefix: str = "") -> Dict[str, Any]:
    if isinstance(node, dict):
        out = {}
        for k, v in node.items():
            out.update(_leaves(v, f"{prefix}{k}.") if isinstance(v, dict) and v else {f"{prefix}{k}": v})
        return out
    return {prefix.rstrip("."): node}


def check_resume_changes(saved: DictConfig, cfg: DictConfig, source: str) -> None:
    """`--resume` runs what was started: an override outside RESUME_KEYS that changes the saved
    sweep config fails in one line naming the key and both values."""
    before, after = (_leaves(OmegaConf.to_container(c, resolve=True)) for c in (saved, cfg))
    for key in sorted(set(before) | set(after)):
        if key in ("out_dir", "resume") or any(key == k or key.startswith(k + ".") for k in RESUME_KEYS):
            continue
        if before.get(key) != after.get(key):
            raise ConfigError(f"--resume cannot change {key}: {source} has {before.get(key)!r}, the override gives "
                              f"{after.get(key)!r}; start a new sweep for that (another out_dir=), or drop the override. "
                              f"--resume may change: {', '.join(RESUME_KEYS)}")


ACCELERATORS = ("auto", "cpu", "gpu", "cuda", "mps")
PRECISIONS = ("auto", "32-true", "16-mixed", "bf16-mixed", "16-true", "bf16-true", "64-true")
CIFAR_TRAIN = 50000  # images in CIFAR-10's training batches, split into train and val


def validate_values(cfg: DictConfig) -> None:
    """Values that would train something else than asked (a wrong split, a constant lr) or fail deep
    inside a run: one line each, before anything trains."""
    s, d, t, o = cfg.schedule, cfg.data, cfg.trainer, cfg.optim
    for key, value, valid in (("trainer.accelerator", t.accelerator, ACCELERATORS),
                              ("trainer.precision", t.precision, PRECISIONS)):
        if value not in valid:
            raise ConfigError(f"{key}={value!r} is not valid; choose one of: {', '.join(valid)}")
    for key in ("schedule.lr", "schedule.factor", "schedule.plateau_threshold", "schedule.warmup_lr",
                "schedule.warmup_until_err", "optim.momentum", "optim.weight_decay", "wandb.flush_every_s"):
        value = OmegaConf.select(cfg, key)
        if value is not None and not math.isfinite(value):
            raise ConfigError(f"{key} must be a finite number, got {value}")
    for key in ("trainer.num_nodes", "trainer.noise_every", "data.synthetic_train", "data.synthetic_test",
                "data.eval_limit", "data.train_limit", "trainer.threads", "data.per_device_batch"):
        value = OmegaConf.select(cfg, key)
        if value is not None and value < 1:
            raise ConfigError(f"{key} must be at least 1, got {value}" +
                              ("; leave it unset (null) for no limit" if key.endswith("_limit") else ""))
    if not 0 <= o.momentum < 1:
        raise ConfigError(f"optim.momentum must be in [0, 1) (Section 4.2: 0.9), got {o.momentum}")
    if o.weight_decay < 0:
        raise ConfigError(f"optim.weight_decay must be >= 0 (Section 4.2: 1e-4), got {o.weight_decay}")
    for seed in cfg.seeds:
        if not 0 <= seed < 2 ** 32:
            raise ConfigError(f"seeds: {seed} is not a seed; seeds are integers in [0, 2^32)")
    if len(set(cfg.models)) != len(cfg.models):
        raise ConfigError(f"models lists a model twice: {list(cfg.models)}; for repeats of one model use seeds=[0,1,2]")
    if d.dataset in ("cifar10", "synthetic"):
        total = CIFAR_TRAIN if d.dataset == "cifar10" else d.synthetic_train
        # synthetic: the val split is capped at a fifth of the images (smoke runs keep the default 5000)
        if d.val_size < 1 or d.dataset == "cifar10" and d.val_size > total // 5:
            raise ConfigError(f"data.val_size must be in 1..{total // 5} (at most a fifth of the {total:,} training "
                              f"images; Section 4.2: 5000), got {d.val_size}")
    late = [m for m in s.milestones if m >= s.max_steps]
    if late and not s.on_plateau:
        raise ConfigError(f"schedule.milestones {late} are not below schedule.max_steps={s.max_steps}: they would "
                          f"never drop the lr; e.g. schedule.milestones=[{s.max_steps // 2},{s.max_steps * 3 // 4}]")


def for_model(cfg: DictConfig, model: str, seed: int) -> DictConfig:
    """The config of one run: the sweep config with that model's `per_model` overrides."""
    run = OmegaConf.merge(cfg, {"models": [model], "seed": seed})
    if model in cfg.per_model:
        run = _merge(run, cfg.per_model[model], f"per_model.{model}")
    run = derive(run)
    validate(run)
    return run


def to_dict(cfg: DictConfig) -> Dict[str, Any]:
    return OmegaConf.to_container(cfg, resolve=True)
