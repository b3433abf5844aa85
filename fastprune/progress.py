"""Progress bars for long work: tqdm when it is installed, a plain loop otherwise.

tqdm is an optional dependency (``pip install "fastprune[progress]"`` or just
``pip install tqdm``); nothing in fastprune needs it to run.
"""
from __future__ import annotations

import sys
from typing import Iterable, Optional

__all__ = ["progress_bar", "show_progress"]


def show_progress(progress: Optional[bool]) -> bool:
    """``progress`` if given, else True when stderr is a terminal."""
    if progress is None:
        return bool(getattr(sys.stderr, "isatty", lambda: False)())
    return bool(progress)


class _Silent:
    """What the code using a bar needs of it, doing nothing (tqdm absent or disabled)."""

    def __init__(self, iterable: Optional[Iterable]) -> None:
        self._iterable = iterable

    def __iter__(self):
        return iter(self._iterable if self._iterable is not None else ())

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> bool:
        return False

    def update(self, n: int = 1) -> None:
        pass

    def set_postfix(self, *args, **kwargs) -> None:
        pass

    def set_postfix_str(self, *args, **kwargs) -> None:
        pass

    def set_description(self, *args, **kwargs) -> None:
        pass

    def write(self, text: str) -> None:
        print(text, file=sys.stderr)

    def close(self) -> None:
        pass


def progress_bar(iterable: Optional[Iterable] = None, *, enabled: bool = True, **kwargs):
    """A ``tqdm`` bar over ``iterable`` (kwargs go to tqdm), or a silent stand-in.

    Args:
        iterable: what to iterate over (may be ``None`` with ``total=`` and
            manual ``update()`` calls).
        enabled: False gives the silent stand-in even when tqdm is installed.
        **kwargs: passed to ``tqdm.auto.tqdm`` (``desc``, ``total``, ``unit``...).

    Returns:
        an object with tqdm's ``__iter__``, ``update``, ``set_postfix``,
        ``write`` and ``close``, and usable as a context manager.
    """
    if enabled:
        try:
            from tqdm.auto import tqdm
        except ImportError:
            pass
        else:
            return tqdm(iterable, **kwargs)
    return _Silent(iterable)
