"""The story's shape and the words sent to the model: pure functions of the stored story.

The arc. A story opens with an EXPOSITION beat; then the narrator cycles RISING_ACTION, DIALOGUE,
CHOICE, and waits for the player's answer (Continue). Each answer is a beat of its own (the
narrator's reaction, carrying the choice), after which the cycle resumes. Once the player has
answered ``CHOICES_BEFORE_CLIMAX`` times (or the story nears ``MAX_BEATS``), the next beat is the
CLIMAX, and the one after it the RESOLUTION, which ends the story. So a story always ends, and a
stored story stays far below the store's 1 MiB value limit (``MAX_BEATS`` beats of at most
``MAX_BEAT_CHARS`` characters and ``MAX_CHOICES`` short choices).

The prompt. The system prompt names the tone, the language and what this beat must do; the
prompt holds the premise, the last ``RECENT_BEATS`` beats (with the player's choices between
them) and, for Continue, the choice being answered. The seed is derived from the story id and the
beat's index: the built-in model then tells the same story again for the same id, while two
stories never share their randomness.

Choices. A CHOICE beat asks the model to end with options on lines of their own (``- ...`` or
``1. ...``); when it does (as instruction-following models do), those lines become the beat's
suggested choices. When it does not (the built-in model continues text, it follows no
instructions), the tone's stock choices are suggested instead.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Sequence

from gaming.ai_integration.v1 import ai_integration_pb2 as ai
from gaming.story_teller.v1 import story_teller_pb2 as st

CHOICES_BEFORE_CLIMAX = 3
MAX_BEATS = 60
MAX_BEAT_CHARS = 1000
MAX_CHOICES = 6
MAX_CHOICE_CHARS = 200
RECENT_BEATS = 4
DEFAULT_TONE = st.TONE_HEROIC
DEFAULT_LOCALE = "en-US"

TONES: dict[st.Tone.ValueType, str] = {
    st.TONE_HEROIC: "heroic (bold, adventurous, triumphant)",
    st.TONE_DARK: "dark (grim and tense, with real stakes and loss)",
    st.TONE_HUMOROUS: "humorous (light-hearted and funny)",
    st.TONE_MYSTERIOUS: "mysterious (puzzling and suspenseful, revealing little at a time)",
    st.TONE_WHIMSICAL: "whimsical (fairy-tale like)",
}

STOCK_CHOICES: dict[st.Tone.ValueType, tuple[str, ...]] = {
    st.TONE_HEROIC: ("Charge into the danger", "Rally your companions", "Look for another way"),
    st.TONE_DARK: ("Strike first", "Hide and wait", "Make a grim bargain"),
    st.TONE_HUMOROUS: ("Try something ridiculous", "Bluff your way through", "Run away, loudly"),
    st.TONE_MYSTERIOUS: ("Follow the strange clue", "Question the stranger", "Search for what is hidden"),
    st.TONE_WHIMSICAL: ("Follow the talking fox", "Make a wish", "Dance with the moonlight"),
}

INSTRUCTIONS: dict[st.BeatKind.ValueType, str] = {
    st.BEAT_KIND_EXPOSITION: "Open the story: set the scene, the characters and the situation.",
    st.BEAT_KIND_RISING_ACTION: "Build tension: add a complication or raise the stakes.",
    st.BEAT_KIND_DIALOGUE: "Write spoken lines of one of the characters, in quotes.",
    st.BEAT_KIND_CHOICE: (
        "Bring the player to a decision, then list two to four options, one per line, each starting with '- '."
    ),
    st.BEAT_KIND_CLIMAX: "Write the turning point of the story, where everything is decided.",
    st.BEAT_KIND_RESOLUTION: "Wrap the story up: its consequences, and a closing image.",
}

_OPTION = re.compile(r"^\s*(?:[-*\u2022]|\d{1,2}[.)])\s+(\S.*?)\s*$")


def next_kind(beats: Sequence[st.Beat], *, answering: bool) -> st.BeatKind.ValueType:
    """The kind of the beat that follows ``beats``; ``answering`` when it answers a player's
    choice (Continue), which counts towards the climax."""
    if not beats:
        return st.BEAT_KIND_EXPOSITION
    last = beats[-1].kind
    if last == st.BEAT_KIND_CLIMAX:
        return st.BEAT_KIND_RESOLUTION
    answered = sum(1 for beat in beats if beat.player_choice) + (1 if answering else 0)
    if answered >= CHOICES_BEFORE_CLIMAX or len(beats) >= MAX_BEATS - 2:
        return st.BEAT_KIND_CLIMAX
    if last in (st.BEAT_KIND_EXPOSITION, st.BEAT_KIND_CHOICE):
        return st.BEAT_KIND_RISING_ACTION
    if last == st.BEAT_KIND_RISING_ACTION:
        return st.BEAT_KIND_DIALOGUE
    return st.BEAT_KIND_CHOICE


def beat_seed(story_id: str, index: int) -> int:
    """The model's seed for beat ``index`` of ``story_id`` (a signed 64-bit number)."""
    digest = hashlib.sha256(f"{story_id}\x00{index}".encode()).digest()
    return int.from_bytes(digest[:8], "big", signed=True)


def kind_label(kind: st.BeatKind.ValueType) -> str:
    """``BEAT_KIND_RISING_ACTION`` -> ``rising action``."""
    return st.BeatKind.Name(kind).removeprefix("BEAT_KIND_").replace("_", " ").lower()


def generation(
    story: st.Story, kind: st.BeatKind.ValueType, *, model: str, max_tokens: int, choice: str = ""
) -> ai.GenerateRequest:
    """The request that asks ``model`` for the next beat (of ``kind``) of ``story``."""
    system = (
        f"You are the narrator of an interactive story for one player. The tone is {TONES[story.tone]}. "
        f"Write in the language of the locale {story.locale.tag}. {INSTRUCTIONS[kind]} "
        "Write at most four sentences."
    )
    lines = [f"Premise: {story.premise}"]
    recent = story.beats[-RECENT_BEATS:]
    if recent:
        lines.append("Story so far:")
        for beat in recent:
            if beat.player_choice:
                lines.append(f"Player: {beat.player_choice}")
            lines.append(beat.text)
    if choice:
        lines.append(f"Player: {choice}")
    lines.append(f"Next beat ({kind_label(kind)}):")
    return ai.GenerateRequest(
        model=model,
        prompt="\n".join(lines),
        system_prompt=system,
        max_tokens=max_tokens,
        seed=beat_seed(story.story_id, len(story.beats)),
    )


def beat_text_and_choices(
    text: str, kind: st.BeatKind.ValueType, tone: st.Tone.ValueType
) -> tuple[str, list[str]]:
    """The beat's text and suggested choices from the model's output (see the module docstring)."""
    choices: list[str] = []
    if kind == st.BEAT_KIND_CHOICE:
        kept = []
        for line in text.splitlines():
            option = _OPTION.match(line)
            if option:
                choices.append(option.group(1)[:MAX_CHOICE_CHARS])
            else:
                kept.append(line)
        if len(choices) >= 2:
            text = "\n".join(kept)
            choices = choices[:MAX_CHOICES]
        else:
            choices = list(STOCK_CHOICES[tone])
    return text.strip()[:MAX_BEAT_CHARS].rstrip(), choices
