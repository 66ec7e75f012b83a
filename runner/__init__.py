"""krea-batch: run thousands of Krea text-to-image jobs from a YAML manifest, resumably."""

__version__ = "0.1.0"
