"""The ``ocimodel aws`` commands: parse, call, print.

Importing this module costs typer alone: boto3, huggingface_hub and the rest load only when an ``aws`` command runs,
so the other commands start as fast as before. Tables and results go to stdout, progress and build logs to stderr.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Optional

import typer

if TYPE_CHECKING:
    from ocimodel.aws.config import Config
    from ocimodel.aws.plan import ModelBuild, Names
    from ocimodel.aws.session import Clients

aws_app = typer.Typer(
    help="Build models in AWS CodeBuild straight into ECR, as listed in a models.toml.",
    no_args_is_help=True,
)

ConfigOpt = Annotated[
    Path, typer.Option("--config", "-c", help="The models.toml listing the models and the AWS settings.")
]
DEFAULT_CONFIG = Path("models.toml")


def _note(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def _names(config: Config) -> tuple[Clients, Names]:
    from ocimodel.aws.plan import Names
    from ocimodel.aws.session import connect, whoami

    clients = connect(config.aws.region)
    return clients, Names(config.aws, whoami(clients))


def _sized(config: Config) -> tuple[ModelBuild, ...]:
    """Each model's machine and timeout, from its size on the Hub when the config does not fix both."""
    from ocimodel.aws.plan import model_build, needs_size
    from ocimodel.aws.modelsizes import hub_size

    builds = []
    for model in config.models:
        if needs_size(model):
            _note(f"sizing {model.id}@{model.revision} on the Hub")
        builds.append(model_build(model, hub_size(model) if needs_size(model) else None))
    return tuple(builds)


@aws_app.command()
def bootstrap(
    config: ConfigOpt = DEFAULT_CONFIG,
    dry_run: Annotated[
        bool,
        typer.Option("--dry-run", help="Print the plan (resources, settings, policies, buildspecs); change nothing."),
    ] = False,
    wheel: Annotated[
        Optional[Path],
        typer.Option(help="The ocimodel wheel builds install (default: this installed ocimodel, made into a wheel)."),
    ] = None,
) -> None:
    """Create or update ECR repositories, IAM role, S3 bucket, log groups and CodeBuild projects; idempotent."""
    from ocimodel.aws import bootstrap as run
    from ocimodel.aws.config import load_config
    from ocimodel.aws.plan import Plan
    from ocimodel.aws.steps import apply, render, summary
    from ocimodel.aws.wheel import local_bundle

    settings = load_config(config)
    builds = _sized(settings)
    # In memory, from the installed files: a dry run makes it too, as its buildspecs and upload decision need it.
    bundle = local_bundle(wheel)
    clients, names = _names(settings)
    plan = Plan(settings, names, builds, bundle)
    run.check(plan, clients)
    todo = run.steps(clients, plan)
    if dry_run:
        print(render(todo, done=False))
        for title, text in run.documents(plan, clients.kms):
            print(f"\n# {title}\n{text.rstrip()}")
        print()
        print(summary(todo, done=False, verb="dry run") + " (nothing was changed)")
        return
    apply(todo)
    print(render(todo, done=True))
    print(summary(todo, done=True, verb="bootstrap"))


@aws_app.command("set-hf-token")
def set_hf_token(config: ConfigOpt = DEFAULT_CONFIG) -> None:
    """Store the HuggingFace token, read from stdin and never echoed, in Secrets Manager for the builds."""
    import getpass

    from ocimodel.aws import hftoken
    from ocimodel.aws.config import load_config
    from ocimodel.aws.session import connect
    from ocimodel.errors import OcimodelError

    settings = load_config(config)
    if not settings.aws.hf_token:
        raise OcimodelError(f"{config} sets hf_token = false, so builds use no token: set it to true first")
    token = (getpass.getpass("HF token: ") if sys.stdin.isatty() else sys.stdin.readline()).strip()
    if not token:
        raise OcimodelError("no token on stdin: pipe it in, e.g. printenv HF_TOKEN | ocimodel aws set-hf-token")
    clients = connect(settings.aws.region)
    outcome = hftoken.store(clients.secrets, settings.aws.hf_token_secret, token)
    print(f"{outcome} secret {settings.aws.hf_token_secret} in {clients.region}")


@aws_app.command("build")
def build(
    model: Annotated[str, typer.Argument(help="The model: its Hub id, its name, or its repository.")],
    config: ConfigOpt = DEFAULT_CONFIG,
    no_follow: Annotated[bool, typer.Option("--no-follow", help="Print the build id and return at once.")] = False,
    poll_interval: Annotated[float, typer.Option(min=0, help="Seconds between two looks at the build.")] = 5.0,
) -> None:
    """Start a model's CodeBuild build and follow its log; prints the pushed oci://…@sha256:… on success."""
    import time

    from ocimodel.aws import builds
    from ocimodel.aws.config import load_config
    from ocimodel.aws.modelsizes import hub_commit
    from ocimodel.aws.plan import options_fingerprint
    from ocimodel.aws.resources import secret_exists
    from ocimodel.aws.session import aws_call
    from ocimodel.errors import OcimodelError

    settings = load_config(config)
    spec = settings.find(model)
    clients, names = _names(settings)
    if settings.aws.hf_token:
        with aws_call(f"read secret {names.secret}"):
            if not secret_exists(clients.secrets, names.secret):
                raise OcimodelError(f"secret {names.secret} holds no HF token yet: run ocimodel aws set-hf-token first")
    if settings.aws.signing:
        from ocimodel.aws.signingkey import check_usable

        check_usable(clients.kms, settings.aws.signing, clients.region)
    # Before anything starts: a layer ECR would refuse, and an immutable tag that already holds an image.
    _note(f"listing {spec.id}@{spec.revision} on the Hub")
    commit = hub_commit(spec)
    existing = builds.tagged_image(clients, spec)
    if existing is not None:
        uri = f"oci://{names.account.registry}/{spec.repository}@{existing.digest}"
        if existing.revision == commit and existing.options == options_fingerprint(settings.aws, spec):
            _note(f"{names.image(spec)} is immutable and holds this build already (commit {commit[:12]}): done")
            print(uri)
            return
        built = f"commit {existing.revision[:12]}" if existing.revision else "an unknown source"
        raise OcimodelError(
            f"ECR repository {spec.repository} keeps tag {spec.tag} immutable, and it already holds {existing.digest} "
            f"(built from {built}, not {spec.id}@{commit[:12]} with this config's options): ECR would refuse the push; "
            "give the model another tag in the config and run ocimodel aws bootstrap"
        )
    build_id = builds.start(clients, names, spec)
    if no_follow:
        print(build_id)
        return
    _note(f"started {build_id}; following its log (Ctrl-C stops following, not the build)")
    finished = builds.follow(
        clients, build_id, names.log_group(spec), echo=_note, sleep=time.sleep, interval=poll_interval
    )
    if finished.status != builds.SUCCEEDED:
        reason = f" ({finished.reason})" if finished.reason else ""
        raise OcimodelError(f"build {build_id} ended {finished.status}{reason}; its log is above")
    uri = finished.uri or builds.image_uri(clients, names, spec)
    if uri is None:
        raise OcimodelError(f"build {build_id} succeeded, but ECR has no {names.image(spec)}")
    print(uri)


@aws_app.command("public-key")
def public_key(config: ConfigOpt = DEFAULT_CONFIG) -> None:
    """Print the PEM public key of the [signing] KMS key: what the cluster verifies the images' model.sig with."""
    from ocimodel.aws.config import load_config
    from ocimodel.aws.session import connect
    from ocimodel.errors import OcimodelError
    from ocimodel.signing.kms import KmsSigner

    settings = load_config(config)
    if settings.aws.signing is None:
        raise OcimodelError(f"{config} has no [signing] table: builds do not sign, so there is no public key to give")
    clients = connect(settings.aws.region)
    sys.stdout.write(KmsSigner.from_client(clients.kms, settings.aws.signing.kms_key).public().pem.decode())


@aws_app.command()
def status(config: ConfigOpt = DEFAULT_CONFIG) -> None:
    """List each model's last build and the digest of its image in ECR."""
    from ocimodel.aws import builds
    from ocimodel.aws.config import load_config
    from ocimodel.aws.steps import table

    settings = load_config(config)
    clients, names = _names(settings)
    rows = [
        (
            s.model.id,
            s.project,
            s.build_id or "-",
            s.build_status or "never built",
            s.started.isoformat(timespec="seconds") if s.started else "-",
            s.uri or "-",
        )
        for s in builds.status(clients, names, settings.models)
    ]
    print(table(("MODEL", "PROJECT", "LAST BUILD", "STATUS", "STARTED", "IMAGE"), rows))


@aws_app.command()
def teardown(
    config: ConfigOpt = DEFAULT_CONFIG,
    yes: Annotated[bool, typer.Option("--yes", help="Really delete.")] = False,
    delete_images: Annotated[
        bool, typer.Option("--delete-images", help="Also delete the ECR repositories, with their images.")
    ] = False,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Print what would be deleted; delete nothing.")] = False,
    delete_snapshots: Annotated[
        bool, typer.Option("--delete-snapshots", help="Also delete the EBS snapshots aws snapshot made.")
    ] = False,
) -> None:
    """Remove what bootstrap made for this config; the ECR repositories only with --delete-images."""
    from ocimodel.aws import teardown as run
    from ocimodel.aws.config import load_config
    from ocimodel.aws.steps import apply, render, summary
    from ocimodel.errors import OcimodelError

    settings = load_config(config)
    if not (yes or dry_run):
        raise OcimodelError(
            "teardown deletes this config's CodeBuild projects, log groups, IAM role, S3 bucket and HF token secret: "
            "pass --yes (and --delete-images to delete the ECR repositories and their images too)"
        )
    clients, names = _names(settings)
    todo = run.steps(clients, settings, names, delete_images, delete_snapshots)
    if not dry_run:
        apply(todo)
    print(render(todo, done=not dry_run))
    print(summary(todo, done=not dry_run, verb="dry run" if dry_run else "teardown"))


@aws_app.command()
def snapshot(
    models: Annotated[
        Optional[list[str]], typer.Argument(help="Models to cache (id, name or repository); all by default.")
    ] = None,
    config: ConfigOpt = DEFAULT_CONFIG,
    tag: Annotated[Optional[str], typer.Option(help="The images' tag, instead of each model's in the config.")] = None,
    ami_family: Annotated[
        str, typer.Option(help="bottlerocket or al2023-nvidia: the nodes' AMI family.")
    ] = "bottlerocket",
    kubernetes_version: Annotated[str, typer.Option(help="Picks the AMI from its SSM public parameter.")] = "1.32",
    ami: Annotated[Optional[str], typer.Option(help="An AMI id instead of the SSM public parameter's.")] = None,
    arch: Annotated[str, typer.Option(help="amd64 or arm64: the nodes' architecture.")] = "amd64",
    instance_type: Annotated[
        Optional[str], typer.Option(help="The temporary instance (default m6i.large / m7g.large).")
    ] = None,
    subnet: Annotated[Optional[str], typer.Option(help="Its subnet (default: a default-VPC subnet).")] = None,
    encrypt: Annotated[bool, typer.Option("--encrypt", help="Encrypt the volume, hence the snapshot.")] = False,
    kms_key: Annotated[Optional[str], typer.Option(help="With this KMS key (implies --encrypt).")] = None,
    volume_size: Annotated[Optional[int], typer.Option(min=1, help="GiB (default: from the images' sizes).")] = None,
    extra_image: Annotated[
        Optional[list[str]], typer.Option(help="Another image to cache (e.g. the serving runtime).")
    ] = None,
    force: Annotated[bool, typer.Option("--force", help="Build even if a snapshot of these images exists.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print id, size, digests, region as JSON.")] = False,
    nodeclass: Annotated[
        bool, typer.Option("--nodeclass", help="Print a Karpenter EC2NodeClass blockDeviceMappings block.")
    ] = False,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Print the plan; change nothing.")] = False,
) -> None:
    """Bake the models' images into an EBS snapshot of a node's data volume; prints the snapshot id last."""
    import json

    from ocimodel.aws import snapshot as run
    from ocimodel.aws import snapshot_plan as sp
    from ocimodel.aws.config import load_config
    from ocimodel.aws.session import Clock
    from ocimodel.errors import OcimodelError

    if ami_family not in sp.AMI_FAMILIES:
        raise OcimodelError(f"--ami-family {ami_family}: expected one of {', '.join(sp.AMI_FAMILIES)}")
    if arch not in sp.ARCHES:
        raise OcimodelError(f"--arch {arch}: expected one of {', '.join(sp.ARCHES)}")
    settings = load_config(config)
    chosen = [settings.find(m) for m in models] if models else list(settings.models)
    options = run.Options(
        family=ami_family,
        kubernetes_version=kubernetes_version,
        ami=ami,
        arch=arch,
        instance_type=instance_type,
        subnet=subnet,
        encrypt=encrypt,
        kms_key=kms_key,
        volume_size=volume_size,
        extra_images=tuple(extra_image or ()),
        tag=tag,
        force=force,
    )
    clients, names = _names(settings)
    plan = run.make_plan(clients, names, settings, chosen, options)
    existing = None if options.force else run.find_snapshot(clients.ec2, plan.key)
    profile_ok = run.profile_exists(clients.iam, plan.profile)
    if dry_run:
        print(run.render_plan(plan, existing, profile_ok))
        print("dry run: nothing was changed")
        return
    if existing is not None:
        _note(f"{existing.id} holds these images already ({plan.family}, {plan.arch}): nothing to build")
        made = existing
    else:
        if not profile_ok:
            raise OcimodelError(
                f"IAM instance profile {plan.profile} does not exist: run ocimodel aws bootstrap with this config first"
            )
        builder = run.Builder(clients, run.SsmRunner(clients.ssm, Clock()), Clock(), _note)
        made = builder.build(plan)
    if as_json:
        print(
            json.dumps(
                {
                    "snapshot_id": made.id,
                    "size_gib": made.size_gib,
                    "region": clients.region,
                    "ami_family": plan.family,
                    "arch": plan.arch,
                    "reused": made.reused,
                    "images": {image.ref.split("@")[0]: image.digest for image in plan.images},
                }
            )
        )
        return
    if nodeclass:
        print(sp.nodeclass_block(plan.family, made.id, made.size_gib, made.encrypted, made.kms_key))
    print(made.id)
