#!/usr/bin/env python3
"""Prints the side-by-side table of a compare.sh results folder (markdown).

Ratios are Herald ÷ peer for figures where more is better (rates,
deliveries per CPU-second) and peer ÷ Herald where less is better
(memory, CPU per connect, latency): a ratio above 1 means Herald is better.
Herald's /ws is compared with both peers, Herald's /socket.io/ with Node's
Socket.IO (the same client). With several rounds (<scenario>-<target>.rN.json)
every figure is the median of the rounds, and the number of rounds is shown.
"""
import glob
import json
import os
import statistics
import sys

out = sys.argv[1]
TARGETS = ["herald", "herald-socketio", "herald-socketio-norecovery", "socketio", "sockudo"]
HEADERS = ["Herald /ws", "Herald /socket.io/", "Herald /socket.io/ (recovery off)", "Node Socket.IO", "Sockudo"]
# (better, worse-or-peer, column title)
PAIRS = [
    ("herald", "socketio", "Herald /ws vs Socket.IO"),
    ("herald-socketio", "socketio", "Herald /socket.io/ vs Socket.IO"),
    ("herald-socketio-norecovery", "socketio", "Herald /socket.io/ (recovery off) vs Socket.IO"),
    ("herald", "sockudo", "Herald /ws vs Sockudo"),
]


def load(scenario, target):
    """Every round's document for scenario/target (possibly none)."""
    paths = [os.path.join(out, f"{scenario}-{target}.json")]
    paths += sorted(glob.glob(os.path.join(out, f"{scenario}-{target}.r*.json")))
    docs = []
    for path in paths:
        try:
            with open(path) as f:
                docs.append(json.load(f))
        except (OSError, ValueError):
            continue
    return docs


def get(doc, *keys):
    for k in keys:
        if not isinstance(doc, dict) or k not in doc:
            return None
        doc = doc[k]
    return doc


ROWS = [
    # (scenario, label, path, more_is_better, format)
    ("idle", "connected / failed", None, None, None),
    ("idle", "connects/s", ("figures", "connect_rate_per_s"), True, "{:,.0f}"),
    ("idle", "connect+join/s", ("figures", "connect_and_join_rate_per_s"), True, "{:,.0f}"),
    ("idle", "server KiB per idle connection", ("figures", "server", "kib_per_connection"), False, "{:.1f}"),
    ("idle", "server CPU µs per connect", ("figures", "server", "cpu_us_per_connect"), False, "{:.0f}"),
    ("idle", "open at end of hold", ("figures", "open_at_end_of_hold"), True, "{:,}"),
    ("fanout", "deliveries/s", ("figures", "deliveries_per_s"), True, "{:,.0f}"),
    ("fanout", "deliveries per server CPU-s", ("figures", "server", "deliveries_per_cpu_s"), True, "{:,.0f}"),
    ("fanout", "server CPU µs per delivery", ("figures", "server", "cpu_us_per_delivery"), False, "{:.1f}"),
    ("fanout", "latency p50 ms", ("figures", "delivery", "latency_ms", "p50"), False, "{:.2f}"),
    ("fanout", "latency p99 ms", ("figures", "delivery", "latency_ms", "p99"), False, "{:.2f}"),
    ("fanout", "latency p99.9 ms", ("figures", "delivery", "latency_ms", "p99_9"), False, "{:.2f}"),
    ("fanout", "lost / dup / out of order", None, None, None),
    ("fanout", "subscribers joined", ("figures", "subscribers_joined"), True, "{:,}"),
]

def median(values):
    nums = [v for v in values if isinstance(v, (int, float))]
    if not nums:
        return None
    m = statistics.median(nums)
    # Counts stay counts ("{:,}" of 300.0 would print "300.0").
    return int(m) if all(isinstance(v, int) for v in nums) and m == int(m) else m


def sums(docs, f):
    """Per-round integers joined by '+' when rounds differ (e.g. failures)."""
    vals = [f(d) for d in docs]
    return str(vals[0]) if len(set(vals)) == 1 else "+".join(map(str, vals))


present = [t for t in TARGETS if any(load(s, t) for s in ("idle", "fanout"))]
pairs = [p for p in PAIRS if p[0] in present and p[1] in present]
rounds = max((len(load(s, t)) for s in ("idle", "fanout") for t in present), default=0)
heads = [HEADERS[TARGETS.index(t)] for t in present] + [p[2] for p in pairs]
print("| scenario | figure | " + " | ".join(heads) + " |")
print("|---|---|" + "---|" * len(heads))
for scenario, label, path, more, fmt in ROWS:
    cells, vals = [], {}
    for t in present:
        docs = load(scenario, t)
        if not docs:
            cells.append("not measured")
            continue
        if label == "connected / failed":
            cells.append(
                sums(docs, lambda d: get(d, "figures", "connected"))
                + " / "
                + sums(docs, lambda d: sum((get(d, "figures", "failures", "by_reason") or {}).values()))
            )
        elif label.startswith("lost"):
            cells.append(" / ".join(
                sums(docs, lambda d, k=k: (get(d, "figures", "delivery") or {}).get(k))
                for k in ("lost", "duplicated", "out_of_order")
            ))
        else:
            v = median(get(d, *path) for d in docs)
            vals[t] = v
            cells.append(fmt.format(v) if v is not None else "—")
    ratios = []
    for a, b, _ in pairs:
        h, p = vals.get(a), vals.get(b)
        if more is None or h is None or p is None or not h or not p:
            ratios.append("")
        elif more:
            ratios.append(f"{h / p:.2f}×")
        else:
            ratios.append(f"{p / h:.2f}×")
    print(f"| {scenario} | {label} | " + " | ".join(cells + ratios) + " |")
print()
if rounds > 1:
    print(f"Medians of {rounds} rounds (targets in alternation); counts per round joined by +.")
print("Ratios: above 1× Herald is better (Herald ÷ peer for rates, peer ÷ Herald for costs and latency).")
