"""Training callbacks: frequency-aware timesteps, sample grids, exports."""

from callbacks.export import ExportOnTrainEnd, export_checkpoint
from callbacks.sample_logger import SampleLogger
from callbacks.timesteps import FrequencyAwareTimesteps

__all__ = ["ExportOnTrainEnd", "FrequencyAwareTimesteps", "SampleLogger", "export_checkpoint"]
