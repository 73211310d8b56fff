"""The batch's messages in the words of the face in use (``core.common.vocabulary``): ``overwrite=True`` from
Python, ``--overwrite`` on the command line. The core is imported when a message is made, not with the batch
(importing it imports torch).

:func:`.api.process` speaks the vocabulary it is given (the preprocessor's ``vocabulary=``) or the current one,
and hands it to its workers with the preprocessor's arguments; a worker speaks it around each clip
(:func:`.clips.run_job`), and a clip's threads inherit it (:mod:`.pipeline`)."""

from __future__ import annotations

from contextlib import AbstractContextManager
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ..core.common.vocabulary import Vocabulary


def words(*sentences: str, **values: object) -> str:
    """``core.common.vocabulary.words``: ``sentences`` with their ``{option}`` references in the current face's
    words (no user text in ``sentences``: a path's braces would read as references)."""
    from ..core.common.vocabulary import words as render

    return render(*sentences, **values)


def option_name(key: str) -> str:
    """Option ``key``'s name in the current face's words (``-o``, ``output``)."""
    from ..core.common.vocabulary import option_name as name

    return name(key)


def setting(key: str, value: object) -> str:
    """Option ``key`` set to ``value`` in the current face's words (``--overwrite``, ``overwrite=True``)."""
    from ..core.common.vocabulary import setting as written

    return written(key, value)


def placeholder(text: str) -> str:
    """``text`` as a value the user fills in, written as it is: ``--manifest FILE``, ``manifest=FILE``."""
    from ..core.common.vocabulary import Placeholder

    return Placeholder(text)


def speaking(vocabulary: Vocabulary | None) -> AbstractContextManager[Vocabulary]:
    """``core.common.vocabulary.speaking``: messages made inside the block speak ``vocabulary`` (``None``: the
    current one, which the block yields)."""
    from ..core.common.vocabulary import speaking as speak

    return speak(vocabulary)
