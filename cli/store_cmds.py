"""`ota store serve`: a local S3 store (SeaweedFS) for trying the pipeline on one machine."""
from __future__ import annotations

from pathlib import Path

import click

from cli.defaults import LibraryDefault, field_default, given
from cli.params import OUTPUT_FILE, OUTPUT_FOLDER


def _serve_default(name: str):  # type: ignore[no-untyped-def]
    return field_default("demo.local_store:serve_local_store", name)


@click.group()
def store() -> None:
    """A local S3-compatible store to publish to and update from."""


@store.command()
@click.option("--dir", "data_dir", default="work/seaweedfs", show_default=True, type=OUTPUT_FOLDER,
              help="Folder for the store's data, credentials and log (kept between runs).")
@click.option("--port", type=click.IntRange(0, 65535), cls=LibraryDefault, default_of=_serve_default("port"),
              help="S3 port on 127.0.0.1 (0: any free port).")
@click.option("--bucket", cls=LibraryDefault, default_of=_serve_default("bucket"), help="Bucket to create (if absent).")
@click.option("--prefix", cls=LibraryDefault, default_of=_serve_default("prefix"),
              help="Key prefix inside the bucket for OTA_STORE.")
@click.option("--env-file", type=OUTPUT_FILE,
              help="Also write the export lines here once the store accepts writes (removed on stop).")
def serve(data_dir: Path, port: int | None, bucket: str | None, prefix: str | None, env_file: Path | None) -> None:
    """Run SeaweedFS with an S3 gateway on loopback until Ctrl-C or SIGTERM.

    Prints the OTA_STORE URL and the AWS_* credentials to export; the
    credentials are kept in DIR, so a restart serves the same store with the
    same keys.

    \b
    Example:
      ota store serve --env-file work/store.env &
      source work/store.env
    """
    from demo.local_store import serve_local_store

    def ready(exports: dict[str, str]) -> None:
        lines = "".join(f"export {k}='{v}'\n" for k, v in exports.items())
        click.echo(f"store ready (data in {data_dir}); stop it with Ctrl-C or SIGTERM. Export:", err=True)
        click.echo(lines, nl=False)
        if env_file is not None:
            from device_agent.atomic import write_atomic

            write_atomic(env_file, lines.encode())

    try:
        serve_local_store(data_dir, ready=ready, **given(port=port, bucket=bucket, prefix=prefix))
    finally:
        if env_file is not None:
            env_file.unlink(missing_ok=True)
    click.echo("store stopped", err=True)
