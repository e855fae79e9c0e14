"""Crons: workflows that start themselves on a schedule.

``model`` holds the definition (Colonies' JSON keys), ``schedule`` the pure cron maths and the
scheduling decision. The leading broker runs them (``colonyos/broker/crons.py``).
"""

from colonyos.crons.model import Cron, CronDefinition
from colonyos.crons.schedule import RunNow, Wait, decide

__all__ = ["Cron", "CronDefinition", "RunNow", "Wait", "decide"]
