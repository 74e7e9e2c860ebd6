"""A plain app for the disk-spool tests, run under ``opentelemetry-instrument`` (zero-code).

Like examples/zero_code_app.py (standard-library logging only), plus what the spool tests need:

* APP_PREFIX (default "app record"): records are "<prefix> N", so two processes can be told apart;
* APP_RECORDS / APP_SECONDS: how many records, spread evenly (absolute schedule) over how long;
* APP_LINGER: seconds to stay alive after the last record (a crash test SIGKILLs it meanwhile);
* stdout (flushed): one ``sdk {...}`` line with the BatchLogRecordProcessor's settings as the
  instrumentation built it, then ``app done <time.time()>`` right after the last record is logged.
"""

import json
import logging
import os
import sys
import time

log = logging.getLogger("spool_app")
logging.basicConfig(level=logging.INFO, stream=sys.stderr)
logging.getLogger().setLevel(logging.INFO)


def _processor_settings() -> dict:
    """max_queue_size / max_export_batch_size / schedule_delay_millis of the batch processor(s)."""
    try:
        from opentelemetry._logs import get_logger_provider

        provider = get_logger_provider()
        multi = getattr(provider, "_multi_log_record_processor", None)
        found = []
        for processor in getattr(multi, "_log_record_processors", ()):
            inner = getattr(processor, "_batch_processor", None)
            if inner is None:
                continue
            found.append({
                "max_queue_size": inner._max_queue_size,
                "max_export_batch_size": inner._max_export_batch_size,
                "schedule_delay_millis": inner._schedule_delay_millis,
            })
        return {"processors": found}
    except Exception as exc:  # noqa: BLE001 - diagnostics only
        return {"error": repr(exc)}


print("sdk " + json.dumps(_processor_settings()), flush=True)

prefix = os.environ.get("APP_PREFIX", "app record")
count = int(os.environ.get("APP_RECORDS", "100"))
seconds = float(os.environ.get("APP_SECONDS", "2"))
linger = float(os.environ.get("APP_LINGER", "0"))
start = time.monotonic()
for i in range(count):
    log.info("%s %d", prefix, i)
    pause = start + seconds * (i + 1) / count - time.monotonic()
    if pause > 0:
        time.sleep(pause)
print(f"app done {time.time():.6f}", flush=True)
if linger > 0:
    time.sleep(linger)
