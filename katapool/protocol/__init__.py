"""KataGo's wire protocols as katapool reads and writes them (analysis JSON lines)."""
