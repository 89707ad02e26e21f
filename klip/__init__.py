"""Command-line entrance of klip; the logic lives in shapes, algos, envs, studies."""
