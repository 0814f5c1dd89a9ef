"""``mcluster demo`` and ``mcluster smtp``: a farm of demo MTAs (aiosmtpd) on one machine,
traffic for them, and the dashboard. Not used by the agent, manager or console."""
