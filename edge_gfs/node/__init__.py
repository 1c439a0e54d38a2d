"""The streaming node: frame sources, the per-frame loop, the teach handler and the class registry on disk."""
