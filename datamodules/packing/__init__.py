"""Offline packing: source readers, object filters and the parallel, resumable shard writer (`anydoor shards`)."""
