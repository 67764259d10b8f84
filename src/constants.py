"""Names shared by the data pipeline, the model and the callbacks."""

# Kind of a training pair; a sample's ``kind`` tensor is an index into this tuple.
KINDS: tuple[str, ...] = ("video", "image", "multiview")
KIND_INDEX: dict[str, int] = {name: i for i, name in enumerate(KINDS)}

REFERENCE_SIZE = 224  # DINOv2 input side, pixels
