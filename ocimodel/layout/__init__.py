"""OCI image layouts: descriptors, tar layers, configs and manifests, and the on-disk store."""
