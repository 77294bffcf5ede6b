"""OpenSSF Model Signing (OMS) signatures for the files an image carries under /models.

The pieces are separate so that pack can feed digests it already has (Hub LFS sha256, digest cache, layer
hashing) without reading a file again: ``statement`` builds the in-toto statement from (path, sha256) pairs,
``bundle`` signs it into the ``model.sig`` JSON that ``model_signing verify key`` accepts, and ``verify`` checks
such a file against the files found. See docs/signing.md for the format facts these modules follow.
"""
