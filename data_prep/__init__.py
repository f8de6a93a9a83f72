"""scgrn data_prep: inputs (h5ad / 10x / CSV) -> versioned zarr v3 + webdataset shards -> streaming loader."""

__version__ = "0.1.0"
