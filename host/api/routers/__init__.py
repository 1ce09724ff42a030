"""One router per domain: devices (and fleet status), artifacts, campaigns, deployments, events,
metrics."""
