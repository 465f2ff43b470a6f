"""Flow statistics into per-device windows: multipart assembly, deltas, features."""
