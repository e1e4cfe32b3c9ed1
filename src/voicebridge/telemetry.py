"""OpenTelemetry traces per call and the Azure Monitor export.

**Off** unless ``APPLICATIONINSIGHTS_CONNECTION_STRING`` is set. Then nothing of the
OpenTelemetry SDK or the Azure Monitor distro is imported, no exporter, thread or
instrumentation exists, and every span the bridge asks for is one shared no-op object
(:data:`NO_SPAN`): the cost is a method call at a handful of points per call.

**On**: :func:`configure_process` calls ``configure_azure_monitor(...)`` once per
process (it installs global providers), which exports

* traces — one trace per call, rooted at the Event Grid delivery that rang it::

      POST /api/incoming-call   FastAPI's own request span (FastAPI >= 0.16x)
      call                      IncomingCall -> the call's end (outcome)
        answer                  answer_call; the Call Automation HTTP request nests under it
        voicelive.connect       each session open (the first, and each reconnect attempt)
        voicelive.reconnect     a lost session -> the new one confirms session.updated
          voicelive.connect
        voicelive.response      response.created -> response.done (status, reason;
                                a ``barge_in`` event when the caller interrupted it)

  The call's span is *current* while its callbacks and its media relay run, so their
  log lines and library spans (hang-up requests) join the call's trace. Nothing per
  audio frame is traced: the distro's FastAPI/ASGI instrumentation (a span per
  WebSocket message) is turned off — FastAPI's native telemetry makes one span per
  request or WebSocket connection — and the relay's spans start and end on Voice Live
  control events only. Per-call URL keys and ``secret=`` values are blanked from span
  attributes (``url.path``, ``url.query``) before anything is exported.
* the metrics of :mod:`voicebridge.metrics`, as observable instruments read at each
  export (histograms as p50/p99/max gauges plus a count: Azure Monitor keeps only
  aggregates of a histogram, not its buckets);
* the ``voicebridge.*`` log records (with their call ids as custom dimensions),
  correlated with the trace that was current when they were logged. Set
  ``OTEL_LOGS_EXPORTER=none`` to keep logs on stdout only (Container Apps already
  ships stdout to Log Analytics).

Standard ``OTEL_*`` variables (sampling, disabled instrumentations, resource attributes)
apply as documented for the distro.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any, Protocol

from voicebridge import __version__, logs

if TYPE_CHECKING:
    from voicebridge.config import Settings
    from voicebridge.stats import ServiceStats

log = logging.getLogger(__name__)

#: Instrumentations of the Azure Monitor distro that stay off: ``fastapi`` traces every
#: WebSocket message (the media path); the others are frameworks the bridge does not use.
DISABLED_INSTRUMENTATIONS = ("fastapi", "django", "flask", "psycopg2")


class Span(Protocol):
    """What the bridge does with a span: :class:`NoSpan` (tracing off), an OpenTelemetry
    span behind the same methods (tracing on), or a test's recorder."""

    def set_attribute(self, key: str, value: Any) -> None: ...

    def add_event(self, name: str, **attributes: Any) -> None: ...

    def fail(self, description: str) -> None: ...

    def end(self) -> None: ...


class NoSpan:
    """A span that records nothing (tracing off)."""

    __slots__ = ()

    def set_attribute(self, key: str, value: Any) -> None:
        pass

    def add_event(self, name: str, **attributes: Any) -> None:
        pass

    def fail(self, description: str) -> None:
        pass

    def end(self) -> None:
        pass

    @property
    def recording(self) -> bool:
        return False


NO_SPAN = NoSpan()


class Telemetry:
    """The span factory the bridge uses; this base class is the disabled one."""

    enabled = False

    def start(self, name: str, parent: Span | None = None, **attributes: Any) -> Span:
        """A span (call ``.end()``): a child of ``parent`` if given, else of the current
        span (a new trace if there is none)."""
        return NO_SPAN

    def activate(self, span: Span | None) -> contextlib.AbstractContextManager[object]:
        """Make ``span`` current inside the block (not ended on exit)."""
        return contextlib.nullcontext()

    @contextlib.contextmanager
    def use(self, name: str, parent: Span | None = None, **attributes: Any) -> Iterator[Span]:
        """A span that is *current* inside the block (so library spans nest under it),
        ended on exit; an exception escaping the block marks it failed."""
        yield NO_SPAN

    def observe(self, stats: ServiceStats, active_calls: Callable[[], int]) -> None:
        """Point the exported metrics at this app's stats."""

    def traceparent(self, span: Span | None) -> str | None:
        """``span`` as a W3C ``traceparent`` (many nodes: the node that runs the call
        continues the trace the answering node started)."""
        return None

    def remote(self, traceparent: str | None) -> Span | None:
        """A parent for :meth:`start` from a ``traceparent`` another node wrote."""
        return None


DISABLED = Telemetry()


class _Span:
    """An OpenTelemetry span behind the :class:`NoSpan` interface."""

    __slots__ = ("otel",)

    def __init__(self, otel: Any) -> None:
        self.otel = otel

    def set_attribute(self, key: str, value: Any) -> None:
        if value is not None:
            self.otel.set_attribute(key, value)

    def add_event(self, name: str, **attributes: Any) -> None:
        self.otel.add_event(name, {k: v for k, v in attributes.items() if v is not None})

    def fail(self, description: str) -> None:
        from opentelemetry.trace import Status, StatusCode

        self.otel.set_status(Status(StatusCode.ERROR, description))

    def end(self) -> None:
        self.otel.end()

    @property
    def recording(self) -> bool:
        return bool(self.otel.is_recording())


class _OtelTelemetry(Telemetry):
    enabled = True

    def __init__(self, tracer: Any) -> None:
        from opentelemetry import trace

        self._tracer = tracer
        self._trace = trace
        self._source: tuple[ServiceStats, Callable[[], int]] | None = None

    def _context(self, parent: Span | None) -> Any:
        if isinstance(parent, _Span):
            return self._trace.set_span_in_context(parent.otel)
        return None  # the current context

    def activate(self, span: Span | None) -> contextlib.AbstractContextManager[object]:
        if not isinstance(span, _Span):
            return contextlib.nullcontext()
        return self._trace.use_span(
            span.otel, end_on_exit=False, record_exception=False, set_status_on_exception=False
        )

    def start(self, name: str, parent: Span | None = None, **attributes: Any) -> _Span:
        attrs = {k: v for k, v in attributes.items() if v is not None}
        return _Span(self._tracer.start_span(name, context=self._context(parent), attributes=attrs))

    @contextlib.contextmanager
    def use(self, name: str, parent: Span | None = None, **attributes: Any) -> Iterator[Span]:
        span = self.start(name, parent, **attributes)
        with self._trace.use_span(span.otel, end_on_exit=True):
            yield span

    def observe(self, stats: ServiceStats, active_calls: Callable[[], int]) -> None:
        self._source = (stats, active_calls)

    def traceparent(self, span: Span | None) -> str | None:
        if not isinstance(span, _Span):
            return None
        from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

        carrier: dict[str, str] = {}
        TraceContextTextMapPropagator().inject(
            carrier, context=self._trace.set_span_in_context(span.otel)
        )
        return carrier.get("traceparent")

    def remote(self, traceparent: str | None) -> Span | None:
        if not traceparent:
            return None
        from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

        context = TraceContextTextMapPropagator().extract({"traceparent": traceparent})
        parent = self._trace.get_current_span(context)
        return _Span(parent) if parent.get_span_context().is_valid else None

    def read(self) -> tuple[ServiceStats, int] | None:
        source = self._source
        if source is None:
            return None
        stats, active = source
        return stats, active()


_process: _OtelTelemetry | None = None


def setup(settings: Settings) -> Telemetry:
    """The telemetry for an app with ``settings``: :data:`DISABLED` without a connection
    string, else the process's (configured on first use)."""
    secret = settings.applicationinsights_connection_string
    if secret is None:
        return DISABLED
    return configure_process(secret.get_secret_value())


def configure_process(connection_string: str, **options: Any) -> Telemetry:
    """``configure_azure_monitor`` once per process (later calls return the same
    telemetry; ``options`` of later calls are ignored). ``options`` are passed on to it
    (tests add in-memory span processors and metric readers this way)."""
    global _process
    if _process is not None:
        return _process
    from azure.monitor.opentelemetry import configure_azure_monitor
    from opentelemetry import metrics, trace
    from opentelemetry.sdk.resources import Resource

    kwargs: dict[str, Any] = {
        "connection_string": connection_string,
        "logger_name": "voicebridge",
        "instrumentation_options": {n: {"enabled": False} for n in DISABLED_INSTRUMENTATIONS},
        "resource": Resource.create(
            {"service.name": "voicebridge", "service.version": __version__}
        ),
    }
    # The redactor first: the exporters' processors must only ever see blanked values.
    kwargs["span_processors"] = [_redactor(), *options.pop("span_processors", [])]
    configure_azure_monitor(**(kwargs | options))
    telemetry = _OtelTelemetry(trace.get_tracer("voicebridge", __version__))
    _register_metrics(metrics.get_meter("voicebridge", __version__), telemetry)
    logs.trace_ids = _current_trace_ids
    _process = telemetry
    log.info("telemetry: exporting traces, metrics and logs to Azure Monitor")
    return telemetry


#: Span attributes that may carry a request path or query (per-call URL keys, secrets).
_URL_ATTRIBUTES = ("url.path", "url.query", "url.full", "http.target", "http.url")


def _redactor() -> Any:
    """A span processor that blanks URL keys and secrets in URL attributes at span start
    (FastAPI's request spans put the raw path, key included, in ``url.path``)."""
    from opentelemetry.sdk.trace import SpanProcessor

    class RedactUrls(SpanProcessor):
        def on_start(self, span: Any, parent_context: Any = None) -> None:
            attributes = span.attributes or {}
            for key in _URL_ATTRIBUTES:
                value = attributes.get(key)
                if isinstance(value, str):
                    clean = logs.redact(value)
                    if clean != value:
                        span.set_attribute(key, clean)

    return RedactUrls()


def _current_trace_ids() -> tuple[str, str] | None:
    from opentelemetry import trace

    ctx = trace.get_current_span().get_span_context()
    if not ctx.is_valid:
        return None
    return f"{ctx.trace_id:032x}", f"{ctx.span_id:016x}"


def _register_metrics(meter: Any, telemetry: _OtelTelemetry) -> None:
    """The :mod:`voicebridge.metrics` families as observable instruments (read in the
    exporter's thread: the readers take one C-level copy of each dict, which the GIL
    keeps whole)."""
    from opentelemetry.metrics import CallbackOptions, Observation

    from voicebridge import metrics as catalogue

    def values(fam: catalogue.Family) -> Callable[[CallbackOptions], list[Observation]]:
        def callback(options: CallbackOptions) -> list[Observation]:
            source = telemetry.read()
            if source is None or fam.read is None:
                return []
            return [Observation(v, dict(labels)) for labels, v in fam.read(*source)]

        return callback

    def stat(fam: catalogue.Family, which: str) -> Callable[[CallbackOptions], list[Observation]]:
        def callback(options: CallbackOptions) -> list[Observation]:
            source = telemetry.read()
            if source is None or fam.read_hist is None:
                return []
            out = []
            for labels, hist in fam.read_hist(*source):
                attrs = dict(labels)
                if which == "count":
                    out.append(Observation(hist.count, attrs))
                    continue
                ms = hist.max if which == "max" else hist.percentile(50 if which == "p50" else 99)
                out.append(Observation(ms / 1000.0, attrs | {"statistic": which}))
            return out

        return callback

    for fam in catalogue.FAMILIES:
        base = fam.name.removesuffix("_total")
        if fam.kind == "counter":
            meter.create_observable_counter(
                base, [values(fam)], unit=fam.unit, description=fam.help
            )
        elif fam.kind == "gauge":
            meter.create_observable_gauge(base, [values(fam)], unit=fam.unit, description=fam.help)
        else:
            meter.create_observable_gauge(
                base,
                [stat(fam, "p50"), stat(fam, "p99"), stat(fam, "max")],
                unit=fam.unit,
                description=fam.help + " (p50, p99 and max since start, by 'statistic')",
            )
            meter.create_observable_counter(
                base + "_count", [stat(fam, "count")], description=fam.help + " (count)"
            )
