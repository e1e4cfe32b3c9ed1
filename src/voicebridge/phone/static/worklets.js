// voicebridge phone: the two AudioWorklet processors (audioWorklet.addModule loads this).
//
// vb-capture: the microphone at the AudioContext's rate -> the bridge's ACS rate (16 kHz
//   by default), as PCM16 in frames of exactly 20 ms (320 samples at 16 kHz), posted to
//   the page, which sends each as one ACS AudioData message. Silence is sent too: the
//   bridge forwards silent frames, Voice Live's VAD needs them.
// vb-player: agent audio (PCM16 at the ACS rate) -> the context's rate, through a jitter
//   buffer: playback starts once PREBUFFER ms are queued (or the first audio has waited
//   that long), runs gap-free while audio keeps coming, and "flush" (StopAudio: the
//   caller barged in) empties it at once.
//
// Both resample with the same streaming windowed-sinc interpolator: a Blackman-windowed
// sinc low-pass at 0.46 x the lower rate, evaluated at each output instant from a table
// of 256 fractional phases (linear between two). Flat to ~7 kHz at 16 kHz, alias
// rejection ~70 dB, ~1 ms of delay each way; any pair of rates (44.1 kHz contexts too).
'use strict';

class SincResampler {
  constructor(inRate, outRate, zeroCrossings = 16) {
    this.step = inRate / outRate; // input samples per output sample
    const scale = Math.min(1, outRate / inRate);
    const cutoff = 0.46 * scale; // cycles per input sample (0.5 = Nyquist)
    this.half = Math.ceil(zeroCrossings / scale); // taps on each side, input samples
    this.taps = 2 * this.half;
    this.phases = 256;
    const taps = this.taps;
    this.table = new Float32Array((this.phases + 1) * taps);
    for (let p = 0; p <= this.phases; p++) {
      const frac = p / this.phases;
      let sum = 0;
      for (let k = 0; k < taps; k++) {
        const t = k - this.half + 1 - frac; // tap's distance from the output instant
        const x = 2 * cutoff * t;
        const sinc = x === 0 ? 1 : Math.sin(Math.PI * x) / (Math.PI * x);
        const w = Math.abs(t) >= this.half ? 0
          : 0.42 + 0.5 * Math.cos(Math.PI * t / this.half) + 0.08 * Math.cos(2 * Math.PI * t / this.half);
        const v = sinc * w;
        this.table[p * taps + k] = v;
        sum += v;
      }
      for (let k = 0; k < taps; k++) this.table[p * taps + k] /= sum; // unity gain at DC
    }
    this.buf = new Float32Array(8192);
    this.reset();
  }

  reset() {
    this.buf.fill(0);
    this.len = this.half - 1; // zeros before the first sample, so output starts at input 0
    this.pos = this.half - 1; // where the next output sample falls, in buf
  }

  // Feed input samples; returns the output samples they complete.
  process(input) {
    if (this.len + input.length > this.buf.length) {
      const bigger = new Float32Array(2 * (this.len + input.length));
      bigger.set(this.buf.subarray(0, this.len));
      this.buf = bigger;
    }
    this.buf.set(input, this.len);
    this.len += input.length;
    const { buf, table, taps, half, phases, step } = this;
    const n = Math.max(0, Math.ceil((this.len - half - this.pos) / step) + 1);
    const out = new Float32Array(n);
    let count = 0;
    let pos = this.pos;
    while (pos + half < this.len) {
      const i0 = Math.floor(pos);
      const pf = (pos - i0) * phases;
      const p = Math.floor(pf);
      const a = pf - p;
      const r0 = p * taps;
      const r1 = r0 + taps;
      const base = i0 - half + 1;
      let acc = 0;
      for (let k = 0; k < taps; k++) {
        const h0 = table[r0 + k];
        acc += buf[base + k] * (h0 + a * (table[r1 + k] - h0));
      }
      out[count++] = acc;
      pos += step;
    }
    const drop = Math.floor(pos) - half + 1; // input no longer needed
    if (drop > 0) {
      buf.copyWithin(0, drop, this.len);
      this.len -= drop;
      pos -= drop;
    }
    this.pos = pos;
    return count === n ? out : out.subarray(0, count);
  }
}

class CaptureProcessor extends AudioWorkletProcessor {
  constructor(options) {
    super();
    const { outRate, frameSamples } = options.processorOptions;
    this.resampler = new SincResampler(sampleRate, outRate);
    this.frameSamples = frameSamples;
    this.frame = new Int16Array(frameSamples);
    this.filled = 0;
    this.energy = 0;
    this.running = true;
    this.silence = new Float32Array(128);
    this.port.onmessage = (e) => {
      if (e.data && e.data.type === 'stop') this.running = false;
    };
  }

  process(inputs) {
    const channels = inputs[0] || [];
    let mono = channels[0] || this.silence;
    if (channels.length > 1) { // mix down
      mono = new Float32Array(channels[0].length);
      for (const ch of channels) for (let i = 0; i < ch.length; i++) mono[i] += ch[i] / channels.length;
    }
    const out = this.resampler.process(mono);
    for (let i = 0; i < out.length; i++) {
      const s = Math.max(-1, Math.min(1, out[i]));
      this.frame[this.filled++] = s < 0 ? s * 32768 : s * 32767;
      this.energy += s * s;
      if (this.filled === this.frameSamples) {
        const rms = Math.sqrt(this.energy / this.frameSamples);
        this.port.postMessage({ type: 'frame', pcm: this.frame.buffer, rms }, [this.frame.buffer]);
        this.frame = new Int16Array(this.frameSamples);
        this.filled = 0;
        this.energy = 0;
      }
    }
    return this.running;
  }
}

class PlayerProcessor extends AudioWorkletProcessor {
  constructor(options) {
    super();
    const { inRate, prebufferMs } = options.processorOptions;
    this.inRate = inRate;
    this.resampler = new SincResampler(inRate, sampleRate);
    this.ring = new Float32Array(sampleRate * 60); // at most a minute queued
    this.head = 0; // next sample to play
    this.queued = 0;
    this.prebuffer = Math.round(sampleRate * prebufferMs / 1000);
    this.maxWait = Math.ceil(this.prebuffer / 128); // render quanta the first audio may wait
    this.waited = 0;
    this.playing = false;
    this.played = 0; // output samples of agent audio played (heard)
    // A gap: playback ran dry and audio came again within GAP_S (late audio, not the end
    // of an answer). The prebuffer wait is part of the gap.
    this.underruns = 0;
    this.gapQuanta = Math.ceil(0.3 * sampleRate / 128);
    this.dryAt = -Infinity;
    this.overflow = 0;
    this.quanta = 0;
    this.running = true;
    this.port.onmessage = (e) => this.onMessage(e.data);
  }

  onMessage(msg) {
    if (msg.type === 'audio') {
      const pcm = new Int16Array(msg.pcm);
      const f = new Float32Array(pcm.length);
      for (let i = 0; i < pcm.length; i++) f[i] = pcm[i] / 32768;
      this.enqueue(this.resampler.process(f));
    } else if (msg.type === 'flush') {
      const flushed = this.queued;
      this.queued = 0;
      this.playing = false;
      this.waited = 0;
      this.dryAt = -Infinity; // what comes after a flush is a new answer, not a gap
      this.resampler.reset();
      this.port.postMessage({ type: 'flushed', seconds: flushed / sampleRate });
    } else if (msg.type === 'stop') {
      this.running = false;
    }
  }

  enqueue(samples) {
    const size = this.ring.length;
    let n = samples.length;
    if (this.queued + n > size) { // never expected: the bridge paces ~160 ms ahead
      this.overflow += this.queued + n - size;
      n = size - this.queued;
    }
    let tail = (this.head + this.queued) % size;
    for (let i = 0; i < n; i++) {
      this.ring[tail] = samples[i];
      tail = tail + 1 === size ? 0 : tail + 1;
    }
    this.queued += n;
  }

  process(_inputs, outputs) {
    const out = outputs[0][0];
    const size = this.ring.length;
    if (!this.playing && this.queued > 0) {
      this.waited++;
      if (this.queued >= this.prebuffer || this.waited >= this.maxWait) {
        this.playing = true;
        const gap = this.quanta - this.dryAt < this.gapQuanta;
        if (gap) this.underruns++;
        this.port.postMessage({ type: 'playing', gap, queued: this.queued / sampleRate });
      }
    }
    if (this.playing) {
      const n = Math.min(out.length, this.queued);
      for (let i = 0; i < n; i++) {
        out[i] = this.ring[this.head];
        this.head = this.head + 1 === size ? 0 : this.head + 1;
      }
      this.queued -= n;
      this.played += n;
      if (this.queued === 0) { // ran dry: the answer ended, or audio came late
        this.playing = false;
        this.waited = 0;
        this.dryAt = this.quanta;
      }
    }
    for (let c = 1; c < outputs[0].length; c++) outputs[0][c].set(out);
    if (++this.quanta % 16 === 0 || !this.running) this.report();
    return this.running;
  }

  report() {
    this.port.postMessage({
      type: 'stats',
      heardSeconds: this.played / sampleRate,
      queuedSeconds: this.queued / sampleRate,
      underruns: this.underruns,
      overflowSeconds: this.overflow / sampleRate,
    });
  }
}

registerProcessor('vb-capture', CaptureProcessor);
registerProcessor('vb-player', PlayerProcessor);
