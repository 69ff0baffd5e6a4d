#!/usr/bin/env python3
"""FAKE ENGINE, named as such, for measuring the router's own ceiling: it answers every
analysis query at once with a canned final response per turn, as fast as Python can, so the
engine is never the bottleneck. `version` answers like a CPU build. Not KataGo."""

import json
import sys

if sys.argv[1:2] == ["version"]:
    print("KataGo v1.18.1\nGit revision: fake-instant\nUsing Eigen(CPU) backend")
    sys.exit(0)
print("Started, ready to begin handling requests", file=sys.stderr, flush=True)
CANNED = ('"isDuringSearch":false,"moveInfos":[{"move":"Q16","order":0,"visits":1,'
          '"winrate":0.5,"scoreLead":0.0,"prior":0.1,"pv":["Q16"]}],'
          '"rootInfo":{"visits":1,"winrate":0.5,"scoreLead":0.0,"currentPlayer":"B"}')
out = sys.stdout
for line in sys.stdin:
    q = json.loads(line)
    qid = json.dumps(q["id"])
    if "action" in q:
        out.write(json.dumps({**q, "version": "1.18.1", "git_hash": "fake"}) + "\n")
    else:
        turns = q.get("analyzeTurns") or [len(q.get("moves", []))]
        out.write("".join(f'{{"id":{qid},{CANNED},"turnNumber":{t}}}\n' for t in sorted(set(turns))))
    out.flush()
