"""The space-time networks: the VideoNetwork interface, norms, attention processors, InflatedUNet, MotionUNet."""
