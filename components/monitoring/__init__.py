"""Monitoring shipped with every stack: Prometheus, Alertmanager, exporters, the runbooks' alerts.

``rules/`` holds the alert rules (tested by promtool in tests/unit/test_alert_rules.py),
``config`` renders what the containers read, ``component`` deploys them on Docker.
"""

from components.monitoring.component import Monitoring, MonitoringArgs

__all__ = ["Monitoring", "MonitoringArgs"]
