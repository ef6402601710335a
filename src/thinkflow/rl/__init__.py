"""RL on reasoning traces: GRPO-family objectives and verifiable rewards."""
