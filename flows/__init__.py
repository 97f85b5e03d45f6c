"""Thin Prefect flows, the CLI and (later) the watcher: wiring of ``wbcproc`` and ``training``."""
