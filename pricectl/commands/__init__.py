"""Thin click glue: one module per command, registered as a `pricectl.commands` entry point."""
