"""Reasoning effort and thinking budgets: one table between the protocols' words.

OpenAI names an effort (``reasoning.effort``, ``reasoning_effort``), Anthropic a token
budget (``thinking.budget_tokens``), Gemini either (``thinkingBudget``; ``thinkingLevel``
for Gemini 3 models). A request carries what its client said (``unified.Reasoning``);
the upstream's build asks this module for the other form:

| effort  | budget |
|---------|--------|
| minimal | 1024   |
| low     | 4096   |
| medium  | 8192   |
| high    | 16384  |
| xhigh   | 32768  |

A budget becomes the smallest effort whose budget covers it (above 16384: ``high``;
``xhigh`` only when the client said it). ``none`` and a budget of 0 mean no thinking:
Anthropic gets no ``thinking`` field, Gemini a budget of 0, OpenAI ``none``. Gemini's
dynamic budget (-1) has no effort and sends nothing.
"""

from __future__ import annotations

from protocols.unified import Effort, Reasoning

BUDGETS = {
    Effort.MINIMAL: 1024,
    Effort.LOW: 4096,
    Effort.MEDIUM: 8192,
    Effort.HIGH: 16384,
    Effort.XHIGH: 32768,
}
# Gemini 3's levels: Pro takes low/high, Flash also minimal/medium; the nearest both take.
GEMINI_LEVELS = {Effort.MINIMAL: "low", Effort.LOW: "low", Effort.MEDIUM: "high", Effort.HIGH: "high",
                 Effort.XHIGH: "high"}
LEVEL_EFFORTS = {"minimal": Effort.MINIMAL, "low": Effort.LOW, "medium": Effort.MEDIUM, "high": Effort.HIGH}
ANTHROPIC_MIN_BUDGET = 1024


def effort_named(value: object) -> Effort | None:
    """An effort word as a client sent it, or None for one this table does not know."""
    try:
        return Effort(value)
    except ValueError:
        return None


def budget_of(r: Reasoning | None) -> int | None:
    """The thinking budget in tokens: the client's own, else its effort's (0: none)."""
    if r is None:
        return None
    if r.budget is not None:
        return r.budget
    if r.effort is Effort.NONE:
        return 0
    return BUDGETS.get(r.effort) if r.effort is not None else None


def effort_of(r: Reasoning | None) -> Effort | None:
    """The effort: the client's own, else the smallest that covers its budget."""
    if r is None:
        return None
    if r.effort is not None:
        return r.effort
    if r.budget is None or r.budget < 0:
        return None
    if r.budget == 0:
        return Effort.NONE
    for effort, budget in BUDGETS.items():
        if effort is not Effort.XHIGH and r.budget <= budget:
            return effort
    return Effort.HIGH


def anthropic_thinking(r: Reasoning | None, max_tokens: int) -> dict | None:
    """Anthropic's ``thinking`` field, its budget kept below ``max_tokens`` as the API
    requires; None when no thinking was asked or no budget of at least 1024 fits."""
    budget = budget_of(r)
    if not budget or budget < 0:
        return None
    budget = min(budget, max_tokens - 1)
    if budget < ANTHROPIC_MIN_BUDGET:
        return None
    return {"type": "enabled", "budget_tokens": budget}


def gemini_thinking(r: Reasoning | None, model: str) -> dict | None:
    """Gemini's ``thinkingConfig``: a level for Gemini 3 models, a budget otherwise."""
    if r is None:
        return None
    effort = effort_of(r)
    if "gemini-3" in model and effort is not None and effort is not Effort.NONE:
        return {"thinkingLevel": GEMINI_LEVELS[effort]}
    budget = budget_of(r)
    return None if budget is None else {"thinkingBudget": budget}
