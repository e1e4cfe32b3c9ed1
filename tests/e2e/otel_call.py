"""Run one simulated call with Azure Monitor telemetry ON, offline, and print what it made.

``python -m tests.e2e.otel_call OUT_DIR`` — used by ``test_observability.py`` in a
subprocess, because ``configure_azure_monitor`` installs process-wide providers and
instrumentations that must not leak into the rest of the test session.

The connection string points at a closed loopback port; in-memory span and metric
readers are added next to the Azure Monitor exporters, so the test sees exactly what
would be exported. Prints one JSON object: spans, metrics, the call's ids and the
bridge's JSON log lines.
"""

from __future__ import annotations

import asyncio
import io
import json
import logging
import sys
from pathlib import Path
from typing import Any

from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from tests.e2e.conftest import SPEED
from voicebridge import logs, telemetry
from voicebridge.sim.ports import free_port
from voicebridge.sim.simulate import SimOptions, run_call


def connection_string() -> str:
    endpoint = f"http://127.0.0.1:{free_port()}/"
    return (
        "InstrumentationKey=00000000-0000-0000-0000-000000000000;"
        f"IngestionEndpoint={endpoint};LiveEndpoint={endpoint}"
    )


def main(out: Path) -> int:
    cs = connection_string()
    spans = InMemorySpanExporter()
    reader = InMemoryMetricReader()
    stream = io.StringIO()
    logs.setup("INFO", "json")
    logging.getLogger().handlers[0].setStream(stream)  # type: ignore[attr-defined]
    telemetry.configure_process(
        cs,
        span_processors=[SimpleSpanProcessor(spans)],
        metric_readers=[reader],
        enable_live_metrics=False,
        disable_offline_storage=True,
        # Keep every trace: the default rate-limited sampler may drop the first trace
        # after start-up, and this process starts right before the call.
        sampling_ratio=1.0,
    )
    result = asyncio.run(
        run_call(
            SimOptions(speed=SPEED, out=out, settings={"applicationinsights_connection_string": cs})
        )
    )
    metrics: dict[str, list[dict[str, Any]]] = {}
    data = reader.get_metrics_data()
    for rm in data.resource_metrics if data else []:
        for sm in rm.scope_metrics:
            if sm.scope.name != "voicebridge":
                continue
            for metric in sm.metrics:
                metrics[metric.name] = [
                    {"attributes": dict(p.attributes or {}), "value": getattr(p, "value", None)}
                    for p in metric.data.data_points
                ]
    found = [
        {
            "name": s.name,
            "trace_id": f"{s.context.trace_id:032x}",
            "span_id": f"{s.context.span_id:016x}",
            "parent_id": f"{s.parent.span_id:016x}" if s.parent else None,
            "attributes": dict(s.attributes or {}),
            "events": [e.name for e in s.events],
            "status": s.status.status_code.name,
            "ended": s.end_time is not None,
        }
        for s in spans.get_finished_spans()
    ]
    print(
        json.dumps(
            {
                "outcome": result.report["outcome"],
                "correlation_id": result.call.correlation_id,
                "call_connection_id": result.call.call_connection_id,
                "callback_uri": (result.call.answer_request or {}).get("callbackUri"),
                "spans": found,
                "metrics": metrics,
                "log_lines": stream.getvalue().splitlines(),
            }
        )
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main(Path(sys.argv[1])))
