"""Training callbacks: frequency-aware timesteps, sample grids, exports, a max_time-aware progress bar."""

from callbacks.checkpoint_io import SafeCheckpointIO
from callbacks.export import ExportOnTrainEnd, export_checkpoint
from callbacks.interrupt import StopOnSignal
from callbacks.progress import TimeBudgetProgressBar
from callbacks.sample_logger import SampleLogger
from callbacks.timesteps import FrequencyAwareTimesteps

__all__ = [
    "ExportOnTrainEnd", "FrequencyAwareTimesteps", "SafeCheckpointIO", "SampleLogger", "StopOnSignal",
    "TimeBudgetProgressBar", "export_checkpoint",
]
