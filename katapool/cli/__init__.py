"""The ``katapool`` command line."""
