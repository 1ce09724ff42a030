"""The local inference endpoint: applications on the board run the active model over a socket.

The agent (:mod:`device_agent.serve.supervisor`) owns the listening socket and one long-lived
worker process (:mod:`device_agent.serve.worker`) that loads numpy and the runtime, so the agent
itself stays small. :mod:`device_agent.serve.client` is the numpy-only client applications use.
Nothing here imports numpy at package import time.
"""
