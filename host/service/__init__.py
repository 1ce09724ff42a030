"""The long-running host: fleet side, deployment driver, campaign jobs, live events and the API
in one process (``edgetailor serve``). ``host.service.service`` has the process; ``campaigns``
the campaign jobs; the events behind server-sent events are in host.api.live."""
