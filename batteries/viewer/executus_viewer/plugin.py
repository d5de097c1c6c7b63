"""The plugin executus loads through the ``executus`` entry point ``viewer``: the ``executus viewer`` command.

The viewer fills no port: installing it changes nothing in any run. It is served only where a host
mounts it, or by this command, which listens on loopback unless told otherwise.
"""

from __future__ import annotations

from typing import Any

from executus_core import hookimpl

__all__ = ["executus_register_commands"]


@hookimpl
def executus_register_commands(cli: Any) -> None:
    """Add ``executus viewer``: serve the viewer alone over the audit database (needs uvicorn)."""
    import typer

    def viewer(
        host: str = typer.Option("127.0.0.1", help="Address to listen on (loopback: only this machine)."),
        port: int = typer.Option(8700, help="Port to listen on."),
    ) -> None:
        """Serve the runs viewer over the audit database ([tool.executus.audit_sql]); Ctrl-C stops it."""
        try:
            import uvicorn
        except ImportError:
            typer.echo(
                "executus viewer needs uvicorn: pip install 'executus-viewer[serve]' (or mount "
                "executus_viewer.make_viewer() in your own app)",
                err=True,
            )
            raise typer.Exit(1) from None
        from executus_viewer.app import make_viewer

        app = make_viewer()
        typer.echo(
            f"executus viewer: http://{host}:{port}/ over {app.state.viewer_audit.describe_database()}"
        )
        uvicorn.run(app, host=host, port=port, log_level="warning")

    cli.command("viewer")(viewer)
