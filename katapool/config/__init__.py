"""KataGo configuration: a typed model of the settings, presets, and per-device generation."""
