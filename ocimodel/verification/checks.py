"""The checks: will KServe run this image in its modelcar, native and fetch modes, judged from what ``gather`` read.

KServe consumes an image in one of three ways (docs/kserve.md): as a *modelcar* sidecar that runs
``sh -c "ln -sf /proc/$$/root/models /mnt/models && sleep infinity"``, as a Kubernetes image volume mounted with
``subPath: models`` (*native*), or by pulling the layers and extracting the tar members named ``models/…``
(*fetch*). Each mode fails on something different, and always late: on a node, minutes into a pull. Each check
here is a pure function of the gathered image.
"""

from __future__ import annotations

import json
import posixpath
from typing import Any, Mapping, Sequence

from ocimodel.image.source import ImageSource
from ocimodel.layout.descriptor import MANIFEST_MAX_BYTES, Descriptor, Platform
from ocimodel.layout.plan import MODEL_DIR
from ocimodel.registry.push import ECR_MAX_LAYER_BYTES
from ocimodel.units import human_size
from ocimodel.verification.gather import Image, LayerContents, gather
from ocimodel.verification.overlay import ROOT, lookup, overlay
from ocimodel.verification.report import MODES, Check, Report, Result
from ocimodel.verification.tarread import Budget, Entry, Kind, ReadPolicy, normalize

#: What KServe's modelcar sidecar and init container run; ``[`` is a builtin of every shell that provides ``sh``.
TOOLS = ("sh", "ln", "sleep", "ls")
#: The PATH a runtime uses when the image's config sets none (containerd's and docker's default).
DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

#: Layer count that deserves a warning: every layer costs a registry request and an overlay mount on each node.
LAYERS_WARN = 100
#: ECR refuses images with "Limit on number of layers per image exceeded" somewhere above this (images of 300 to
#: 500 layers were refused; the limit is undocumented), so more layers than this fail.
LAYERS_MAX = 300
_SHOWN = 5


def judge(image: Image, platform: Platform, modes: Sequence[str] = MODES) -> Report:
    """Run every check that gates one of ``modes``: pure, from what ``gather`` collected."""
    wanted = tuple(m for m in MODES if m in modes)
    checks = [c for c in _checks(image, platform) if set(wanted) & set(c.modes)]
    return Report(image.name, image.digest, platform, wanted, tuple(checks), tuple(zip(image.layers, image.contents)))


def verify(
    source: ImageSource,
    platform: Platform,
    modes: Sequence[str] = MODES,
    policy: ReadPolicy = ReadPolicy(),
    budget: Budget | None = None,
) -> Report:
    """Gather and judge in one call: what ``ocimodel verify`` runs; ``budget`` is shared when several platforms of
    one image are checked, so that they cannot multiply what a run reads."""
    return judge(gather(source, platform, policy, budget), platform, modes)


def _checks(image: Image, platform: Platform) -> list[Check]:
    if image.config is None:
        offered = ", ".join(map(str, image.available)) or "none"
        missing = Check("image.platform", MODES, Result.FAIL,
                        f"no image for {platform} in the index (it has: {offered}); pack for {platform}")
        return [missing, _limit_manifest(image)]
    unknown = [(d, c) for d, c in zip(image.layers, image.contents) if c.how in ("skipped", "too-large")]
    tree = overlay([c.entries for c in image.contents]) if not unknown else None
    skip = _skipped_because(unknown)
    runtime = image.config.get("config") if isinstance(image.config.get("config"), dict) else {}
    return [
        _tools(tree, runtime, skip),
        _models_nonempty(tree, skip),
        _entrypoint(runtime),
        _platform(image.config, image.available, platform),
        _native_models(tree, skip),
        _fetch_names(image, skip),
        _fetch_compression(image.layers),
        _fetch_links(image, skip),
        _limit_layers(image.layers),
        _limit_layer_size(image.layers),
        _limit_manifest(image),
        _limit_zstd(image.layers),
        _node_pull(image.layers),
        _checkable(image),
        _readable(tree, skip),
        _special(tree, skip),
    ]


def _skipped_because(unknown: Sequence[tuple[Descriptor, LayerContents]]) -> str:
    if not unknown:
        return ""
    shown = ", ".join(f"{d.digest[7:19]} ({c.reason})" for d, c in unknown[:_SHOWN])
    return f"not checked: {len(unknown)} layer(s) not read: {shown}"


def _list(items: Sequence[str]) -> str:
    more = f" and {len(items) - _SHOWN} more" if len(items) > _SHOWN else ""
    return ", ".join(items[:_SHOWN]) + more


def _tools(tree: Mapping[str, Entry] | None, runtime: Mapping[str, Any], skip: str) -> Check:
    cid, modes = "modelcar.tools", ("modelcar",)
    if tree is None:
        return Check(cid, modes, Result.SKIP, skip)
    path_var = DEFAULT_PATH
    for item in runtime.get("Env") or []:
        if isinstance(item, str) and item.startswith("PATH="):
            path_var = item[len("PATH="):]
    dirs = [d for d in path_var.split(":") if d.startswith("/")]
    missing, private = [], []
    for tool in TOOLS:
        found = [hit for hit in (lookup(tree, f"{d}/{tool}") for d in dirs) if hit and hit[1].kind is Kind.FILE]
        executable = [hit for hit in found if hit[1].mode & 0o111]
        if not executable:
            missing.append(tool)
        elif not executable[0][1].mode & 0o001:
            private.append(f"/{executable[0][0]} ({executable[0][1].mode:04o})")
    if missing:
        return Check(cid, modes, Result.FAIL,
                     f"{', '.join(missing)} not on PATH {path_var}: the modelcar runs `sh -c 'ln -sf … && sleep "
                     "infinity'` and its init container `ls`; use a busybox base (the default)")
    if private:
        return Check(cid, modes, Result.FAIL,
                     f"not executable by every uid: {', '.join(private)}; a pod that runs as non-root cannot start")
    return Check(cid, modes, Result.PASS, f"{', '.join(TOOLS)} on PATH")


def _models_dir(tree: Mapping[str, Entry]) -> tuple[str, Entry] | None:
    hit = lookup(tree, MODEL_DIR)
    return hit if hit and hit[1].kind is Kind.DIR else None


def _children(tree: Mapping[str, Entry], folder: str) -> list[str]:
    prefix = folder + "/"
    return [p for p in tree if p.startswith(prefix)]


def _models_nonempty(tree: Mapping[str, Entry] | None, skip: str) -> Check:
    cid, modes = "modelcar.models", ("modelcar",)
    if tree is None:
        return Check(cid, modes, Result.SKIP, skip)
    hit = _models_dir(tree)
    if hit is None:
        return Check(cid, modes, Result.FAIL, "no /models directory: KServe's init container waits for it")
    files = [p for p in _children(tree, hit[0]) if tree[p].kind is not Kind.DIR]
    if not files:
        return Check(cid, modes, Result.FAIL, "/models holds no files: KServe's init container waits for some")
    return Check(cid, modes, Result.PASS, f"/models holds {len(files)} file(s)")


def _entrypoint(runtime: Mapping[str, Any]) -> Check:
    entrypoint = runtime.get("Entrypoint")
    if entrypoint:
        return Check("modelcar.entrypoint", ("modelcar",), Result.FAIL,
                     f"Entrypoint {json.dumps(entrypoint)} is set: KServe gives the modelcar its command as args, "
                     "which the Entrypoint would receive instead; rebuild without it (ocimodel drops the base's)")
    return Check("modelcar.entrypoint", ("modelcar",), Result.PASS, "no Entrypoint")


def _platform(config: Mapping[str, Any], available: Sequence[Platform], platform: Platform) -> Check:
    cid, modes = "modelcar.platform", ("modelcar",)
    try:
        actual = Platform.from_json(config)
    except (KeyError, TypeError):
        return Check(cid, modes, Result.FAIL, "the config names no os and architecture")
    if not platform.matches(actual):
        return Check(cid, modes, Result.FAIL, f"image is for {actual}, not {platform}: pack with --platform {platform}")
    offered = f" (index has {', '.join(map(str, available))})" if available else ""
    return Check(cid, modes, Result.PASS, f"{actual}{offered}")


def _native_models(tree: Mapping[str, Entry] | None, skip: str) -> Check:
    cid, modes = "native.models", ("native",)
    if tree is None:
        return Check(cid, modes, Result.SKIP, skip)
    hit = _models_dir(tree)
    if hit is None:
        return Check(cid, modes, Result.FAIL, "no /models directory for the image volume's subPath: models")
    if not _children(tree, hit[0]):
        return Check(cid, modes, Result.WARN, "/models is an empty directory")
    return Check(cid, modes, Result.PASS, "/models is a directory")


def _raw_model_entries(image: Image) -> list[Entry]:
    """Members a fetch would consider, layer by layer, before any merging (fetch extracts raw tar members)."""
    return [e for c in image.contents for e in c.entries if _under(e.path, MODEL_DIR) or e.raw.startswith("models/")]


def _fetch_names(image: Image, skip: str) -> Check:
    cid, modes = "fetch.names", ("fetch",)
    entries = _raw_model_entries(image)
    bad = [e.raw for e in entries if not (e.raw == MODEL_DIR or e.raw.startswith(MODEL_DIR + "/"))]
    escaping = [e.raw for e in entries if e.raw.startswith(MODEL_DIR + "/") and not _under(e.path, MODEL_DIR)]
    if bad:
        return Check(cid, modes, Result.FAIL,
                     f"members under /models not named models/…: {_list(bad)}; fetch mode extracts only names "
                     "starting with models/ (no ./ or / prefix)")
    if escaping:
        return Check(cid, modes, Result.FAIL, f"members named models/… that leave models/: {_list(escaping)}")
    if skip:
        return Check(cid, modes, Result.SKIP, skip)
    if not any(e.kind not in (Kind.DIR, Kind.WHITEOUT, Kind.OPAQUE) for e in entries):
        return Check(cid, modes, Result.FAIL, "no tar member named models/…: fetch mode would extract nothing")
    return Check(cid, modes, Result.PASS, "model members are named models/…")


def _is_zstd(layer: Descriptor) -> bool:
    return "zstd" in layer.media_type


def _fetch_compression(layers: Sequence[Descriptor]) -> Check:
    zstd = [layer for layer in layers if _is_zstd(layer)]
    if zstd:
        return Check("fetch.compression", ("fetch",), Result.FAIL,
                     f"{len(zstd)} zstd layer(s): fetch mode takes tar and tar+gzip only; use --compression none "
                     "or gzip")
    return Check("fetch.compression", ("fetch",), Result.PASS, "no zstd layers")


def _fetch_links(image: Image, skip: str) -> Check:
    cid, modes = "fetch.links", ("fetch",)
    bad = []
    for e in _raw_model_entries(image):
        if e.kind is Kind.SYMLINK:
            target = e.link if e.link.startswith("/") else posixpath.join(posixpath.dirname(e.path), e.link)
            if e.link.startswith("/") or not _under(posixpath.normpath(target), MODEL_DIR):
                bad.append(f"{e.raw} -> {e.link}")
        elif e.kind is Kind.HARDLINK and (e.link.startswith("/") or not _under(normalize(e.link), MODEL_DIR)):
            bad.append(f"{e.raw} => {e.link}")
    if bad:
        return Check(cid, modes, Result.FAIL,
                     f"links that are absolute or leave models/: {_list(bad)}; extracted elsewhere they point at "
                     "nothing, or at the node's files")
    if skip:
        return Check(cid, modes, Result.SKIP, skip)
    return Check(cid, modes, Result.PASS, "no absolute or escaping links under models/")


def _limit_layers(layers: Sequence[Descriptor]) -> Check:
    cid, n = "limits.layers", len(layers)
    if n > LAYERS_MAX:
        return Check(cid, MODES, Result.FAIL,
                     f"{n} layers: ECR refuses images above about {LAYERS_MAX} layers (undocumented limit)")
    if n > LAYERS_WARN:
        return Check(cid, MODES, Result.WARN,
                     f"{n} layers: above {LAYERS_WARN}, every pull pays a request and a mount per layer")
    return Check(cid, MODES, Result.PASS, f"{n} layers")


def _limit_layer_size(layers: Sequence[Descriptor]) -> Check:
    cid = "limits.layer-size"
    if not layers:
        return Check(cid, MODES, Result.PASS, "no layers")
    biggest = max(layers, key=lambda d: d.size)
    if biggest.size > ECR_MAX_LAYER_BYTES:
        return Check(cid, MODES, Result.FAIL,
                     f"layer {biggest.digest[7:19]} is {human_size(biggest.size)}: ECR takes at most 52,000 MiB")
    return Check(cid, MODES, Result.PASS, f"largest layer {human_size(biggest.size)}")


def _limit_manifest(image: Image) -> Check:
    cid = "limits.manifest-size"
    big = [f"{what} ({human_size(size)})" for what, size in image.documents if size > MANIFEST_MAX_BYTES]
    if big:
        return Check(cid, MODES, Result.FAIL, f"{', '.join(big)}: ECR takes manifests up to 4 MiB")
    return Check(cid, MODES, Result.PASS, f"largest manifest {human_size(max(s for _, s in image.documents))}")


def _limit_zstd(layers: Sequence[Descriptor]) -> Check:
    zstd = [layer for layer in layers if _is_zstd(layer)]
    if zstd:
        return Check("limits.zstd", ("modelcar", "native"), Result.WARN,
                     f"{len(zstd)} zstd layer(s): older Docker, the ECS agent and Bottlerocket can't pull them")
    return Check("limits.zstd", ("modelcar", "native"), Result.PASS, "no zstd layers")


#: What cold pulls of a 4 GiB model measured on a node (docs/benchmarks.md, node section: Debian's containerd 1.6,
#: ``ctr -n k8s.io images pull`` from a loopback registry, 3 layers fetched at once as containerd's CRI plugin does).
#: Below that size nothing measured says a layout choice costs the node anything.
SLOW_PULL_BYTES = 4 << 30
#: The fetch through one stream (``--max-concurrent-downloads 1``) against three: what a layer holding most of the
#: bytes leaves a node with, whatever its download slots.
_ONE_STREAM_MEASURED = "measured at 4 GiB on containerd 1.6: fetched in 50.7 s through one stream, 41.6 s through 3"
_GZIP_MEASURED = "measured at 4 GiB on containerd 1.6: gzip layers pulled in 130.7 s, uncompressed in 68.6 s"
NODE_DOWNLOADS = 3
ONE_LAYER_SHARE = 0.5


def _node_pull(layers: Sequence[Descriptor]) -> Check:
    cid, modes = "node.pull", ("modelcar", "native")
    total = sum(d.size for d in layers)
    if not layers or total < SLOW_PULL_BYTES:
        return Check(cid, modes, Result.PASS, f"{human_size(total)} to pull")
    slow = []
    biggest = max(layers, key=lambda d: d.size)
    if biggest.size > ONE_LAYER_SHARE * total:
        slow.append(f"one layer holds {human_size(biggest.size)} of {human_size(total)} ({biggest.size / total:.0%}): "
                    f"a node fetches {NODE_DOWNLOADS} layers at once, this one in a single stream; give each weight "
                    "file its own layer (ocimodel's default) and re-shard a single huge file "
                    f"(save_pretrained(max_shard_size=...)) ({_ONE_STREAM_MEASURED})")
    gzipped = sum(d.size for d in layers if "gzip" in d.media_type)
    if gzipped >= SLOW_PULL_BYTES:
        slow.append(f"{human_size(gzipped)} of gzip layers: a node gunzips each layer on one core; weights barely "
                    f"compress, use --compression none ({_GZIP_MEASURED})")
    if not slow:
        return Check(cid, modes, Result.PASS,
                     f"{human_size(total)} in {len(layers)} layers, largest {human_size(biggest.size)}")
    return Check(cid, modes, Result.WARN, f"slow node pull: {'; '.join(slow)}")


def _checkable(image: Image) -> Check:
    cid = "image.checkable"
    cut = [f"{d.digest[7:19]} {c.reason}" for d, c in zip(image.layers, image.contents) if c.how == "too-large"]
    if cut:
        return Check(cid, MODES, Result.WARN,
                     f"too large to check: layer {_list(cut)}; the checks that need its files were skipped")
    return Check(cid, MODES, Result.PASS, "every layer read was within the limits of a check")


def _models_folder(cid: str, tree: Mapping[str, Entry] | None, skip: str) -> str | Check:
    """Where ``/models`` resolves to, for the checks of its files; their SKIP when there is nothing to look at."""
    if tree is None:
        return Check(cid, MODES, Result.SKIP, skip)
    hit = _models_dir(tree)
    return hit[0] if hit is not None else Check(cid, MODES, Result.SKIP, "no /models")


def _readable(tree: Mapping[str, Entry] | None, skip: str) -> Check:
    cid = "files.readable"
    folder = _models_folder(cid, tree, skip)
    if isinstance(folder, Check):
        return folder
    assert tree is not None
    dirs = [p for p in ("", *_ancestors(folder), folder) if p in tree or p == ""]
    paths = [*dirs, *sorted(_children(tree, folder))]
    bad = []
    for p in paths:
        e = tree.get(p, ROOT)
        if (e.kind is Kind.DIR and e.mode & 0o005 != 0o005) or (e.kind is Kind.FILE and not e.mode & 0o004):
            bad.append(f"/{p} ({e.mode:04o})")
    if bad:
        return Check(cid, MODES, Result.FAIL,
                     f"not readable by every uid: {_list(bad)}; files need o+r, directories o+rx")
    return Check(cid, MODES, Result.PASS, "files under /models readable by any uid")


def _special(tree: Mapping[str, Entry] | None, skip: str) -> Check:
    cid = "files.special"
    folder = _models_folder(cid, tree, skip)
    if isinstance(folder, Check):
        return folder
    assert tree is not None
    bad = []
    for p in sorted(_children(tree, folder)):
        e = tree[p]
        if e.kind in (Kind.DEVICE, Kind.FIFO, Kind.OTHER):
            bad.append(f"/{p} ({e.kind.value})")
        elif e.kind is Kind.FILE and e.mode & 0o6000:
            bad.append(f"/{p} ({'setuid' if e.mode & 0o4000 else 'setgid'} {e.mode:04o})")
    if bad:
        return Check(cid, MODES, Result.FAIL,
                     f"not plain model files: {_list(bad)}; a FIFO hangs the server that opens it, a device node "
                     "fails the unpack of an unprivileged runtime, a setuid file hands its owner's rights to the pod")
    return Check(cid, MODES, Result.PASS, "only files, directories and links under /models")


def _under(path: str, folder: str) -> bool:
    return path == folder or path.startswith(folder + "/")


def _ancestors(path: str) -> list[str]:
    parts = path.split("/")
    return ["/".join(parts[:i]) for i in range(1, len(parts))]

