"""The long-running host: fleet side, deployment driver, campaign jobs, live events and the API
in one process (``edgetailor serve``). ``host.service.service`` has the process; ``campaigns``
the campaign jobs; ``events`` the change watcher behind server-sent events."""
