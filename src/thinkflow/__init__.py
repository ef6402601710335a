"""thinkflow: workflow-orchestrated experiments for test-time compute and RL on reasoning traces."""
