"""Training callbacks: frequency-aware timesteps, sample grids, the model-folder export, a max_time-aware progress bar."""

from callbacks.export import ExportOnTrainEnd
from callbacks.progress import TimeBudgetProgressBar
from callbacks.sample_logger import SampleLogger
from callbacks.timesteps import FrequencyAwareTimesteps

__all__ = ["ExportOnTrainEnd", "FrequencyAwareTimesteps", "SampleLogger", "TimeBudgetProgressBar"]
