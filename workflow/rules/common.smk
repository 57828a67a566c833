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
    return StageConfig(json.dumps({key: resolved[key] for key in keys}, sort_keys=True))


class StageConfig:
    """A stage's config JSON as a params value. Not a str, so Snakemake does not expand it as a
    wildcard pattern (a prompt template's "{text}" would read as one); the shell gets str()."""

    def __init__(self, text):
        self.text = text

    def __str__(self):
        return self.text
