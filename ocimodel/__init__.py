"""ocimodel: model directories and HuggingFace repos to OCI images, without a Docker daemon."""

__version__ = "0.1.0"
