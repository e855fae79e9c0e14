"""Generators: a workflow that starts when enough arguments have been packed, or when the
first of them has waited long enough.

``model`` holds the definition (Colonies' JSON keys), ``trigger`` the pure decision of when a
run starts. The leading broker runs them (``colonyos/broker/generators.py``); ``client`` is the
SDK's ``Generators``.
"""

from colonyos.generators.model import Generator, GeneratorDefinition
from colonyos.generators.trigger import RunNow, Wait, decide

__all__ = ["Generator", "GeneratorDefinition", "RunNow", "Wait", "decide"]
