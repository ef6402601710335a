"""thinkflow: workflow-orchestrated experiments for test-time compute and RL on reasoning traces."""

from thinkflow import logs

logs.setup()  # thinkflow's progress lines: `<stage>: <message>` on stdout (thinkflow.logs)
