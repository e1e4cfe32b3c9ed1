"""The browser phone: talk to the agent from a browser tab, through the same relay.

``voicebridge phone`` (:mod:`.command`) starts the bridge with ``PHONE_ENABLED=true``
on loopback and opens ``/phone``. The page (:mod:`static <voicebridge.phone>`: plain
HTML and JavaScript, no build step) speaks the ACS media protocol over a WebSocket —
``AudioMetadata``, then ``AudioData`` frames of exactly 20 ms of PCM16 at the bridge's
ACS rate, ``DtmfData`` for keypad keys — and plays the ``AudioData`` it gets back,
flushing its player on ``StopAudio``. So what the developer hears is what a caller
would hear: the same :class:`~voicebridge.relay.MediaRelay`, core, guard and pacer.

* :mod:`.routes` — ``GET /phone``, ``POST /phone/calls``, ``WS /phone/ws/{token}``: what
  each checks and why (docs/phone.md, docs/security.md "The browser phone");
* :mod:`.socket` — the page's socket as the relay sees it: hang-up, bad input counted,
  and the ``phone.*`` side channel (transcripts, turn state) from the core's events;
* :mod:`.command` — ``voicebridge phone``.
"""
