"""Training callbacks: frequency-aware timesteps, sample grids, the model-folder export, a max_time-aware
progress bar, stopping on signals, and atomic checkpoint writes (a CheckpointIO plugin)."""

from callbacks.checkpoint_io import SafeCheckpointIO
from callbacks.export import ExportOnTrainEnd
from callbacks.interrupt import StopOnSignal
from callbacks.progress import TimeBudgetProgressBar
from callbacks.sample_logger import SampleLogger
from callbacks.timesteps import FrequencyAwareTimesteps

__all__ = [
    "ExportOnTrainEnd", "FrequencyAwareTimesteps", "SafeCheckpointIO", "SampleLogger", "StopOnSignal",
    "TimeBudgetProgressBar",
]
