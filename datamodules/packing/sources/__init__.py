"""Source readers: each turns one raw data set layout into ``ObjectSample`` tracks.

A reader has ``name``, ``items()`` (a deterministic list of small picklable work items, e.g. one per
video or image) and ``read(item, stats)`` (yields the item's object samples, counting every
rejection in ``stats``). The packer chunks ``items()`` into shards.
"""
