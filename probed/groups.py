"""The three probe groups, the kubelet probe each answers, and the path it is served on."""

GROUPS = ("live", "ready", "started")  # livenessProbe, readinessProbe, startupProbe
GROUP_PATHS = {"live": "livez", "ready": "readyz", "started": "startupz"}
