"""The training path: config and its checks, run plan, schedules, train step, loop, checkpoints, pipeline."""
