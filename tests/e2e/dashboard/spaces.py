"""A search space a campaign started from the dashboard names as ``pkg.mod:SPACE``: the service
under test allows this module (``serve --allow-module tests.e2e.dashboard.spaces``), as an
operator allows their own package. Three candidates whose accuracies differ (channel pruning
without fine-tuning loses most of it), so that the accuracy constraint is a line across the plot
and one point breaks it."""

THREE = [
    {"name": "fp32", "steps": []},
    {"name": "int8", "steps": [{"technique": "int8"}]},
    {"name": "prune50", "steps": [{"technique": "prune_channels", "ratio": 0.5}]},
]
