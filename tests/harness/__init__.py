"""Scaffolding the tests share, so that no test module imports another's helpers.

Stand-ins: ``registry_stub`` (an in-process registry, with its request log read by ``stub_log``), ``hub`` (a local
HF Hub look-alike), ``aws`` (moto as the account, with what moto lacks). Real parts: ``registry`` (Debian's
docker-registry), ``containerd``, ``busybox`` (a base image from busybox-static). Drivers and judges: ``cli``
(running the CLI, judging its errors), ``build`` (building into the stub, judged against ``pack``), ``oci`` (reading
layouts and layers without ocimodel), ``progress`` (a recording reporter), ``models`` (small model directories).
"""
