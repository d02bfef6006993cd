"""Closed-loop controllers (served as ``cockpit_optim.controllers``).

A controller has ``instruments`` (names of the readings it needs, tracked automatically) and
``observe(record, optimizer) -> list[dict]``; each returned action (what changed, from what to
what, and why) is stored in the record under ``"actions"``.
"""

__all__: list[str] = []
