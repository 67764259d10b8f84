"""Source readers: each turns one raw data set layout into ``ObjectSample`` tracks.

A reader (``datamodules.packing.state.Reader``) has ``name``, ``root``, ``items()`` (a deterministic
list of small picklable work items, e.g. one per video or image; it checks the source as a whole
and raises ``InputError`` for what stops a pack), ``read(item, stats)`` (yields the item's object
samples and reports every rejection to ``stats`` with its identifiers), ``ids(item)`` (the item's
report identifiers), ``inputs(item)`` (the files it is read from, for the resume fingerprint) and
``describe()`` (what an empty source lacks). Fields that say where the data is are ``path_field``s.
The packer chunks ``items()`` into shards.
"""
