"""Passes over the IR: pass base class, registry, pass manager and the passes."""
