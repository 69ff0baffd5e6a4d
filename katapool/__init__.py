"""katapool: supervise, route and prepare pools of native KataGo engines."""

__version__ = "0.1.0"
