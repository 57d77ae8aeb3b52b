"""Small callbacks, each a thin wrapper over a pure function or one job."""
from .batch_scaling import BatchScaling  # noqa: F401
from .checkpoint import AtomicCheckpoint  # noqa: F401
from .lr_schedule import LRSchedule  # noqa: F401
from .noise_scale import GradientNoiseScale  # noqa: F401
from .progress import EvalLines, IterationBar, StopAtLastStep  # noqa: F401
