"""The executors shipped with colonyos (installed as ``colonyos.executors``).

Each module offers ``build(...) -> ExecutorApp``; ``colonies executor start KIND`` runs one.
They import nothing from outside the standard library but nats-py and msgspec.
"""

KINDS = ("echo", "python", "shell")
