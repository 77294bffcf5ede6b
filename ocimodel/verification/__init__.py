"""Will KServe run this image? Checks against its three OCI modes, from manifests, configs and tar headers.

KServe consumes an image as a modelcar sidecar, as an image volume (native) or by extracting its layers (fetch);
each fails on something different, and always late, on a node. These checks find the same problems from the
image's metadata and its tar headers, never its file data. The jobs, one file each:

* ``gather``: from an ``ImageSource`` (a layout or a registry) to one platform's documents, config and layer file
  lists, reading each layer the cheapest way there is;
* ``tarread``: tar headers of untrusted layers, within one ``Budget`` per run (``ReadPolicy``, ``QUICK``);
* ``overlay``: the layers merged as a runtime merges them (whiteouts), and paths looked up in the result;
* ``checks``: the checks themselves, pure functions of what was gathered (``judge``, ``verify``);
* ``report``: their results, per check and per mode, as a table or JSON;
* ``warnings``: the quick, advisory lines ``pack``, ``push`` and ``build`` print afterwards.
"""

from ocimodel.verification.checks import judge, verify
from ocimodel.verification.gather import Image, LayerContents, gather, image_platforms
from ocimodel.verification.report import MODES, Check, Report, Result
from ocimodel.verification.tarread import QUICK, Budget, Entry, Kind, ReadPolicy, TooLarge
from ocimodel.verification.warnings import layout_warnings, registry_warnings

__all__ = [
    "MODES",
    "QUICK",
    "Budget",
    "Check",
    "Entry",
    "Image",
    "Kind",
    "LayerContents",
    "ReadPolicy",
    "Report",
    "Result",
    "TooLarge",
    "gather",
    "image_platforms",
    "judge",
    "layout_warnings",
    "registry_warnings",
    "verify",
]
