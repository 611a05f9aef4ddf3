"""Executors run grid points, each in a fresh process, and yield one record per point."""
