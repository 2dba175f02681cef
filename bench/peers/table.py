#!/usr/bin/env python3
"""Prints the side-by-side table of a compare.sh results folder (markdown).

Ratios are Herald ÷ peer for figures where more is better (rates,
deliveries per CPU-second) and peer ÷ Herald where less is better
(memory, CPU per connect, latency): a ratio above 1 means Herald is better.
"""
import json
import os
import sys

out = sys.argv[1]
TARGETS = ["herald", "socketio", "sockudo"]


def load(scenario, target):
    path = os.path.join(out, f"{scenario}-{target}.json")
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


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

print("| scenario | figure | Herald | Socket.IO | Sockudo | Herald vs Socket.IO | Herald vs Sockudo |")
print("|---|---|---|---|---|---|---|")
for scenario, label, path, more, fmt in ROWS:
    docs = {t: load(scenario, t) for t in TARGETS}
    cells, vals = [], {}
    for t in TARGETS:
        d = docs[t]
        if d is None:
            cells.append("not measured")
            continue
        if label == "connected / failed":
            fails = sum((get(d, "figures", "failures", "by_reason") or {}).values())
            cells.append(f"{get(d, 'figures', 'connected')} / {fails}")
        elif label.startswith("lost"):
            dl = get(d, "figures", "delivery") or {}
            cells.append(f"{dl.get('lost')} / {dl.get('duplicated')} / {dl.get('out_of_order')}")
        else:
            v = get(d, *path)
            vals[t] = v
            cells.append(fmt.format(v) if isinstance(v, (int, float)) else "—")
    ratios = []
    for peer in ("socketio", "sockudo"):
        h, p = vals.get("herald"), vals.get(peer)
        if more is None or not isinstance(h, (int, float)) or not isinstance(p, (int, float)) or not h or not p:
            ratios.append("")
        elif more:
            ratios.append(f"{h / p:.2f}×")
        else:
            ratios.append(f"{p / h:.2f}×")
    print(f"| {scenario} | {label} | " + " | ".join(cells) + " | " + " | ".join(ratios) + " |")
print()
print("Ratios: above 1× Herald is better (Herald ÷ peer for rates, peer ÷ Herald for costs and latency).")
