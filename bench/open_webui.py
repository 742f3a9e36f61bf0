"""Open WebUI's background tasks: the prompts it sends the chat's model on its own around a chat turn
(a title, tags, follow-up questions, search queries, an autocompletion), as it renders them.

The templates are its defaults, verbatim (`open_webui_tasks.json`: backend/open_webui/config.py,
DEFAULT_*_PROMPT_TEMPLATE, commit 00b1c6bcaa3c). It renders `{{MESSAGES:END:n}}` as the last n
messages, one `ROLE: text` line each (utils/task.py: replace_messages_variable, utils/misc.py:
get_messages_content), and sends the result as one user message.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

TASKS_FILE = Path(__file__).with_name("open_webui_tasks.json")
OPEN_WEBUI_TASKS: dict[str, str] = json.loads(TASKS_FILE.read_text(encoding="utf-8"))["templates"]
# What Open WebUI sends on its own after a chat turn (title on the first, tags, follow-ups), and
# before one when web search or a knowledge base is on (search queries). Autocompletion is off by default.
AFTER_EACH_TURN = ("title", "tags", "follow_ups", "query")


def render_open_webui_task(
    template: str, messages: list[dict[str, Any]], today: str = "2026-12-01", prompt: str = ""
) -> str:
    """A task prompt as Open WebUI renders it over a chat history of text messages (`prompt`: the
    text being typed, for the autocompletion task)."""
    text = template.replace("{{CURRENT_DATE}}", today).replace("{{TYPE}}", "General")
    text = text.replace("{{PROMPT}}", prompt)
    for n in (2, 6):
        lines = [f"{m['role'].upper()}: {m['content']}" for m in messages[-n:]]
        text = text.replace(f"{{{{MESSAGES:END:{n}}}}}", "\n".join(lines))
    return text
