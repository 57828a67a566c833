"""The JSON schema Snakemake's validate() uses, generated from the pydantic models."""

from __future__ import annotations

import json
from typing import Any

from mm1.config.run import RunConfig

SCHEMA_PATH = "workflow/schemas/config.schema.json"


def json_schema() -> dict[str, Any]:
    schema = RunConfig.model_json_schema()
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["description"] = "Generated from mm1.config (pydantic) by `mm1 config schema`; do not edit by hand."
    return schema


def render() -> str:
    return json.dumps(json_schema(), indent=2, sort_keys=True) + "\n"
