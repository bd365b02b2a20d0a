"""The flwd command-line interface."""
