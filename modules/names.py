"""The one pattern every name in modelfleet follows (modules, models, deployments, fleets), in a
module of its own: signed deletions check it too, without loading the module spec."""

NAME_PATTERN = r"^[a-z0-9]+(?:[._-][a-z0-9]+)*$"
