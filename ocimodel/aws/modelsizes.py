"""What the Hub says of a configured model before anything is downloaded: its size, for ``sizing`` to choose a
machine and a timeout, and the commit a build will take, once its layers are known to fit ECR.

Only the Hub's file listing is fetched; ``aws bootstrap`` and ``aws build`` import this module when they need it,
so the other ``aws`` commands do not load huggingface_hub.
"""

from __future__ import annotations

from huggingface_hub import constants

from ocimodel.aws.config import ModelSpec
from ocimodel.errors import OcimodelError
from ocimodel.layout.plan import plan_layers
from ocimodel.layout.tarlayer import tar_size
from ocimodel.registry.push import ECR_MAX_LAYER_BYTES
from ocimodel.source import Filters
from ocimodel.source.hub import HubSource
from ocimodel.units import human_size


def hub_size(model: ModelSpec) -> int:
    """Bytes of the model's files at its revision that its include/exclude let through, from the Hub's file list.

    Only metadata is fetched. A gated model's file list is public, so no token is needed for it.
    """
    listing = _open(model).listing or ()  # online, the source always lists the repo's files
    sizes = [f.size for f in listing if _filters(model).allows(f.path)]
    if not sizes:
        raise OcimodelError(
            f"model {model.id}: no file at {model.revision} matches its include/exclude (it has "
            f"{len(listing)}): check the globs"
        )
    return sum(sizes)


def hub_commit(model: ModelSpec) -> str:
    """The commit the model's revision names now, once the layers ``ocimodel build`` will make of it are known to
    fit ECR (from the Hub's listing: nothing is downloaded).

    A layer over ECR's 52,000 MiB is refused here, naming its file: ECR would refuse it only after the build had
    downloaded and sent everything before it.
    """
    source = _open(model)
    layers = plan_layers(source.planned(_filters(model)))
    for layer in layers:
        size = tar_size(layer.members())
        if size > ECR_MAX_LAYER_BYTES:
            largest = max(layer.files, key=lambda f: f.size)
            raise OcimodelError(
                f"model {model.id}: {largest.path} makes a layer of {human_size(size)}, over ECR's maximum of "
                f"{human_size(ECR_MAX_LAYER_BYTES)}: ECR would refuse it; leave it out with exclude"
            )
    return source.commit


def _filters(model: ModelSpec) -> Filters:
    return Filters(model.include, model.exclude)


def _open(model: ModelSpec) -> HubSource:
    if constants.is_offline_mode():
        raise OcimodelError(
            f"model {model.id}: HF_HUB_OFFLINE is set, so the Hub cannot say what files it has; unset it (for "
            "bootstrap, setting compute_type and timeout_minutes for this model also does)"
        )
    return HubSource.open(model.id, revision=model.revision)
