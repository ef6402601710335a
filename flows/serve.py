"""Serve the scheduled deployments from this machine: no work pool, no worker to run.

    python flows/serve.py                                            # nightly at 02:00, watch at 06:00 (UTC)
    python flows/serve.py --cron "0 */6 * * *" -- experiment=tiny    # any schedule, any Hydra overrides
    prefect deployment run nightly/thinkflow-nightly                 # trigger one run now
    prefect deployment run watch/thinkflow-watch --param day=2026-11-30

Registers with the Prefect server at ``PREFECT_API_URL`` (start one with ``prefect server start``) and runs their
flow runs in subprocesses until stopped:

- ``nightly/thinkflow-nightly``: continues from the champion (a new seed, rl from ``models:/NAME@champion``),
  gates the new version against it and promotes it if it is better; the first night runs the whole pipeline;
- ``watch/thinkflow-watch``: the champion and the API contestants on the day's draw of held-out problems, one
  MLflow series per contestant (step = day), so drift behind a fixed API name shows up in MLflow's charts.

Both take the same config name and overrides. For Docker or Kubernetes work pools use ``prefect.yaml``
(``prefect deploy --all``), which declares the same deployments.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # `python flows/serve.py` from anywhere

from prefect import serve  # noqa: E402

from flows.pipeline import nightly_pipeline, watch  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--name", default="thinkflow-nightly")
    parser.add_argument("--cron", default="0 2 * * *", help="the nightly's cron schedule (default: 02:00)")
    parser.add_argument("--watch-cron", default="0 6 * * *", help="the watch's cron schedule (default: 06:00)")
    parser.add_argument("--no-watch", action="store_true", help="serve the nightly only")
    parser.add_argument("--config-name", default="pipeline")
    parser.add_argument("overrides", nargs="*", help="Hydra overrides passed to every scheduled run")
    args = parser.parse_args()
    if not os.environ.get("PREFECT_API_URL"):
        sys.exit(
            "flows/serve.py needs a Prefect server: run `prefect server start` and set "
            "PREFECT_API_URL=http://127.0.0.1:4200/api (scheduled runs outlive this shell)"
        )
    parameters = {"config_name": args.config_name, "overrides": args.overrides}
    deployments = [
        nightly_pipeline.to_deployment(
            name=args.name,
            cron=args.cron,
            parameters=parameters,
            description="continue from the champion with a new seed, gate, promote (the first night: everything)",
            tags=["thinkflow"],
        )
    ]
    if not args.no_watch:
        deployments.append(
            watch.to_deployment(
                name="thinkflow-watch",
                cron=args.watch_cron,
                parameters=parameters,
                description="the champion and the API contestants on the day's held-out draw; MLflow series",
                tags=["thinkflow"],
            )
        )
    serve(*deployments)


if __name__ == "__main__":
    main()
