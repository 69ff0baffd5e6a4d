"""Go game records: SGF loading and coordinates in KataGo's (GTP) notation."""
