"""A model's signature as part of its image.

The OMS statement lists every file packed under /models with its sha256 (known from the Hub, taken as the layers
went by, or remembered: ``ModelLayer.file_sha256``), signed into ``model.sig``. The image carries it as
/models/model.sig in a small top layer of its own, so the weight layers keep their digests and stay shared with an
unsigned image of the same files, and a verifier that unpacks the image finds the folder as ``model_signing``
signs it. The same bytes are attached to the image as an OCI 1.1 referrer, for tools that look there.
"""

from __future__ import annotations

import hashlib
import io
from collections.abc import Mapping
from dataclasses import dataclass

from ocimodel.errors import InvalidArgument
from ocimodel.layout.image import Layer
from ocimodel.layout.modellayer import describe_layer
from ocimodel.layout.plan import MODEL_DIR
from ocimodel.layout.tarlayer import encode_layer, small_tar
from ocimodel.signing.bundle import sign_statement
from ocimodel.signing.keys import Signer
from ocimodel.signing.statement import SIGNATURE_NAME, ModelFile, build_statement


@dataclass(frozen=True)
class SignatureLayer:
    """``model.sig`` (the bundle) and the layer that puts it at /models/model.sig (``blob``, described by ``layer``)."""

    bundle: bytes
    layer: Layer
    blob: bytes


def sign_model(files: Mapping[str, str], signer: Signer, compression: str = "none") -> SignatureLayer:
    """Sign ``files`` (path in the model → sha256) as ``model_signing sign`` signs the image's /models folder
    holding them: the same statement, down to its subject's name, ``models``."""
    if SIGNATURE_NAME in files:
        raise InvalidArgument(
            "sign_key", f"the model already holds a {SIGNATURE_NAME}, which signing would replace: exclude it to "
            "sign the model again, or do not sign to keep it"
        )
    statement = build_statement(MODEL_DIR, [ModelFile(path, sha) for path, sha in files.items()])
    bundle = sign_statement(statement, signer)
    tar = small_tar(MODEL_DIR, {SIGNATURE_NAME: bundle})
    blob = io.BytesIO()
    digests = encode_layer([tar], compression, blob)
    sha256 = hashlib.sha256(bundle).hexdigest()
    layer = describe_layer(digests, SIGNATURE_NAME, [(SIGNATURE_NAME, len(bundle), sha256)])
    return SignatureLayer(bundle, layer, blob.getvalue())
