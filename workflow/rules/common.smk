# Shared helpers: the validated run config, the slice of it each stage reads, where data comes from.
import json

from mm1.config import from_dict

RUN = from_dict(config, "snakemake config")

# The pre-training data manifest: the synthetic world's, or the acquisition stage's (data.source).
DATA_MANIFEST = {
    "world": "results/world/manifest.parquet",
    "acquired": "results/acquired/manifest.parquet",
}[RUN.data.source]


def stage_config(*keys):
    """JSON of the top-level config keys a stage reads; a change to them (and only them) reruns it."""
    resolved = RUN.model_dump(mode="json")
    return json.dumps({key: resolved[key] for key in keys}, sort_keys=True)
