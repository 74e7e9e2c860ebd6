"""The printed table and BENCHMARKS.md, from the results dict of run.py."""

from __future__ import annotations


def _f(x, nd=0):
    if x is None:
        return "-"
    if isinstance(x, float):
        return f"{x:,.{nd}f}"
    return f"{x:,}" if isinstance(x, int) else str(x)


def _ok(cond: bool) -> str:
    return "met" if cond else "**missed**"


def rows(r: dict) -> list:
    """(section, measure, ours, baseline, ratio/result, target, verdict)"""
    out = []
    t = r.get("throughput")
    if t:
        for key, label in (("http_blrp", "HTTP, BatchLogRecordProcessor"), ("grpc_blrp", "gRPC, BatchLogRecordProcessor"),
                           ("http_direct", "HTTP, export() of 512-record batches"),
                           ("grpc_direct", "gRPC, export() of 512-record batches")):
            v = t[key]
            target = "≥ 0.97" if "blrp" in key else "(≥ 0.97)"
            rr = [o / s for o, s in zip(v["all_ours"], v["all_stock"])]
            out.append(("1 throughput", f"{label} (records/s)", _f(v["ours"]), _f(v["stock"]) + " stock",
                        f"{v['ratio']:.3f} (rounds {min(rr):.2f}–{max(rr):.2f}, n={len(rr)}); client CPU µs/record "
                        f"{v['cpu_us_ours']:.1f} vs {v['cpu_us_stock']:.1f} (ratio {v['cpu_ratio']:.3f})", target,
                        _ok(v["ratio"] >= 0.97)))
        for tr in ("http", "grpc"):
            v = t.get(f"{tr}_per_call")
            if v:
                out.append(("1 throughput", f"{tr.upper() if tr == 'http' else 'gRPC'}: µs per export() call of 1 record "
                            "(fixed per-call cost)", f"{v['wall_us_ours']:.0f}", f"{v['wall_us_stock']:.0f}",
                            f"{v['wall_us_added']:+.0f} µs wall, {v['cpu_us_added']:+.0f} µs CPU", "(report)", ""))
    e = r.get("economy")
    if e:
        for key, label in (("ours_at_expiry", "ours, TokenManager (default policy)"),
                           ("ours_refresh_in_flight", "ours, refresh still in flight at expiry"),
                           ("ours_first_token", "ours, 64 first callers (no token yet)"),
                           ("google_auth", "google-auth Credentials.before_request"),
                           ("azure_identity", "azure-identity ClientSecretCredential.get_token")):
            v = e[key]
            target = "1" if key.startswith("ours") else "(comparison)"
            verdict = _ok(v["max"] == 1) if key.startswith("ours") else ""
            out.append(("2 IdP economy", f"{label}: IdP requests, {e['threads']} threads at expiry",
                        _f(v["median"]) if key.startswith("ours") else "",
                        "" if key.startswith("ours") else _f(v["median"]),
                        f"max {v['max']} of {len(v['all'])} runs", target, verdict))
    lt = r.get("latency")
    if lt:
        for side, label in (("ours", "ours (background refresh)"), ("blocking", "blocking-refresh baseline")):
            rot, std = lt[f"{side}_rotating"], lt[f"{side}_steady"]
            out.append(("3 latency", f"{label}: p50 ms rotating / steady", _f(rot["p50_ms"], 2),
                        _f(std["p50_ms"], 2), f"{lt[side + '_p50_ratio']:.2f}", "", ""))
            out.append(("3 latency", f"{label}: p99 ms rotating / steady", _f(rot["p99_ms"], 2),
                        _f(std["p99_ms"], 2), f"{lt[side + '_p99_ratio']:.2f}",
                        "≤ 1.1" if side == "ours" else "(comparison)",
                        _ok(lt["ours_p99_ratio"] <= 1.1) if side == "ours" else ""))
    fl = r.get("fleet")
    if fl:
        out.append(("4 fleet", "peak IdP requests/s, excluding the synchronized start",
                    _f(fl["jitter"]["peak_after_start"]), _f(fl["no_jitter"]["peak_after_start"]) + " no jitter",
                    f"{fl['ratio_after_start']:.3f}", "≤ 0.1", _ok(fl["ratio_after_start"] <= 0.1)))
        out.append(("4 fleet", "peak IdP requests/s, overall (the start itself)",
                    _f(fl["jitter"]["peak_overall"]), _f(fl["no_jitter"]["peak_overall"]) + " no jitter",
                    f"{fl['jitter']['peak_overall'] / fl['no_jitter']['peak_overall']:.3f}", "(see notes)", ""))
    rs = r.get("resend")
    if rs:
        for tr, label in (("http", "HTTP"), ("grpc", "gRPC"), ("http_idp", "HTTP, forced refresh at the real IdP"),
                          ("http_nagle", "HTTP, test peer with Nagle on (see notes)")):
            v = rs.get(tr)
            if not v:
                continue
            if tr in ("http", "grpc"):
                out.append(("5 re-send", f"{label}: extra serializations per 401 re-send",
                            _f(v["extra_serializations"]), "",
                            f"{_f(v['serializations_resend'])} vs {_f(v['serializations_normal'])} per export; "
                            f"{_f(v['requests_resend'])} vs {_f(v['requests_normal'])} requests",
                            "0" if tr == "http" else "(report)",
                            _ok(v["extra_serializations"] == 0) if tr == "http" else ""))
            out.append(("5 re-send", f"{label}: export ms, re-sent / normal (median)",
                        _f(v["resend_ms"], 2), _f(v["normal_ms"], 2), f"+{v['added_ms']:.2f} ms", "(report)", ""))
    m = r.get("memory")
    if m:
        for k in ("ours", "stock", "ours_1000"):
            v = m.get(k)
            if not v:
                continue
            who = "ours" if k.startswith("ours") else "stock"
            lost = v.get("processor_dropped", v["produced"] - v["exporter_saw"])
            kept = v.get("buffered_records")
            detail = (f"{_f(kept)} records kept ({v['buffered_bytes'] / 2**20:.1f} MiB est.), "
                      f"{_f(v.get('buffer_dropped'))} dropped by the cap" if kept is not None
                      else "every batch after expiry dropped (401)")
            detail += (f"; {_f(lost)} dropped by the processor's full queue; longest export() "
                       f"{max(v.get('longest_export_s', 0), v.get('export_in_progress_s', 0)):.1f} s")
            out.append(("6 memory", f"{who} at {v['rate']}/s, {m['seconds']:.0f} s outage: peak RSS MiB (VmHWM), "
                        "RSS before the outage", f"{v['hwm_kib_proc'] / 1024:.1f}" if who == "ours" else "",
                        f"{v['hwm_kib_proc'] / 1024:.1f}" if who == "stock" else "",
                        f"before {v['rss_ready_kib'] / 1024:.1f} MiB; {detail}", "(report)", ""))
        out.append(("6 memory", "peak RSS, ours / stock at the same load", "", "",
                    f"{m['hwm_ratio']:.2f} (+{m['hwm_delta_kib'] / 1024:.1f} MiB)", "(report)", ""))
    return out


def render_table(r: dict) -> str:
    hdr = ("section", "measure", "ours", "baseline", "ratio / detail", "target", "verdict")
    rs = [hdr] + rows(r)
    w = [max(len(str(x[i])) for x in rs) for i in range(len(hdr))]
    lines = ["  ".join(str(x[i]).ljust(w[i]) for i in range(len(hdr))) for x in rs]
    lines.insert(1, "  ".join("-" * n for n in w))
    return "\n".join(lines)


def render_markdown(r: dict, command: str) -> str:
    from _notes import notes

    m = r["machine"]
    pk = ", ".join(f"{k} {v}" for k, v in m["packages"].items())
    la = lambda x: " / ".join(f"{v:.2f}" for v in x)  # noqa: E731
    lines = [
        "# Benchmarks",
        "",
        "Produced by one run of `benchmarks/run.py` (see *Reproduce*). Every comparison ran both sides in",
        "that run, alternating (A B B A ...), and reports medians and ratios; all peers are the project's",
        "real loopback test peers (`tests/peers`: the node OAuth2 IdP, the OTLP HTTP/gRPC receivers).",
        "",
        "## Machine",
        "",
        f"- run: {r['started']}, {r['duration_s']:.0f} s{' (--quick: small sizes, not the reference figures)' if r['quick'] else ''}",
        f"- `nproc`: {m['nproc']}; CPU: {m['cpu']}",
        f"- load average (1/5/15 min) before: {la(m['load_before'])}; after: {la(m['load_after'])}"
        + (" — other engineers' test runs were sharing the machine" if m["load_before"][0] > 0.7 * m["nproc"] else ""),
        f"- Python {m['python']} on {m['platform']}; node {m['node']}",
        f"- packages: {pk}",
        "",
        "## Results",
        "",
        "| section | measure | ours | baseline | ratio / detail | target | verdict |",
        "|---|---|---|---|---|---|---|",
    ]
    for row in rows(r):
        lines.append("| " + " | ".join(str(x) for x in row) + " |")
    lines += ["", *notes(r), "", "## Reproduce", "", "```sh",
              "bash scripts/bench.sh          # = scripts/setup.sh, pip install -e '.[bench]', benchmarks/run.py",
              "# or, in an environment that already has the package with the [test,bench] extras:",
              f".venv/bin/python {command}",
              "```", "",
              "`--quick` runs every section with small sizes (about a minute) as a smoke test; `--only` picks",
              "sections (`throughput,economy,latency,fleet,resend,memory`); `--no-write` leaves this file alone;",
              "`--json FILE` keeps the raw figures (every run of every side); `--from-json FILE` re-renders this",
              "file and the table from them without measuring.", ""]
    return "\n".join(lines)
