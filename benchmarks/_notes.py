"""Method and interpretation notes for BENCHMARKS.md, filled in from the figures of the run."""

from __future__ import annotations


def _pct(x: float) -> str:
    return f"{100 * x:.1f} %"


def notes(r: dict) -> list:
    n = ["## How each figure was measured, and what it means", ""]
    t = r.get("throughput")
    if t:
        hb = t["http_blrp"]
        n += [
            "### 1. Throughput",
            "",
            f"- A `LoggerProvider` with `BatchLogRecordProcessor(max_queue_size=N, max_export_batch_size=512,",
            f"  schedule_delay_millis=50)` (N = {hb['records_per_run']:,}: the queue holds every record, so the",
            "  processor drops nothing and every run checks that the receiver got all N); records/s = N / (first",
            "  `emit` to `force_flush()` returned). The receiver is the test peer in a child process in static-token",
            "  mode; the stock exporter sends the static token as a header, ours gets it with `token=`.",
        ]
        if "http_bsp" in t:
            n += [
                "- Spans: the same with a `TracerProvider` and `BatchSpanProcessor` (same queue, batch and delay),",
                f"  N = {t['http_bsp']['records_per_run']:,} spans of 3 attributes per run (`start_as_current_span` and end), "
                "`TokenOTLPSpanExporter` vs",
                "  the stock `OTLPSpanExporter`; every run checks that the receiver counted all N spans.",
            ]
        n += [
            f"- `export()` called directly: the same 512 `ReadableLogRecord`s, {t['http_direct']['records_per_run'] // 512}"
            " exports per side and round after one warm-up export each; both exporters live at once and the",
            "  batches alternate between them call by call (A B B A ...), each call timed on its own, so the",
            "  machine's drift cancels within a round.",
            f"- {hb['runs']} rounds per row, sides alternating A B / B A; the ratio is the median of the per-round",
            "  ratios, and the range shows the round-to-round noise of this shared machine.",
            "- *client CPU µs/record* is the CPU time of the benchmark process (producer, processor, exporter;",
            "  not the receiver, a separate process) per record, median per side and median of per-round ratios:",
            "  less sensitive to other load than wall time, but not immune (cache and frequency effects).",
            "- Both sides encode with the same stock encoder (`encode_logs` / `encode_spans`, then",
            "  `SerializeToString`). After that the stock exporter posts (or calls its gRPC stub) on the",
            "  processor's thread. Ours puts the bytes in its sending queue; while nothing is queued, in flight",
            "  or failing and recent answers were fast (all of these runs), the caller's thread makes that one",
            "  attempt itself (the *direct path*: a `requests` session over HTTP; over gRPC a registered unary",
            "  call on the raw bytes, identity serializer, no interceptor), so no thread hand-over is on the",
            "  healthy path; otherwise the sender thread sends it and `export()` waits for it (at most 1 s).",
        ]
        pc = [(tr, t[tr + "_per_call"]) for tr in ("http", "grpc") if tr + "_per_call" in t]
        if pc:
            n += [
                "- *µs per export() call of 1 record*: both exporters side by side, "
                f"{pc[0][1]['rounds']} rounds of {pc[0][1]['calls']} calls each, alternating call by call;",
                "  with one record, encoding and sending are as small as they get, so the difference is the fixed",
                "  cost ours adds per call ("
                + ", ".join(f"{tr}: {v['wall_us_added']:+.0f} µs wall, {v['cpu_us_added']:+.0f} µs CPU" for tr, v in pc)
                + "; below zero is noise): the queue's lock and bookkeeping, one `Event` per request, the",
                "  suppression context, the cached token and one header, and the attempt's verdict.",
                "  Against a 512-record export of a few milliseconds it is a few per cent at most, and through the",
                "  processor (where the producer dominates) it is within the round-to-round noise.",
            ]
        keys = [k for k in ("http_blrp", "grpc_blrp", "http_bsp", "grpc_bsp", "http_direct", "grpc_direct") if k in t]
        missed = [k for k in keys if t[k]["ratio"] < 0.98]
        if missed:
            rng = "; ".join(
                f"{k}: rounds {min(o / s for o, s in zip(t[k]['all_ours'], t[k]['all_stock'])):.2f}–"
                f"{max(o / s for o, s in zip(t[k]['all_ours'], t[k]['all_stock'])):.2f}, CPU/record ratio {t[k]['cpu_ratio']:.3f}"
                for k in missed)
            def share(k):  # the fixed per-call cost as a share of the stock side's time per 512 items
                pcall = t.get(k.split("_")[0] + "_per_call")
                if not pcall:
                    return ""
                per_batch_us = 512e6 / t[k]["stock"]
                cpu_extra = 512 * (t[k]["cpu_us_ours"] - t[k]["cpu_us_stock"])
                return (f"{k}: gap {100 * (1 - t[k]['ratio']):.1f} %, fixed cost {100 * pcall['wall_us_added'] / per_batch_us:.1f} % "
                        f"of the stock side's {per_batch_us / 1000:.1f} ms per 512; CPU {cpu_extra:+.0f} µs per 512 "
                        f"vs {pcall['cpu_us_added']:+.0f} µs per call")

            def cpu_gap(k):  # ours' extra client CPU per 512 items beyond the per-call CPU cost (µs)
                pcall = t.get(k.split("_")[0] + "_per_call")
                if not pcall:
                    return None
                return 512 * (t[k]["cpu_us_ours"] - t[k]["cpu_us_stock"]) - pcall["cpu_us_added"]

            la = r.get("machine", {})
            n += [
                f"- **Below the 0.98 goal: {', '.join(missed)}** ({rng}).",
                "  No token is fetched during these runs and both sides encode alike. What ours adds per",
                "  `export()` is a fixed cost (the *µs per export() call of 1 record* rows); per 512-record",
                "  batch it is a small part of the gap: "
                + "; ".join(x for x in (share(k) for k in missed) if x) + ".",
            ]
            more = [k for k in missed if cpu_gap(k) is not None and cpu_gap(k) > 0]
            less = [k for k in missed if k not in more]
            if more:
                n.append(f"  In {', '.join(more)} ours' median client CPU per 512 exceeds the stock side's by more than the"
                         " per-call CPU cost: something scales with the batch, or the load inflated ours' rounds.")
            if less:
                n.append(f"  In {', '.join(less)} it does not (the medians differ by less, or ours' is lower): the"
                         " wall-clock gap there is not CPU ours spends.")
            n += [
                "  With round ratios this spread"
                + (f" and a load average of {la['load_before'][0]:.1f} before / {la['load_after'][0]:.1f} after the run"
                   if la.get("load_before") and la.get("load_after") else "")
                + ", this run",
                "  cannot separate that from noise; a rerun on an idle machine (`--only throughput`) would.",
            ]
        n.append("")
    e = r.get("economy")
    if e:
        n += [
            "### 2. IdP economy",
            "",
            f"- The node IdP issues {e['lifetime']} s tokens and answers every token request after {e['idp_delay_ms']} ms",
            f"  (a realistic IdP latency). Each side fetches a first token, waits until that token's expiry by its",
            f"  own clock, then {e['threads']} threads released by one barrier ask for a token at once; the figure",
            f"  is the token requests the IdP counted from the first token on ({e['rounds']} alternating rounds).",
            "- *ours, default policy*: the `TokenManager` had already refreshed in the background (for a 2 s",
            "  token at 60-70 % of its life: the 30 % minimum margin, minus jitter), so the threads find a fresh",
            "  token: the 1 request is that refresh.",
            "- *ours, refresh in flight*: a policy refreshing only 10 ms before expiry, so the threads meet an",
            "  expired token while the one fetch is still in flight; they all wait for it.",
            "- *ours, first token*: 64 threads call `get()` on a manager that has no token yet.",
            "- *google-auth*: `google.oauth2.credentials.Credentials` (refresh-token grant, accepted by the node",
            "  IdP) and `before_request()`, its default blocking refresh: every thread that sees an invalid token",
            "  calls `refresh()`; there is no single flight.",
            "- *azure-identity*: sync `ClientSecretCredential.get_token()`; MSAL's authority is a small TLS",
            "  front in this benchmark that serves the OIDC metadata and forwards token requests to the same node",
            "  IdP, which counts them. Every thread that finds the cached token expired requests a new one.",
        ]
        sg = e.get("signals")
        if sg:
            th, on = sg["three"], sg["one"]
            n += [
                f"- *Three signals*: the node IdP issues {sg['lifetime']} s tokens (no added delay); a `TokenOTLPLogExporter`,",
                "  a `TokenOTLPSpanExporter` and a `TokenOTLPMetricExporter` are built from the same token settings",
                "  (`token_url`, `client_id`, `client_secret`) and export through their SDK providers (batch",
                "  processors at 200 ms, a metric reader every 500 ms; a log record, a span and a counter increment",
                f"  every 20 ms) to a JWT-verifying receiver for {sg['seconds']:.0f} s; the other side is the log exporter alone.",
                f"  {sg['rounds']} alternating round(s) per side. The figure is the IdP's token requests from the exporters'",
                "  construction to the end (the first fetch included) divided by the number of token lifetimes in",
                f"  that time: {th['per_lifetime']:.2f} with three signals, {on['per_lifetime']:.2f} with one (ratio {sg['ratio']:.2f}).",
                "  The registry hands the three exporters one `TokenManager` (checked: "
                f"{max(x['managers'] for x in th['runs'])} manager), so the IdP sees",
                "  the refreshes of one token; above 1 per lifetime because the manager refreshes ahead of",
                f"  expiry (here about every {th['runs'][0]['seconds'] / max(th['token_requests'] - 1, 1):.1f} s "
                f"for a {sg['lifetime']} s token) and the first fetch counts. Without the sharing it would be",
                "  three times the one-signal figure.",
            ]
        n.append("")
    lt = r.get("latency")
    if lt:
        o = lt["ours_rotating"]
        n += [
            "### 3. Latency at rotation",
            "",
            f"- Two node IdPs, both answering after 300 ms: one issuing 2 s tokens (rotating), one 1 h tokens",
            f"  (steady); a JWT-verifying HTTP receiver for each. Four exporters export 10-record batches in turn",
            f"  (order rotated every round), one round every 25 ms, until both rotating sides rotated at least",
            f"  {lt['target_rotations']} times: {lt['seconds']:.0f} s, {o['n']:,} exports per side, {lt['rotations_ours']} rotations for ours,",
            f"  {lt['rotations_blocking']} for the blocking baseline (ours refreshes ahead of expiry, at 60-70 % of a 2 s token, so",
            "  it rotates more often in the same time).",
            "- The blocking baseline is the stock HTTP exporter with a `requests.Session` that, like google-auth's",
            "  `AuthorizedSession`, fetches a new token on the exporting thread when the current one has expired",
            "  (at the JWT's `exp`), then sends.",
            f"- Ours: p99 {o['p99_ms']:.2f} ms rotating vs {lt['ours_steady']['p99_ms']:.2f} ms steady, "
            f"{o['over_100ms']} exports over 100 ms, {o['failed']} failed; the",
            f"  export path never waits for the IdP. Baseline: {lt['blocking_rotating']['over_100ms']} exports over 100 ms (one per rotation: the",
            f"  IdP's 300 ms), {lt['blocking_rotating']['failed']} failed"
            + (" (a token sent in its last milliseconds, expired on arrival: 401, batch lost)."
               if lt['blocking_rotating']['failed'] else "."),
            "  The baseline's p99 depends on how many exports fall between rotations: with one export per",
            "  second (the processor's default delay) every other export of a 2 s token would wait 300 ms.",
        ]
        if lt["ours_p99_ratio"] > 1.1:
            n += [
                f"- **Target missed: p99 ratio {lt['ours_p99_ratio']:.2f}.** Both p99s are a few milliseconds on loopback,",
                "  so a stall of the scheduler or another engineer's test run moves them; no export of ours waited",
                f"  for a token (max {o['max_ms']:.1f} ms). The background fetch itself costs CPU time on the",
                "  same 2 cores (TLS-free HTTP request, JSON, JWT `exp` parse) once per rotation. What would close",
                "  it: more exports per side and an idle machine; a p99 of milliseconds is within noise here.",
            ]
        n.append("")
    fl = r.get("fleet")
    if fl:
        j, nj = fl["jitter"], fl["no_jitter"]
        n += [
            "### 4. Fleet simulation",
            "",
            f"- Virtual clock, no sleeping: {fl['processes']:,} processes start at t = 0 with {fl['lifetime']:.0f} s tokens; each",
            f"  refreshes at `schedule.refresh_at(...)` of its current token (the manager's own rule, each process",
            f"  with its own RNG), a fetch taking 0.2 s, for {fl['hours']} hours; requests are binned per second.",
            "  `RefreshPolicy()` (jitter up to 10 % of the lifetime, at most 300 s) vs `RefreshPolicy(jitter_fraction=0)`.",
            f"- Overall peak: {j['peak_overall']:,}/s for both. That is the start: a process without a token must fetch",
            "  one, and refresh jitter cannot move a first fetch. What would lower it is jitter before the first",
            "  fetch (a random start-up delay, costing the first records' latency) or a rolling deploy:",
            f"  started over 60 s, the peak after the start is {fl['rolling_60s']['jitter']}/s with jitter vs "
            f"{fl['rolling_60s']['no_jitter']}/s without.",
            f"- Excluding the first second: {j['peak_after_start']}/s with jitter vs {nj['peak_after_start']:,}/s without "
            f"(ratio {fl['ratio_after_start']:.3f}; target ≤ 0.1). Without jitter every process refreshes",
            f"  exactly 720 s after its previous fetch, so the whole fleet hits the IdP in the same second every",
            f"  cycle. With jitter the first cycle spreads over 90 s and keeps spreading (per-cycle peaks:",
            f"  {', '.join(str(x) for x in j['per_cycle_peaks'])}).",
            "",
        ]
    rs = r.get("resend")
    if rs:
        h, g = rs["http"], rs["grpc"]
        n += [
            "### 5. Re-send cost",
            "",
            "- Counter: `ExportLogsServiceRequest.SerializeToString` is wrapped (class attribute) before any",
            "  exporter is built. Ours calls it once per `export()`, on the request from the stock `encode_logs`,",
            "  and queues the bytes; a gRPC stub would call the same function as its `request_serializer` per",
            "  call attempt, so a serializing gRPC re-send would be counted too. The receiver (a child process)",
            "  counts requests, which confirms that a re-sent export reached it twice.",
            "- The receiver refuses the next request with a valid token (`reject_next_valid`: 401 /",
            "  UNAUTHENTICATED); our exporter forces a refresh and re-sends within the same attempt. Re-sent and",
            f"  normal exports alternate, {h['rounds']} of each per transport; `min_forced_interval=0` so every trial can force a",
            "  refresh (the default 1 s limit is a rate limit, not a cost).",
            f"- HTTP: {h['serializations_resend']:.0f} serialization per re-sent export ({h['extra_serializations']:.0f} extra): the transport "
            "posts the same queued bytes again.",
            f"- gRPC: {g['serializations_resend']:.0f} serialization per re-sent export ({g['extra_serializations']:.0f} extra): the request is held as "
            "bytes and the",
            "  transport's unary call has an identity serializer (no interceptor, no stub), so the re-send sends",
            "  the same bytes. (The previous version, an interceptor around the stock stub, serialized the",
            "  message again on every re-send: 1 extra.)",
            f"- Added latency (median): +{h['added_ms']:.2f} ms HTTP, +{g['added_ms']:.2f} ms gRPC with a static token (one extra round",
            "  trip plus a local forced refresh)"
            + (f"; +{rs['http_idp']['added_ms']:.2f} ms over HTTP when the forced refresh asks the node IdP." if "http_idp" in rs else "."),
            "- The benchmark receiver sets TCP_NODELAY. The test peer answers an error in two `send()` calls",
            "  (headers, then body); with Nagle on, the body can wait for the client's delayed ACK (~40 ms on",
            "  Linux), which would be the peer's write pattern, not the exporter's cost."
            + ((f" Here the re-send added +{rs['http_nagle']['added_ms']:.1f} ms with Nagle on vs +{h['added_ms']:.1f} ms"
                " without: " + ("no such wait showed." if rs["http_nagle"]["added_ms"] - h["added_ms"] < 10 else
                                "the difference is that wait; a collector answering in one write does not show it."))
               if "http_nagle" in rs else ""),
            "",
        ]
    m = r.get("memory")
    if m:
        o, s = m["ours"], m["stock"]
        o2 = m.get("ours_1000", {})
        kept = o.get("queued_records", 0)
        n += [
            "### 6. Memory under an outage",
            "",
            f"- Each side is its own process (`benchmarks/_outage_worker.py`) with the SDK's default",
            f"  `BatchLogRecordProcessor` (queue 2048), producing records (a ~100-character body, 4 attributes) at",
            f"  {m['rate']}/s for {m['seconds']:.0f} s; the processes run side by side and peak RSS is `VmHWM` read from",
            "  `/proc/<pid>/status` after the load. Ours delivers one record with a valid 3 s token first; then",
            "  the node IdP is stopped, so its token expires with the IdP down. The stock exporter sends a token",
            "  from the same IdP that expires within 3 s, after which every batch gets a 401 and is dropped.",
            f"- Ours kept {kept:,} records for re-sending, held as the encoded request bytes: "
            f"{o.get('queued_bytes', 0) / 2**20:.1f} MiB by the",
            f"  queue's own count ({o.get('encoded_b_per_record', 0):,.0f} B/record). Peak RSS growth per kept record: ours' growth",
            f"  (VmHWM {o['hwm_kib_proc'] / 1024:.1f} MiB over {o['rss_ready_kib'] / 1024:.1f} MiB before the outage) minus the "
            f"stock process's at the same load",
            f"  ({s['hwm_kib_proc'] / 1024:.1f} over {s['rss_ready_kib'] / 1024:.1f} MiB: producing and dropping, keeping nothing), "
            f"divided by the records kept:",
            f"  **{o.get('growth_b_per_record', 0):,.0f} B/record**. Plainer ratios, for comparison: ours' peak over the stock "
            f"process's peak",
            f"  {o.get('hwm_over_stock_b_per_record', 0):,.0f} B/record (it also counts ours' larger RSS before the outage, "
            f"{o['rss_ready_kib'] / 1024:.1f} vs {s['rss_ready_kib'] / 1024:.1f} MiB),",
            f"  ours' peak over its own RSS before {o.get('hwm_over_ready_b_per_record', 0):,.0f} B/record. What the growth holds beyond "
            "the queued",
            "  bytes is not itemised here; a peak also counts each batch's encoding while it runs (the",
            "  protobuf messages of 512 records) and what the allocator keeps.",
            "- For reference, **the previous version** (which kept the SDK's `ReadableLogRecord` batches and",
            "  re-ran the stock exporter on them), from BENCHMARKS.md at commit d4cd6f5, not measured in this",
            "  run: 14,002 records kept at 500/s; ours 34.9 → 51.9 MiB, stock 34.1 → 36.3 MiB, so",
            f"  (17.0 − 2.2) MiB / 14,002 ≈ **{1108:,} B (~1.1 KB) per kept record** by the same rule.",
            "- The default cap (20,000 records / 32 MiB of encoded bytes) bounds the queue; ours at 1,000/s"
            + (" reached it: " if o2.get("queue_dropped", 0) else ": ")
            + f"{o2.get('queued_records', 0):,} kept, "
            f"{o2.get('queue_dropped', 0):,} oldest dropped by the cap, peak RSS "
            f"{o2.get('hwm_kib_proc', 0) / 1024:.1f} MiB.",
        ]
        longest = max(o.get("longest_export_s", 0), o.get("export_in_progress_s", 0))
        if o.get("processor_dropped", 0) > 0 or longest > 1.5:
            n += [
                f"- **Finding:** with no valid token and the IdP down, the longest `export()` call took {longest:.2f} s and",
                f"  the processor's 2048-record queue dropped {o.get('processor_dropped', 0):,} records at {m['rate']}/s "
                f"({o2.get('processor_dropped', 0):,} at 1,000/s) that never",
                "  reached our exporter; `export()` is meant to wait at most 1 s for its own request and not at",
                "  all while the endpoint fails.",
            ]
        n.append("")
    ot = r.get("outage")
    if ot:
        n += outage_notes(ot)
    return n


KIND_TEXT = {
    "503": "every request answered `503` (gRPC: UNAVAILABLE)",
    "503_retry_after": "`503` with `Retry-After: 2` (gRPC: UNAVAILABLE with a 2 s `RetryInfo`)",
    "reset": "the connection dropped without an answer (HTTP: TCP RST; gRPC: UNAVAILABLE)",
    "hang": "every request held unanswered until the outage ends, then dropped",
    "refused": "the receiver's port closed (`pause()`), reopened on the same port (`resume()`)",
}


def outage_notes(ot: dict) -> list:
    from _report import OUTAGE_FAST_KINDS, OUTAGE_KIND_LABEL, loss_begins

    rate, secs, at, dur = ot["rate"], ot["seconds"], ot["at"], ot["outage"]
    n = [
        "### 7. Endpoint outage at rate",
        "",
        "- Each side is its own process (`benchmarks/_outage_worker.py --mode endpoint`) with the SDK's default",
        f"  `BatchLogRecordProcessor` (queue 2048, batch 512, delay 1000 ms), logging {rate:,} records/s for {secs:.0f} s",
        "  (each record carries its number in the attribute `seq`), with its own receiver (the test peer in",
        "  a child process, static-token mode). For each fault kind four processes run side by side (ours and",
        "  stock, HTTP and gRPC) and meet the same outage at the same moment: from "
        f"t = {at:.0f} s for {dur:.0f} s the receivers answer",
        "  with the fault, then normally again. Each worker then drains as an exiting application does",
        "  (the provider's `force_flush`, the exporter's `force_flush`, which does nothing for the stock one,",
        "  and the provider's `shutdown`), and the receiver counts the distinct `seq` it accepted: *lost* =",
        "  produced − distinct delivered (duplicates are not counted as delivered).",
        "- Kinds: " + "; ".join(f"*{OUTAGE_KIND_LABEL[k]}*: {KIND_TEXT[k]}" for k in ot["kinds"]) + ".",
        "- Every `export()` call is timed by a wrapper around the exporter. *During the outage*: calls that",
        "  overlap it; *whole run*: every call while producing, the catch-up after the return included (ours",
        "  waits up to 1 s for its own request when the endpoint takes data, and after an outage its",
        "  request queues behind the kept ones). Both sides encode each 512-record batch on the calling thread",
        "  first: that is most of an `export()` that does not wait for the network.",
        "- The stock exporter retries within its timeout (10 s): backoff 1, 2, 4 s (±20 %) or the",
        "  `Retry-After`/`RetryInfo`, giving up when the next backoff passes the deadline; a hang takes the",
        "  whole 10 s in one attempt. Meanwhile the processor's worker is blocked, its queue fills (2,048",
        f"  records: {2048 / rate:.1f} s at {rate:,}/s) and drops the oldest records; the batch whose `export()` gave up is lost.",
        "- Ours: `export()` queues the encoded request and waits for it at most 1 s, and not at all while the",
        "  endpoint fails; one sender probes with jittered exponential backoff (0.5 s base, cap 30 s,",
        "  `Retry-After`/`RetryInfo` honoured) and, once the endpoint takes data, re-sends what it kept in",
        "  order, merged up to 1 MiB per request. *First delivery after the return* is when the receiver",
        "  accepted the first request after the outage ended: for ours the rest of the backoff interval",
        "  running at that moment.",
    ]
    lost_o = [(k, tr, ot[k][f"ours_{tr}"]["lost"]) for k in ot["kinds"] for tr in ("http", "grpc")
              if f"ours_{tr}" in ot.get(k, {})]
    lost_s = [(k, tr, ot[k][f"stock_{tr}"]["lost"]) for k in ot["kinds"] for tr in ("http", "grpc")
              if f"stock_{tr}" in ot.get(k, {})]
    total = len(lost_o) * int(rate * secs)
    n.append(f"- At {rate:,}/s: ours lost {sum(x[2] for x in lost_o):,} of {total:,} records over the "
             f"{len(lost_o)} runs, the stock exporter {sum(x[2] for x in lost_s):,}.")
    bad = [(k, tr, x) for k, tr, x in lost_o if x]
    if bad:
        n.append("  **Ours lost records in: " + ", ".join(f"{OUTAGE_KIND_LABEL[k]} {tr} ({x:,})" for k, tr, x in bad)
                 + "**; the rows"
                 " say where (the cap, the processor's queue).")
    slow = []
    for k in ot["kinds"]:
        for tr in ("http", "grpc"):
            v = ot.get(k, {}).get(f"ours_{tr}")
            if v is None:
                continue
            limit = 0.05 if k in OUTAGE_FAST_KINDS else 10.0
            if v["slowest_in_outage_s"] > limit:
                slow.append((k, tr, v))
    waits = [v["slowest_wait_in_outage_s"] for k, tr, v in slow if v.get("slowest_wait_in_outage_s") is not None]
    med_in = [v["median_in_outage_s"] for k, tr, v in slow]
    if slow:
        def wait(v):
            w = v.get("slowest_wait_in_outage_s")
            return "" if w is None else f", of which at most {1000 * w:.0f} ms in the queue"

        n += [
            "  **Slowest `export()` during the outage over its target: "
            + ", ".join(f"{OUTAGE_KIND_LABEL[k]} over {tr.upper() if tr == 'http' else 'gRPC'} "
                        f"{1000 * v['slowest_in_outage_s']:.0f} ms{wait(v)} (median in the outage "
                        f"{1000 * v['median_in_outage_s']:.0f} ms, before it {1000 * v['median_before_s']:.0f} ms)"
                        for k, tr, v in slow) + ".**",
            "  While the endpoint fails, ours' `export()` does not wait for the network: it is the encoding of",
            "  its batch (the stock `encode_logs` and `SerializeToString` of 512 records on the processor's",
            "  thread, which the stock exporter pays too) plus the hand-over to the queue. Its median in the",
            f"  outage was {1000 * min(med_in):.0f}–{1000 * max(med_in):.0f} ms per run"
            + (f", of which the queue (`submit`) took at most {1000 * max(waits):.0f} ms in any call" if waits else "")
            + ";",
            "  the slowest calls are the same work stretched by the load of this shared 2-core machine (four",
            "  producers and four receivers side by side, and other engineers' test runs: see the load",
            "  average above). So the 50 ms target is missed by the encoding on this machine, not by waiting.",
            "  What would close it: an idle machine, or smaller batches (the processor's `max_export_batch_size`).",
        ]
    lb = loss_begins(ot)
    if lb:
        n += [
            f"- Where loss begins (the same {dur:.0f} s 503 outage over HTTP at "
            + ", ".join(f"{x:,}" for x in ot["sweep_rates"]) + " records/s, ours and stock side by side",
            "  at each rate; the first rate is the run above). Ours keeps up to 20,000 records / 32 MiB while",
            f"  nothing is delivered: {lb['ours_held_s']:.1f} s here (the outage plus the first delivery after the return,"
            " median of the runs),",
            f"  so loss begins near 20,000 / {lb['ours_held_s']:.1f} s ≈ {lb['ours_rate']:,} records/s. Measured lost, with rate × "
            "held − 20,000",
            f"  from each run's own held time in brackets: {lb['ours_measured']}. The byte cap",
            "  is not the limit at these records' size (see the peak MiB in the rows). The stock exporter loses",
            "  when its queue overflows while `export()` blocks its worker (the calls that overlap the outage,",
            "  back to back): rate × blocked time − 2,048, with "
            f"{lb['stock_blocked_s']:.1f} s blocked here, so from 2,048 / {lb['stock_blocked_s']:.1f} s ≈ "
            f"{lb['stock_rate']:,} records/s;",
            "  below that it still loses every batch whose `export()` gave up (512 records at these rates).",
            f"  Measured lost, with rate × blocked − 2,048 in brackets: {lb['stock_measured']}.",
        ]
        pq = [(rt, ot["sweep"][f"ours_{rt}"]) for rt in ot["sweep_rates"] if f"ours_{rt}" in ot["sweep"]
              and ot["sweep"][f"ours_{rt}"]["processor_dropped"]]
        if pq:
            n += [
                "  Ours also lost records in the processor's queue at "
                + ", ".join(f"{rt:,}/s ({v['processor_dropped']:,}; slowest `export()` {1000 * v['slowest_export_s']:.0f} ms)"
                            for rt, v in pq)
                + ". The",
                "  processor's worker hands over 512 records per `export()` call, so it keeps up only while a",
                "  call takes less than 512 / rate seconds on average (128 ms at 4,000/s); when calls take",
                "  longer (encoding on a loaded machine, here while the kept records are re-sent and decoded on",
                "  the same 2 cores) the queue fills and its oldest records are dropped before they reach the",
                "  exporter.",
            ]
    n += [
        "- Noise: four producers and four receivers share 2 cores, so `export()` durations carry the",
        "  machine's load (compare the medians before the outage). Delivered/lost counts depend less on",
        "  it: ours lost "
        + ("none in any" if not any(x[2] for x in lost_o) else f"{min(x[2] for x in lost_o):,}–{max(x[2] for x in lost_o):,} per")
        + f" {rate:,}/s run; the stock exporter's losses over the "
        f"{len(lost_s)} runs at {rate:,}/s ranged",
        f"  {min(x[2] for x in lost_s):,}–{max(x[2] for x in lost_s):,} records, with where its backoff steps and "
        "its last give-up fall against the outage.",
        "",
    ] if lost_s else ["", ]
    return n
