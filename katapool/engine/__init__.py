"""The native KataGo engine: provisioning, discovery, probing, preparation and processes."""
