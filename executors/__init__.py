"""The executors shipped with colonyos (installed as ``colonyos.executors``).

Each module offers ``build(...) -> ExecutorApp``; ``colonies executor start KIND`` runs one.
They import nothing from outside the standard library but nats-py and msgspec. ``contract``
(Colonies' ``execute`` contract) and ``platform`` are what the executors of platforms share.
"""

KINDS = ("echo", "python", "shell", "container", "kubernetes", "slurm")
