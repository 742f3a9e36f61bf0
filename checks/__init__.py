"""Checks of the code's shape that linters do not make (run by `make lint`)."""
