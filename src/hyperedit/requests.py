"""Edit requests: what to change in the model, and how to check it.

An ``EditRequest`` is frozen and validated on construction, so every editor and metric
can rely on its invariants (non-empty prompt and target, subject inside the prompt).
"""
from __future__ import annotations

from dataclasses import dataclass, field


def check_text(name: str, value: str) -> None:
    """Raise ValueError naming ``name`` when ``value`` is not valid Unicode text: a lone UTF-16
    surrogate (JSON allows ``"\\ud800"``) cannot be encoded, so no tokenizer can read it."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise ValueError(f"{name} is not valid Unicode text (a lone surrogate at character {exc.start})") from None


@dataclass(frozen=True)
class LocalityPrompt:
    """An unrelated prompt whose answer must not change.

    ``answer`` is the dataset's answer when there is one; locality is always also measured
    against the unedited model's own predictions.
    """

    prompt: str
    answer: str | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.prompt, str) or not self.prompt.strip():
            raise ValueError("locality prompt must be a non-empty string")
        if self.answer is not None and (not isinstance(self.answer, str) or not self.answer.strip()):
            raise ValueError("locality answer must be a non-empty string when given")
        check_text("locality prompt", self.prompt)
        if self.answer is not None:
            check_text("locality answer", self.answer)


@dataclass(frozen=True)
class EditRequest:
    """One fact to write: ``prompt`` should be completed by ``target``.

    ``subject`` (optional) must occur in ``prompt``; locate-then-edit methods read its last token.
    ``old_target`` is the fact being replaced, used by probability-based scores when known.
    """

    prompt: str
    target: str
    subject: str | None = None
    rephrasings: tuple[str, ...] = ()
    locality: tuple[LocalityPrompt, ...] = ()
    old_target: str | None = None
    id: str | None = None
    meta: dict = field(default_factory=dict, compare=False, hash=False)

    def __post_init__(self) -> None:
        if not isinstance(self.prompt, str) or not self.prompt.strip():
            raise ValueError("prompt must be a non-empty string")
        if not isinstance(self.target, str) or not self.target.strip():
            raise ValueError("target must be a non-empty string")
        if self.subject is not None:
            if not isinstance(self.subject, str) or not self.subject.strip():
                raise ValueError("subject must be a non-empty string when given")
            if self.subject not in self.prompt:
                raise ValueError(f"subject {self.subject!r} does not occur in prompt {self.prompt!r}")
        # Accept lists from callers but store tuples so the request stays hashable and frozen.
        object.__setattr__(self, "rephrasings", tuple(self.rephrasings))
        object.__setattr__(self, "locality", tuple(self.locality))
        for text in self.rephrasings:
            if not isinstance(text, str) or not text.strip():
                raise ValueError("rephrasings must be non-empty strings")
        for loc in self.locality:
            if not isinstance(loc, LocalityPrompt):
                raise ValueError("locality entries must be LocalityPrompt objects")
        if self.old_target is not None and (not isinstance(self.old_target, str) or not self.old_target.strip()):
            raise ValueError("old_target must be a non-empty string when given")
        if self.old_target is not None and self.old_target.strip() == self.target.strip():
            raise ValueError("target equals old_target: nothing to edit")
        for name in ("prompt", "target", "subject", "old_target"):
            if getattr(self, name) is not None:
                check_text(name, getattr(self, name))
        for i, text in enumerate(self.rephrasings):
            check_text(f"rephrasings[{i}]", text)
