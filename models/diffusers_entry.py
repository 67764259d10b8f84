"""Entry point for diffusers' generic loader (docs/inference.md):

    import models.diffusers_entry
    from diffusers import DiffusionPipeline
    pipe = DiffusionPipeline.from_pretrained(folder, custom_pipeline=models.diffusers_entry.__file__,
                                             trust_remote_code=True)

diffusers copies the file it is given into its module cache and runs it; this one only imports the
project's ``AnyDoorPipeline``, so the loaded pipeline is that class, not a copy of it.
"""

from models.pipeline import AnyDoorPipeline

__all__ = ["AnyDoorPipeline"]
