"""Turns the soak's JSON lines (one per seed) into a section of SOAK.md."""
import collections
import datetime
import json
import sys

FAULTS = {
    "leader killed", "leader stopped", "both replicas down", "kube-apiserver restarted",
    "node NotReady", "upgrades failing", "Job deleted by hand", "conflicting writes",
    "budget blocks evictions",
}

path, seconds, commit = sys.argv[1], int(sys.argv[2]), sys.argv[3]
runs = [json.loads(line) for line in open(path) if line.strip()]
faults, actions = collections.Counter(), collections.Counter()
for run in runs:
    for what, n in run["actions"].items():
        # "leader killed (none led)" is a fault that found nothing to do.
        (faults if what.split(" (")[0] in FAULTS else actions)[what] += n
violations = sum(len(r["violations"]) for r in runs)
day = datetime.date.today().isoformat()
print(f"\n## {day}, commit {commit}: {len(runs)} seeds in {seconds // 60} min, {violations} violations\n")
print("| seed | nodes (servers) | chaos s | operator actions | faults | writes checked | settled s | violations |")
print("|---:|---|---:|---:|---:|---:|---:|---:|")
for r in runs:
    n_faults = sum(n for w, n in r["actions"].items() if w.split(" (")[0] in FAULTS)
    n_actions = sum(r["actions"].values()) - n_faults
    print(f"| {r['seed']} | {r['nodes']} ({r['servers']}) | {r['seconds']} | {n_actions} | {n_faults} "
          f"| {r['writes']} | {r['settled_seconds']} | {len(r['violations'])} |")
print()
print("Faults injected: " + ", ".join(f"{w} {n}" for w, n in sorted(faults.items())) + ".")
print("Operator actions: " + ", ".join(f"{w} {n}" for w, n in sorted(actions.items())) + ".")
for r in runs:
    for v in r["violations"]:
        print(f"- seed {r['seed']}: {v}")
