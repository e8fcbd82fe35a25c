"""evalstream's guard API from an application, over HTTP/JSON with the standard library only.

Before calling the model: ask `Budget` whether this user may spend more today. Before showing the
model's answer: ask `Check` whether to show it, block it or show a redacted version.

    EVALSTREAM_GUARD=http://127.0.0.1:4320 python3 scripts/guard_client.py
"""

import json
import os
import urllib.error
import urllib.request

GUARD = os.environ.get("EVALSTREAM_GUARD", "http://127.0.0.1:4320")


def call(path, body, timeout=1.0):
    """POSTs `body` as JSON; the answer as a dict. A guard that does not answer in time (or at
    all) must not take the application down: the caller decides what an outage means."""
    request = urllib.request.Request(
        GUARD + path,
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=timeout) as response:
        return json.load(response)


def answer(user, question, model_call):
    budget = call("/v1/budget", {"budget": "per_user", "attributes": {"user.id": user}})
    print(f"budget: {budget['action']} ({budget['spent']:g} of {budget['limit']:g} {budget['unit']})")
    if budget["action"] == "block":
        return "You have reached today's limit."
    text = model_call(question)
    check = call(
        "/v1/check",
        {
            "guard": "default",
            "input_messages": [{"role": "user", "content": question}],
            "output_text": text,
            "attributes": {"user.id": user},
        },
    )
    print(f"check: {check['action']}")
    if check["action"] == "block":
        failed = [v["evaluator"] for v in check["verdicts"] if v["blocks"]]
        return f"Sorry, that answer was withheld ({', '.join(failed)})."
    if check["action"] == "redact":
        return check["redacted_output_text"]
    return text


if __name__ == "__main__":
    # A stand-in for the model: an answer the default guard set blocks.
    print(answer("carol", "Can you help me?", lambda q: "I'm sorry, but I can't help with that."))
