"""Serve the pipeline on a schedule from this machine: no work pool, no worker to run.

    python flows/serve.py                                            # nightly at 02:00 (server time zone UTC)
    python flows/serve.py --cron "0 */6 * * *" -- experiment=tiny    # any schedule, any Hydra overrides
    prefect deployment run scheduled-pipeline/thinkflow-nightly      # trigger one run now

Registers the deployment ``scheduled-pipeline/<name>`` with the Prefect server at
``PREFECT_API_URL`` (start one with ``prefect server start``) and runs its flow runs in
subprocesses until stopped. For Docker or Kubernetes work pools use ``prefect.yaml``
(``prefect deploy``), which declares the same deployment.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # `python flows/serve.py` from anywhere

from flows.pipeline import scheduled_pipeline  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--name", default="thinkflow-nightly")
    parser.add_argument("--cron", default="0 2 * * *", help="cron schedule (default: nightly at 02:00)")
    parser.add_argument("--config-name", default="pipeline")
    parser.add_argument("overrides", nargs="*", help="Hydra overrides passed to every scheduled run")
    args = parser.parse_args()
    if not os.environ.get("PREFECT_API_URL"):
        sys.exit(
            "flows/serve.py needs a Prefect server: run `prefect server start` and set "
            "PREFECT_API_URL=http://127.0.0.1:4200/api (scheduled runs outlive this shell)"
        )
    scheduled_pipeline.serve(
        name=args.name,
        cron=args.cron,
        parameters={"config_name": args.config_name, "overrides": args.overrides},
        description="thinkflow pipeline on a schedule (config name + Hydra overrides)",
        tags=["thinkflow"],
    )


if __name__ == "__main__":
    main()
