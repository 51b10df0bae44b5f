"""Print the performance table (markdown) from the results JSON: the figures in docs/ come from here."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

ROWS = [  # name, figure, how to show it
    ("b1_seam", "B1 seam op (median of claim/renew/report)"),
    ("b2_http", "B2 HTTP claim+report ops/s (1 / 4 clients; scaling to 4 / 16)"),
    ("b3_history", "B3 op latency at max history vs 100 terminal"),
    ("b4_e2e", "B4 end to end, overhead per job"),
    ("b5_idle", "B5 idle daemon"),
    ("b6_failover", "B6 failover"),
    ("b7_fairness", "B7 8 factories on one seam stub"),
    ("b8_pg_http", "B8 PostgreSQL claim+report pairs/s over HTTP (1 / 4 / 16 clients)"),
    ("b9_claim_depth", "B9 claim latency by queue depth"),
    ("b10_pickup", "B10 enqueue to tool start, idle HTTP fleet (p50 / p99)"),
]


def _ms(s: dict[str, Any]) -> str:
    return f"{s['median'] * 1e3:.1f} ms ({s['min'] * 1e3:.1f}-{s['max'] * 1e3:.1f})"


def _range(h: dict[str, Any]) -> str:
    """B2's per-round spread, when the run measured rounds."""
    if "ratio_1_range" not in h:
        return ""
    (a, b), (c, d) = h["ratio_1_range"], h["ratio_4_range"]
    return f" (rounds {a}-{b} / {c}-{d})"


def cells(name: str, d: dict[str, Any]) -> tuple[str, str, str, str]:
    """(figure, floor, ratio, target) of one result document."""
    h = d["headline"]
    if name == "b1_seam":
        floor, ratio = "python -c pass " + _ms(d["floor_s"]), f"{h['ratio']}x"
        if "bare_floor_s" in d:
            floor += "; python -I -S -c pass " + _ms(d["bare_floor_s"])
            ratio += f" / {h['ratio_bare']}x"
        return _ms(d["op_s"]), floor, ratio, h["target"]
    if name == "b2_http":
        o = d["ops_per_s"]
        return (f"{o['stub_claim_report']['1']:.0f} / {o['stub_claim_report']['4']:.0f} ops/s "
                f"(healthz {o['stub_healthz']['1']:.0f} / {o['stub_healthz']['4']:.0f})",
                f"echo {o['echo']['1']:.0f} / {o['echo']['4']:.0f} ops/s"
                + (f" (stdlib echo {o['echo_stdlib']['1']:.0f} / {o['echo_stdlib']['4']:.0f}, "
                   f"{h['stdlib_echo_ratio_1']}x / {h['stdlib_echo_ratio_4']}x of it)" if "echo_stdlib" in o else ""),
                f"{h['ratio_1']}x / {h['ratio_4']}x" + _range(h) + f" (HTTP layer {h['http_layer_ratio_1']}x)"
                + (f"; state on tmpfs {h['tmpfs_ops_s_1']:.0f} / {h['tmpfs_ops_s_4']:.0f} ops/s, "
                   f"{h['tmpfs_ratio_1']}x" if "tmpfs_ops_s_1" in h else "")
                + (f"; pairs/s {h['pairs_s']['1']:.0f} / {h['pairs_s']['4']:.0f} / {h['pairs_s']['16']:.0f} "
                   f"at 1 / 4 / 16 clients: scaling {h['scaling_4']}x / {h['scaling_16']}x"
                   if "scaling_4" in h else ""),
                h["target"] + (f"; scaling {h['scaling_target']}" if "scaling_target" in h else ""))
    if name == "b3_history":
        lv = d["levels"]
        return (" / ".join(f"{r['terminal']}: {r['op_s']['median'] * 1e3:.1f}" for r in lv) + " ms",
                f"{lv[0]['terminal']} terminal: {_ms(lv[0]['op_s'])}", f"{h['ratio_at_max']}x", h["target"])
    if name == "b4_e2e":
        return (f"{h['jobs_per_s']} jobs/s, {h['overhead_ms_per_job']} ms/job overhead, "
                f"{h['factories_busy']} factory busy ({h['mode']})",
                f"bash -c true {h['floor_ms_per_job']} ms/job", "-", h["target"])
    if name == "b5_idle":
        parts = [f"offline {h['offline_cpu_s_per_min']} CPU-s/min, {h['offline_rss_mb']} MB"]
        parts.append(f"fleet {h['fleet_cpu_s_per_min']} CPU-s/min, {h['fleet_rss_mb']} MB"
                     if "fleet_cpu_s_per_min" in h else "fleet: unavailable in this build")
        if "fleet_http_cpu_s_per_min" in h:
            parts.append(f"fleet over HTTP {h['fleet_http_cpu_s_per_min']} CPU-s/min "
                         f"(+ server {h['fleet_http_server_cpu_s_per_min']})")
        return "; ".join(parts), "-", "-", h["target"]
    if name == "b6_failover":
        if h.get("status") == "unavailable":
            return "unavailable in this build (no fleet daemon)", f"TTL {h['ttl_s']} s", "-", h["target"]
        return f"{h['failover_s']} s", f"TTL {h['ttl_s']} s, bound {h['bound_s']} s", "-", h["target"]
    if name == "b7_fairness":
        return (f"{h['claims_per_s']} claims/s, p50 {h['p50_ms']} ms, p99 {h['p99_ms']} ms, "
                f"per factory {h['min_share']}-{h['max_share']}, starved {h['starved']}", "B1", "-", h["target"])
    if name == "b8_pg_http":
        if h.get("status") == "unavailable":
            return f"unavailable: {h['reason']}", "-", "-", h["target"]
        p = h["pairs_s"]

        def row(key: str) -> str:
            return " / ".join(f"{p[key][c]:.0f}" for c in ("1", "4", "16"))
        return (f"PG 1 replica {row('pg1')}, 2 replicas {row('pg2')}; file store {row('file')}",
                f"bare psycopg {row('floor')}",
                "vs file: 1 replica " + " / ".join(f"{h['pg1_vs_file'][c]}x" for c in ("1", "4", "16"))
                + ", 2 replicas " + " / ".join(f"{h['pg2_vs_file'][c]}x" for c in ("1", "4", "16"))
                + "; 1 replica vs floor " + " / ".join(f"{h['pg1_vs_floor'][c]}x" for c in ("1", "4", "16")),
                h["target"])
    if name == "b9_claim_depth":
        def depths(ms: dict[str, float]) -> str:
            return " / ".join(f"{int(d) // 1000}k: {v:.2f}" if int(d) >= 1000 else f"{d}: {v:.2f}"
                              for d, v in ms.items()) + " ms"
        pg = depths(h["pg_ms"]) if "pg_ms" in h else f"unavailable ({h.get('reason', '')})"
        if "pg_vs_floor" in h:
            pg += " (" + " / ".join(f"{v}x" for v in h["pg_vs_floor"].values()) + " bare SQL claim " \
                + depths(h["pg_floor_ms"]) + ")"
        seam = f"seam {depths(h['file_seam_ms'])}"
        if "file_seam_vs_floor" in h:
            seam += " (" + " / ".join(f"{v}x" for v in h["file_seam_vs_floor"].values()) + " python -c pass)"
        return (f"PG serve {pg}", f"file serve {depths(h['file_serve_ms'])}; {seam}",
                f"{h.get('pg_ratio_last_first', '-')}x", h["target"])
    if name == "b10_pickup":
        return (f"held claims {h['held_p50_ms']} / {h['held_p99_ms']} ms; idle CPU daemon "
                f"{h['held_daemon_cpu_s_per_min']} + server {h['held_server_cpu_s_per_min']} CPU-s/min",
                f"polling (2 s) {h['polled_p50_ms']} / {h['polled_p99_ms']} ms; idle CPU daemon "
                f"{h['polled_daemon_cpu_s_per_min']} + server {h['polled_server_cpu_s_per_min']} CPU-s/min",
                f"{h['p50_ratio_held_to_polled']}x", h["target"])
    raise ValueError(name)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results")
    out = ap.parse_args().out
    print("| # | figure (median, min-max) | floor, same run | ratio | target |")
    print("|---|---|---|---|---|")
    meta = None
    for name, title in ROWS:
        path = out / f"{name}.json"
        if not path.exists():
            print(f"| {title} | missing | | | |")
            continue
        d = json.loads(path.read_text(encoding="utf-8"))
        meta = meta or d["machine"]
        fig, floor, ratio, target = cells(name, d)
        print(f"| {title} | {fig} | {floor} | {ratio} | {target} |")
    if meta:
        print(f"\n{meta['cores']} cores, {meta['platform']}, Python {meta['python']}")


if __name__ == "__main__":
    main()
