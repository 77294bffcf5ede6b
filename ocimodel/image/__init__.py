"""An image as something to read: a source (a layout or a registry) and the one walk over its indexes and manifests."""
