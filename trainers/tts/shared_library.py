"""Loading the engines' C libraries with ctypes, with errors that name the package to install.

espeak-ng and flite are driven through their shared libraries rather than their command-line tools, because
only the libraries say where words are in the audio. The libraries come with the Debian packages
(`libespeak-ng1` and `libflite1` are dependencies of `espeak-ng` and `flite`).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os

from .backend import EngineNotFoundError


def _find_library(name: str, explicit: str | None, install_hint: str) -> str:
    """A loadable path or soname for shared library `name` (e.g. "espeak-ng"), or a clear error."""
    if explicit is not None:
        if not os.path.exists(explicit):
            raise EngineNotFoundError(f"{explicit} does not exist: {install_hint}.")
        return explicit
    found = ctypes.util.find_library(name)
    if found is None:
        raise EngineNotFoundError(f"The lib{name} shared library is not installed: {install_hint}.")
    return found


def _declare(function, argtypes: list, restype=None) -> None:
    function.argtypes, function.restype = argtypes, restype


class _DlInfo(ctypes.Structure):
    _fields_ = [
        ("fname", ctypes.c_char_p),
        ("fbase", ctypes.c_void_p),
        ("sname", ctypes.c_char_p),
        ("saddr", ctypes.c_void_p),
    ]


def _library_file(function) -> str:
    """The real file a loaded function comes from (libflite.so.1 -> .../libflite.so.2.2): the version of an
    engine that has no version call, for cache keys."""
    info = _DlInfo()
    ctypes.CDLL(None).dladdr(ctypes.cast(function, ctypes.c_void_p), ctypes.byref(info))
    return os.path.realpath(info.fname.decode()) if info.fname else "unknown"


def _load_library(path: str, install_hint: str) -> ctypes.CDLL:
    try:
        return ctypes.CDLL(path)
    except OSError as error:
        raise EngineNotFoundError(f"Cannot load {path} ({error}): {install_hint}.") from error
