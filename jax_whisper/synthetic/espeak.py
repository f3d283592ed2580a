"""eSpeak NG, the speech synthesiser of the synthetic corpus: the library shipped in the ``espeakng_loader`` wheel,
driven through ctypes in synchronous mode; :meth:`ESpeak.synthesize` returns float32 audio at 16 kHz. Which voices
speak what is :mod:`jax_whisper.synthetic.corpus`'s business.
"""

from __future__ import annotations

import ctypes
import threading
from pathlib import Path

import numpy as np

SAMPLE_RATE = 16000  # what synthesize() returns



_AUDIO_OUTPUT_SYNCHRONOUS = 2
_POS_CHARACTER = 1
_CHARS_UTF8 = 1
_RATE, _PITCH = 1, 3  # espeak_PARAMETER
_EE_OK = 0

_SYNTH_CALLBACK = ctypes.CFUNCTYPE(
    ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int, ctypes.c_void_p
)


class _EspeakVoice(ctypes.Structure):
    _fields_ = [
        ("name", ctypes.c_char_p),
        ("languages", ctypes.c_char_p),
        ("identifier", ctypes.c_char_p),
        ("gender", ctypes.c_ubyte),
        ("age", ctypes.c_ubyte),
        ("variant", ctypes.c_ubyte),
        ("xx1", ctypes.c_ubyte),
        ("score", ctypes.c_int),
        ("spare", ctypes.c_void_p),
    ]


class ESpeak:
    """eSpeak NG from the ``espeakng_loader`` wheel, synchronous mode.

    The C library keeps global state (one voice, one callback), so this is a per-process singleton:
    ``ESpeak()`` always returns the same initialised object, and calls are serialised with a lock.
    """

    _instance: ESpeak | None = None
    _create_lock = threading.Lock()

    def __new__(cls) -> ESpeak:
        with cls._create_lock:
            if cls._instance is None:
                self = super().__new__(cls)
                self._initialise()
                cls._instance = self
            return cls._instance

    def _initialise(self) -> None:
        import espeakng_loader

        self.data_path = espeakng_loader.get_data_path()
        lib = ctypes.CDLL(espeakng_loader.get_library_path())
        lib.espeak_Initialize.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_char_p, ctypes.c_int]
        lib.espeak_Initialize.restype = ctypes.c_int
        lib.espeak_SetSynthCallback.argtypes = [_SYNTH_CALLBACK]
        lib.espeak_SetSynthCallback.restype = None
        lib.espeak_SetVoiceByName.argtypes = [ctypes.c_char_p]
        lib.espeak_SetVoiceByName.restype = ctypes.c_int
        lib.espeak_SetParameter.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int]
        lib.espeak_SetParameter.restype = ctypes.c_int
        lib.espeak_Synth.argtypes = [
            ctypes.c_char_p,
            ctypes.c_size_t,
            ctypes.c_uint,
            ctypes.c_int,
            ctypes.c_uint,
            ctypes.c_uint,
            ctypes.c_void_p,
            ctypes.c_void_p,
        ]
        lib.espeak_Synth.restype = ctypes.c_int
        lib.espeak_ListVoices.argtypes = [ctypes.c_void_p]
        lib.espeak_ListVoices.restype = ctypes.POINTER(ctypes.POINTER(_EspeakVoice))
        rate = lib.espeak_Initialize(_AUDIO_OUTPUT_SYNCHRONOUS, 0, self.data_path.encode(), 0)
        if rate <= 0:
            raise RuntimeError(f"espeak_Initialize failed ({rate}) with data at {self.data_path}")
        self.lib = lib
        self.native_rate = rate
        self._chunks: list[np.ndarray] = []
        self._lock = threading.Lock()
        self._voice: str | None = None
        # keep a reference: ctypes would free the trampoline and eSpeak would call into garbage
        self._callback = _SYNTH_CALLBACK(self._on_samples)
        lib.espeak_SetSynthCallback(self._callback)

    def _on_samples(self, wav, n, events) -> int:
        if n > 0 and wav:
            self._chunks.append(np.ctypeslib.as_array(wav, shape=(n,)).copy())
        return 0  # 0 = keep synthesising

    def list_voices(self, language: str = "en") -> list[str]:
        """Voice identifiers (e.g. ``gmw/en-US``) whose language starts with ``language``."""
        voices = self.lib.espeak_ListVoices(None)
        out, i = [], 0
        while voices[i]:
            v = voices[i].contents
            # languages is a list of (priority byte, name, NUL); the first name is the main one
            lang = v.languages[1:].decode(errors="replace") if v.languages else ""
            if lang.startswith(language):
                out.append(v.identifier.decode())
            i += 1
        return sorted(out)

    def list_variants(self) -> list[str]:
        """Variant names usable after ``+`` in a voice name (``en-us+f3``)."""
        return sorted(p.name for p in (Path(self.data_path) / "voices" / "!v").iterdir() if p.is_file())

    def synthesize_native(
        self, text: str, voice: str = "en-us", rate: int = 175, pitch: int = 50
    ) -> np.ndarray:
        """int16 samples at ``native_rate`` (22050 Hz). ``rate`` is words per minute, ``pitch`` 0..100."""
        if not 80 <= rate <= 450:
            raise ValueError(f"rate {rate} outside eSpeak's 80..450 words per minute")
        if not 0 <= pitch <= 100:
            raise ValueError(f"pitch {pitch} outside 0..100")
        data = text.encode("utf-8")
        with self._lock:
            if voice != self._voice:
                err = self.lib.espeak_SetVoiceByName(voice.encode())
                if err != _EE_OK:
                    self._voice = None
                    raise ValueError(f"eSpeak voice not found: {voice!r} (error {err})")
                self._voice = voice
            self.lib.espeak_SetParameter(_RATE, int(rate), 0)
            self.lib.espeak_SetParameter(_PITCH, int(pitch), 0)
            self._chunks = []
            err = self.lib.espeak_Synth(data, len(data) + 1, 0, _POS_CHARACTER, 0, _CHARS_UTF8, None, None)
            if err != _EE_OK:
                raise RuntimeError(f"espeak_Synth failed with error {err}")
            chunks, self._chunks = self._chunks, []
        return np.concatenate(chunks) if chunks else np.zeros(0, np.int16)

    def synthesize(self, text: str, voice: str = "en-us", rate: int = 175, pitch: int = 50) -> np.ndarray:
        """float32 mono audio at 16 kHz."""
        import soxr

        pcm = self.synthesize_native(text, voice, rate, pitch).astype(np.float32) / 32768.0
        if pcm.size == 0:
            return pcm
        return soxr.resample(pcm, self.native_rate, SAMPLE_RATE, quality="HQ").astype(np.float32)
