"""The sans-I/O core: everything one call needs, with no asyncio, sockets, clocks or logging.

Modules (import what you use: this package re-exports nothing, so ``import
voicebridge.core.acs`` stays as light as that codec):

* codecs: :mod:`~voicebridge.core.acs` (ACS media), :mod:`~voicebridge.core.voicelive`
  (Voice Live), :mod:`~voicebridge.core.webhooks` (Event Grid and callbacks);
* :mod:`~voicebridge.core.audio` — resampler and framer;
* :mod:`~voicebridge.core.responses` — the response state, the whole rule;
* :mod:`~voicebridge.core.guard` — the only way out to Voice Live;
* :mod:`~voicebridge.core.bridge` — :class:`CallBridge`, the facade over
  :mod:`~voicebridge.core.uplink`, :mod:`~voicebridge.core.playout`,
  :mod:`~voicebridge.core.session` and :mod:`~voicebridge.core.accounting`;
* :mod:`~voicebridge.core.events` — what the bridge tells the adapter;
* :mod:`~voicebridge.core.stats` — the latency histogram.

``tests/unit/core/test_boundaries.py`` keeps it that way.
"""

__all__: list[str] = []
