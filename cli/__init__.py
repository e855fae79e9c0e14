"""The ``colonies`` command line (installed as ``colonyos.cli``)."""
