// voicebridge phone: a browser softphone that speaks the ACS media protocol to the bridge.
//
// 1. the microphone (getUserMedia) first: a refusal costs the bridge nothing;
// 2. POST /phone/calls with the token (Authorization: Bearer) -> a one-time socket URL;
// 3. WebSocket to it, the token as a subprotocol ("vbtoken.<token>": browsers cannot set
//    headers on a WebSocket, and a query string would reach the logs); then AudioMetadata
//    and one AudioData per 20 ms frame, DtmfData for keypad keys; the bridge sends
//    AudioData (played through a jitter buffer), StopAudio (flushes it at once), and
//    phone.* messages of its own (transcripts, turn state, the outcome).
//
// The token comes from the URL fragment (#token=...), which browsers never send to a
// server; it is kept in sessionStorage and wiped from the address bar.
//
// window.voicebridgePhone = {call(), hangUp(), stats()} for tests and the curious.
'use strict';

(() => {
  const TOKEN_KEY = 'voicebridge.phone.token';
  const FRAME_MS = 20;
  const PREBUFFER_MS = 60;
  const MAX_BUFFERED_BYTES = 256 * 1024; // a stalled socket: drop mic frames, do not queue
  const KEYS = '0123456789*#ABCD';
  const OUTCOMES = {
    caller_hung_up: 'Call ended.',
    agent_hung_up: 'The agent ended the call.',
    no_input: 'The call ended: nothing was said for a while.',
    max_duration: 'The call reached its maximum length.',
    media_idle_timeout: 'The call ended: no audio reached the bridge for too long.',
    apology_hangup: 'Voice Live could not be reached: the agent apologised and the call ended.',
    drained: 'The bridge is shutting down: the call ended.',
    shutdown: 'The bridge stopped: the call ended.',
    transferred: 'The call was transferred.',
    rejected_busy: 'All lines are busy: try again in a moment.',
    rejected_draining: 'The bridge is shutting down: try again in a moment.',
    error: 'The bridge failed on this call (see its log).',
  };

  const $ = (id) => document.getElementById(id);
  const ui = {
    call: $('call'), hangup: $('hangup'), status: $('status'), turn: $('turn'),
    sent: $('sent'), heard: $('heard'), bargeins: $('bargeins'), latency: $('latency'),
    level: $('level-bar'), transcript: $('transcript'), keys: $('keys'), info: $('call-info'),
    tokenBox: $('token-box'), tokenInput: $('token-input'), tokenSave: $('token-save'),
  };

  let token = takeToken();
  let call = null; // the current call's resources
  const stats = freshStats();

  function freshStats() {
    return {
      state: 'idle', message: 'Ready.', outcome: null, closeCode: null,
      sentFrames: 0, framesDropped: 0, heardSeconds: 0, queuedSeconds: 0, underruns: 0,
      stopAudios: 0, bargeIns: 0, flushedSeconds: 0, keysSent: 0,
      transcript: [], turn: null, agentSpeaking: false, latenciesMs: [], badMessages: 0,
    };
  }

  function takeToken() {
    const match = /(?:^#|&)token=([^&]+)/.exec(location.hash);
    if (match) {
      const given = decodeURIComponent(match[1]);
      try { sessionStorage.setItem(TOKEN_KEY, given); } catch (_) { /* private mode */ }
      history.replaceState(null, '', location.pathname + location.search);
      return given;
    }
    try { return sessionStorage.getItem(TOKEN_KEY); } catch (_) { return null; }
  }

  // ------------------------------------------------------------------ the page

  function show(state, message) {
    stats.state = state;
    stats.message = message;
    ui.status.textContent = message;
    ui.status.dataset.state = state;
    const live = state === 'connecting' || state === 'in_call' || state === 'ending';
    ui.call.disabled = live || !token;
    ui.hangup.disabled = !live;
    document.body.dataset.state = state;
  }

  function render() {
    ui.sent.textContent = `${(stats.sentFrames * FRAME_MS / 1000).toFixed(1)} s`;
    ui.heard.textContent = `${stats.heardSeconds.toFixed(1)} s`;
    ui.bargeins.textContent = String(stats.bargeIns);
    const l = stats.latenciesMs;
    ui.latency.textContent = l.length ? `${Math.round(l[l.length - 1])} ms` : '—';
    ui.latency.title = l.map((ms) => `${Math.round(ms)} ms`).join(', ');
    // The bridge's turn state, except that agent audio still playing here is the agent
    // speaking (the service finishes a response faster than it is played).
    const shown = stats.agentSpeaking && ['listening', 'responding', 'thinking'].includes(stats.turn)
      ? 'agent_speaking' : stats.turn;
    ui.turn.textContent = TURNS[shown] || shown || '—';
    ui.turn.dataset.turn = shown || '';
  }

  function addTranscript(role, text) {
    stats.transcript.push({ role, text });
    const li = document.createElement('li');
    li.className = role;
    const who = document.createElement('span');
    who.className = 'who';
    who.textContent = role === 'user' ? 'You' : 'Agent';
    const said = document.createElement('span');
    said.className = 'said';
    said.textContent = text;
    li.append(who, said);
    ui.transcript.append(li);
    li.scrollIntoView({ block: 'nearest' });
  }

  const TURNS = {
    connecting: 'Connecting', ended: 'Ended', error: 'Ended', agent_speaking: 'Agent speaking',
    listening: 'Listening', caller_speaking: 'You are speaking', thinking: 'Agent thinking',
    responding: 'Agent answering', tool: 'Agent using a tool', keypad: 'Keypad',
    reprompt: 'Agent checking in', giving_up: 'Ending (no input)', reconnecting: 'Reconnecting to Voice Live',
  };

  function setTurn(state) {
    stats.turn = state;
    render();
  }

  // ------------------------------------------------------------------ calling

  async function placeCall() {
    if (call) return;
    if (!token) { show('error', 'No phone token: open the URL `voicebridge phone` printed (it ends in #token=...).'); return; }
    Object.assign(stats, freshStats());
    ui.transcript.replaceChildren();
    ui.keys.textContent = '';
    setTurn('connecting');
    render();
    call = { ws: null, ctx: null, stream: null, capture: null, player: null, opened: false,
      hangingUp: false, captureTimes: new Float64Array(3000), answerFrom: null };
    const c = call;
    show('connecting', 'Asking for the microphone…');
    try {
      c.stream = await navigator.mediaDevices.getUserMedia({
        audio: { channelCount: 1, echoCancellation: true, noiseSuppression: true, autoGainControl: true },
      });
    } catch (err) {
      const denied = err && (err.name === 'NotAllowedError' || err.name === 'SecurityError');
      return fail(denied
        ? 'The microphone is blocked: allow it for this page (address bar), then call again.'
        : `No microphone: ${err && err.name}: ${err && err.message}`, 'mic_denied');
    }
    if (call !== c) { c.stream.getTracks().forEach((t) => t.stop()); return; } // hung up meanwhile
    show('connecting', 'Calling the bridge…');
    let info;
    try {
      const res = await fetch('/phone/calls', {
        method: 'POST', cache: 'no-store', headers: { Authorization: `Bearer ${token}` },
      });
      if (!res.ok) return refused(res);
      info = await res.json();
    } catch (err) {
      return fail(`The bridge is not reachable (${err.message}): is voicebridge phone still running?`, 'unreachable');
    }
    if (call !== c) return;
    try {
      await startAudio(c, info);
    } catch (err) {
      return fail(`Audio could not start: ${err.name || ''} ${err.message}`, 'audio_failed');
    }
    if (call !== c) { finish(c, stats.state, stats.message); return; } // hung up meanwhile
    openSocket(c, info);
  }

  async function refused(res) {
    let error = '';
    try { error = (await res.json()).error || ''; } catch (_) { /* not JSON */ }
    if (res.status === 401) return fail('The bridge refused the phone token: open the URL `voicebridge phone` printed (with #token=...).', 'unauthorized');
    if (res.status === 404) return fail('The phone is not enabled on this bridge (PHONE_ENABLED=true).', 'disabled');
    if (res.status === 503) return fail(error === 'draining' ? OUTCOMES.rejected_draining : OUTCOMES.rejected_busy, `rejected_${error || 'busy'}`);
    return fail(`The bridge refused the call (HTTP ${res.status} ${error}).`, 'refused');
  }

  async function startAudio(c, info) {
    c.ctx = new AudioContext({ latencyHint: 'interactive' });
    await c.ctx.audioWorklet.addModule('/phone/static/worklets.js');
    await c.ctx.resume();
    const source = c.ctx.createMediaStreamSource(c.stream);
    c.capture = new AudioWorkletNode(c.ctx, 'vb-capture', {
      numberOfInputs: 1, numberOfOutputs: 1, outputChannelCount: [1],
      processorOptions: { outRate: info.sample_rate, frameSamples: info.sample_rate * FRAME_MS / 1000 },
    });
    const mute = c.ctx.createGain(); // keeps the capture node pulled, silently
    mute.gain.value = 0;
    source.connect(c.capture).connect(mute).connect(c.ctx.destination);
    c.capture.port.onmessage = (e) => onFrame(c, e.data);
    c.player = new AudioWorkletNode(c.ctx, 'vb-player', {
      numberOfInputs: 0, numberOfOutputs: 1, outputChannelCount: [1],
      processorOptions: { inRate: info.sample_rate, prebufferMs: PREBUFFER_MS },
    });
    c.player.connect(c.ctx.destination);
    c.player.port.onmessage = (e) => onPlayer(c, e.data);
  }

  function openSocket(c, info) {
    const url = new URL(info.socket, location.href);
    url.protocol = url.protocol === 'https:' ? 'wss:' : 'ws:';
    c.ws = new WebSocket(url, [info.subprotocol, `vbtoken.${token}`]);
    c.ws.onopen = () => {
      c.opened = true;
      c.ws.send(JSON.stringify({
        kind: 'AudioMetadata',
        audioMetadata: {
          subscriptionId: 'voicebridge-phone', encoding: 'PCM', sampleRate: info.sample_rate,
          channels: 1, length: info.sample_rate * FRAME_MS / 1000 * 2,
        },
      }));
      show('in_call', 'In call: speak, or press keys 0-9 * # for the keypad.');
    };
    c.ws.onmessage = (e) => onMessage(c, e.data);
    c.ws.onclose = (e) => onClose(c, e);
  }

  // ------------------------------------------------------------------ media

  function onFrame(c, msg) {
    if (msg.type !== 'frame') return;
    ui.level.style.width = `${Math.min(100, Math.round(Math.sqrt(msg.rms) * 160))}%`;
    const ws = c.ws;
    if (!ws || ws.readyState !== WebSocket.OPEN || stats.state !== 'in_call') return;
    if (ws.bufferedAmount > MAX_BUFFERED_BYTES) { stats.framesDropped++; return; }
    ws.send(`{"kind":"AudioData","audioData":{"timestamp":"${new Date().toISOString()}",`
      + `"participantRawID":"voicebridge-phone","data":"${toBase64(msg.pcm)}","silent":false}}`);
    c.captureTimes[stats.sentFrames % c.captureTimes.length] = performance.now();
    stats.sentFrames++;
    if (stats.sentFrames % 5 === 0) render();
  }

  function onMessage(c, text) {
    let msg;
    try { msg = JSON.parse(text); } catch (_) { stats.badMessages++; return; }
    const kind = String(msg.kind || msg.Kind || '');
    if (kind === 'AudioData') {
      const body = msg.AudioData || msg.audioData || {};
      const data = body.Data || body.data;
      if (typeof data !== 'string') { stats.badMessages++; return; }
      const pcm = fromBase64(data);
      c.player.port.postMessage({ type: 'audio', pcm }, [pcm]);
    } else if (kind === 'StopAudio') {
      stats.stopAudios++;
      c.player.port.postMessage({ type: 'flush' });
    } else if (kind === 'phone.transcript') {
      addTranscript(msg.role === 'user' ? 'user' : 'agent', String(msg.text || ''));
    } else if (kind === 'phone.turn') {
      setTurn(String(msg.state));
      if (msg.state === 'thinking') c.answerFrom = speechEnd(c, msg.audio_end_ms);
      if (msg.state === 'caller_speaking') c.answerFrom = null;
    } else if (kind === 'phone.call') {
      ui.info.textContent = `call ${msg.call} · Voice Live ${msg.voicelive} (${msg.mode} mode) · ${msg.sample_rate} Hz`;
    } else if (kind === 'phone.ended') {
      stats.outcome = String(msg.outcome);
    } else {
      stats.badMessages++;
    }
  }

  // When the caller stopped speaking, on this page's clock: the VAD's audio_end_ms is a
  // position in the audio this page sent (the session's input starts with its first frame).
  function speechEnd(c, audioEndMs) {
    const frame = Math.floor(Number(audioEndMs) / FRAME_MS);
    const ring = c.captureTimes.length;
    if (Number.isFinite(frame) && frame >= 0 && frame < stats.sentFrames && frame >= stats.sentFrames - ring) {
      return c.captureTimes[frame % ring];
    }
    return performance.now();
  }

  function onPlayer(c, msg) {
    if (msg.type === 'stats') {
      stats.heardSeconds = msg.heardSeconds;
      stats.queuedSeconds = msg.queuedSeconds;
      stats.underruns = msg.underruns;
      stats.agentSpeaking = msg.queuedSeconds > 0;
      render();
    } else if (msg.type === 'flushed') {
      if (msg.seconds > 0) { stats.bargeIns++; stats.flushedSeconds += msg.seconds; }
      stats.agentSpeaking = false;
      render();
    } else if (msg.type === 'playing') {
      stats.agentSpeaking = true;
      render();
    }
    if (msg.type === 'playing' && !msg.gap && c.answerFrom !== null) {
      const outputMs = 1000 * ((c.ctx && c.ctx.outputLatency) || 0);
      stats.latenciesMs.push(performance.now() - c.answerFrom + outputMs);
      c.answerFrom = null;
      render();
    }
  }

  function sendKey(key) {
    const c = call;
    if (!c || !c.ws || c.ws.readyState !== WebSocket.OPEN || stats.state !== 'in_call') return;
    c.ws.send(JSON.stringify({
      kind: 'DtmfData',
      dtmfData: { data: key, timestamp: new Date().toISOString(), participantRawID: 'voicebridge-phone' },
    }));
    stats.keysSent++;
    ui.keys.textContent = (ui.keys.textContent + key).slice(-24);
  }

  // ------------------------------------------------------------------ ending

  function hangUp() {
    const c = call;
    if (!c) return;
    c.hangingUp = true;
    if (c.player) c.player.port.postMessage({ type: 'flush' }); // silence at once
    if (c.ws && c.ws.readyState === WebSocket.OPEN) {
      c.ws.send('{"kind":"phone.hangup"}');
      c.ws.close(1000, 'hang-up');
      show('ending', 'Hanging up…');
    } else {
      if (c.ws) c.ws.close();
      finish(c, 'ended', 'Call cancelled.');
    }
  }

  function onClose(c, e) {
    stats.closeCode = e.code;
    let state = 'ended';
    let message;
    if (c.hangingUp) {
      message = 'Call ended.';
    } else if (stats.outcome) {
      message = OUTCOMES[stats.outcome] || `The call ended (${stats.outcome}).`;
    } else if (!c.opened) {
      state = 'error';
      message = 'The bridge refused the call\'s connection (the token, or the one-time URL): call again.';
    } else {
      state = 'error';
      message = `The connection to the bridge was lost (${e.code}${e.reason ? ` ${e.reason}` : ''}): the call has ended.`;
    }
    finish(c, state, message, true);
  }

  function fail(message, outcome) {
    stats.outcome = outcome;
    if (call) finish(call, 'error', message); else show('error', message);
  }

  // Stop the microphone now; let what the agent said play out (up to 3 s), then close.
  function finish(c, state, message, drain = false) {
    if (call === c) call = null;
    if (c.stream) c.stream.getTracks().forEach((t) => t.stop());
    if (c.capture) { c.capture.port.postMessage({ type: 'stop' }); c.capture.disconnect(); }
    ui.level.style.width = '0%';
    setTurn(state === 'error' ? 'error' : 'ended');
    show(state, message);
    const deadline = performance.now() + (drain ? 3000 : 0);
    const close = () => {
      if (c.player && stats.queuedSeconds > 0 && performance.now() < deadline) {
        setTimeout(close, 100);
        return;
      }
      if (c.player) c.player.port.postMessage({ type: 'stop' });
      if (c.ctx) c.ctx.close().catch(() => {});
      stats.agentSpeaking = false;
      render();
    };
    close();
  }

  // ------------------------------------------------------------------ helpers

  function toBase64(buffer) {
    const bytes = new Uint8Array(buffer);
    let s = '';
    for (let i = 0; i < bytes.length; i += 0x8000) s += String.fromCharCode.apply(null, bytes.subarray(i, i + 0x8000));
    return btoa(s);
  }

  function fromBase64(text) {
    const s = atob(text);
    const bytes = new Uint8Array(s.length & ~1);
    for (let i = 0; i < bytes.length; i++) bytes[i] = s.charCodeAt(i);
    return bytes.buffer;
  }

  // ------------------------------------------------------------------ wiring

  ui.call.addEventListener('click', () => { placeCall(); });
  ui.hangup.addEventListener('click', hangUp);
  document.querySelectorAll('#keypad button').forEach((b) => {
    b.addEventListener('click', () => sendKey(b.dataset.key));
  });
  document.addEventListener('keydown', (e) => {
    if (e.target instanceof HTMLInputElement || e.ctrlKey || e.metaKey || e.altKey) return;
    const key = e.key.length === 1 ? e.key.toUpperCase() : '';
    if (key && KEYS.includes(key) && !/[A-D]/.test(e.key)) { sendKey(key); e.preventDefault(); }
  });
  window.addEventListener('pagehide', () => { // the tab closes: hang up, do not just vanish
    const c = call;
    if (c && c.ws && c.ws.readyState === WebSocket.OPEN) {
      c.ws.send('{"kind":"phone.hangup"}');
      c.ws.close(1000, 'page closed');
    }
  });
  ui.tokenSave.addEventListener('click', () => {
    token = ui.tokenInput.value.trim() || null;
    try { if (token) sessionStorage.setItem(TOKEN_KEY, token); } catch (_) { /* private mode */ }
    ui.tokenBox.hidden = !!token;
    show('idle', token ? 'Ready.' : 'Enter the phone token.');
  });

  ui.tokenBox.hidden = !!token;
  show('idle', token ? 'Ready: press Call, then speak.' : 'Enter the phone token `voicebridge phone` printed.');
  render();

  window.voicebridgePhone = {
    call: placeCall,
    hangUp,
    stats: () => ({
      ...stats,
      sentSeconds: stats.sentFrames * FRAME_MS / 1000,
      transcript: stats.transcript.map((t) => ({ ...t })),
      latenciesMs: [...stats.latenciesMs],
    }),
  };
})();
