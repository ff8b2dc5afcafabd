"""Downstream tasks: specs, built-ins, hub loaders, custom tasks, input transformations, metrics, zero-shot scoring."""
