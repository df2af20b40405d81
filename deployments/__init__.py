"""Ray Serve deployments of capserve: the engine, the ingress and the application builder."""
