"""Named datasets: the `dataset` params section and `fgclip dataset`, which prepares the
named source (the demo world, image shards read in place, a URL list through ingest, or
FineHARD through its importer) and pins it in the manifest every later stage reads."""
