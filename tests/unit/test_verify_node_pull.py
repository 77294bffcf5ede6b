"""``verify``'s warning about images a node will pull slowly, judged from layer descriptors alone (no gigabytes needed).

The thresholds come from cold pulls measured on containerd (docs/benchmarks.md, node section): at 4 GiB, gzip layers
pulled in 130.7 s against 68.6 s uncompressed, and one download stream fetched in 50.7 s against 41.6 s for three.
Below the measured size there is nothing to warn about; above it, one layer holding
most of the bytes (containerd fetches 3 layers at a time) or gzip (gunzipped on one core) is worth a warning.
"""

from __future__ import annotations

import pytest

from ocimodel.layout.descriptor import OCI_LAYER, OCI_LAYER_GZIP, OCI_LAYER_ZSTD, Descriptor, Platform
from ocimodel.verification import Check, Entry, Image, Kind, LayerContents, Result, judge
from ocimodel.verification.checks import SLOW_PULL_BYTES

AMD64 = Platform("linux", "amd64")
GIB = 1 << 30
BASE = 2 << 20  # a busybox-sized base layer


def pull_check(*layers: tuple[str, int]) -> Check:
    descriptors = tuple(Descriptor(media_type, f"sha256:{i:064x}", size) for i, (media_type, size) in enumerate(layers))
    models = (Entry("models", "models", Kind.DIR, 0o755), Entry("models/w", "models/w", Kind.FILE, 0o644))
    image = Image("img", "sha256:" + "0" * 64, (("manifest m", 1000),), (), {**AMD64.to_json(), "config": {}},
                  descriptors, tuple(LayerContents("read", models) for _ in descriptors))
    [check] = [c for c in judge(image, AMD64).checks if c.id == "node.pull"]
    return check


def test_the_check_gates_the_modes_a_node_pulls_for() -> None:
    assert pull_check((OCI_LAYER, BASE)).modes == ("modelcar", "native")


@pytest.mark.parametrize("media_type", [OCI_LAYER, OCI_LAYER_GZIP])
def test_below_the_measured_size_one_layer_or_gzip_passes(media_type: str) -> None:
    check = pull_check((OCI_LAYER, BASE), (media_type, SLOW_PULL_BYTES - BASE - 1))
    assert check.result is Result.PASS and check.detail == "4.0 GiB to pull"


def test_per_shard_uncompressed_layers_pass_at_any_size() -> None:
    check = pull_check((OCI_LAYER, BASE), *[(OCI_LAYER, 5 * GIB)] * 30, (OCI_LAYER, 40 << 20))
    assert check.result is Result.PASS
    assert check.detail == "150.0 GiB in 32 layers, largest 5.0 GiB"


def test_one_layer_holding_most_of_the_bytes_warns_with_the_numbers() -> None:
    check = pull_check((OCI_LAYER, BASE), (OCI_LAYER, 9 * GIB), (OCI_LAYER, GIB))
    assert check.result is Result.WARN
    assert check.detail.startswith("slow node pull: one layer holds 9.0 GiB of 10.0 GiB (90%): a node fetches 3 layers")
    assert "own layer" in check.detail and "max_shard_size" in check.detail
    assert check.detail.endswith("(measured at 4 GiB on containerd 1.6: fetched in 50.7 s through one stream, "
                                 "41.6 s through 3)")
    assert "gzip layers" not in check.detail


def test_half_the_bytes_in_one_layer_is_still_spread() -> None:
    assert pull_check((OCI_LAYER, 5 * GIB), (OCI_LAYER, 5 * GIB)).result is Result.PASS
    assert pull_check((OCI_LAYER, 5 * GIB + 1), (OCI_LAYER, 5 * GIB)).result is Result.WARN


def test_gzip_from_the_measured_size_up_warns_even_per_shard() -> None:
    under = pull_check(*[(OCI_LAYER, 2 * GIB)] * 4, *[(OCI_LAYER_GZIP, GIB)] * 3, (OCI_LAYER_GZIP, GIB - 1))
    assert under.result is Result.PASS
    check = pull_check(*[(OCI_LAYER_GZIP, GIB)] * 4)
    assert check.result is Result.WARN
    assert check.detail.startswith("slow node pull: 4.0 GiB of gzip layers: a node gunzips each layer on one core")
    assert "--compression none" in check.detail and "130.7 s" in check.detail
    assert "one layer holds" not in check.detail


def test_one_big_gzip_layer_gives_both_reasons_in_one_warning() -> None:
    check = pull_check((OCI_LAYER, BASE), (OCI_LAYER_GZIP, 20 * GIB))
    assert check.result is Result.WARN
    assert "one layer holds 20.0 GiB of 20.0 GiB (100%)" in check.detail
    assert "; 20.0 GiB of gzip layers" in check.detail


def test_zstd_is_not_the_gzip_warning() -> None:
    assert pull_check(*[(OCI_LAYER_ZSTD, 2 * GIB)] * 4).result is Result.PASS
