# Shared helpers: the validated run config, and the slice of it each stage reads.
import json

from mm1.config import from_dict

RUN = from_dict(config, "snakemake config")


def stage_config(*keys):
    """JSON of the top-level config keys a stage reads; a change to them (and only them) reruns it."""
    resolved = RUN.model_dump(mode="json")
    return json.dumps({key: resolved[key] for key in keys}, sort_keys=True)
