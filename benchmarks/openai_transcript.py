"""Every OpenAI parameter sent through the real ``openai`` client to ``hyperedit serve``: what came back.

Starts the service on the embedded model (127.0.0.1, a fresh workspace) and sends one request
per parameter of ``/v1/completions`` and ``/v1/chat/completions``; each line of the transcript
says whether the parameter was honoured (and shows the answer) or refused (and shows the 4xx).

    python benchmarks/openai_transcript.py

Writes benchmarks/results/openai_transcript.md.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import openai

sys.path.insert(0, str(Path(__file__).resolve().parent))
from service_load import _free_port, _start_server, _wait_ready  # noqa: E402

PROMPT = "The Eiffel Tower is located in the city of"
CHAT = [{"role": "user", "content": "Where is the Eiffel Tower?"}]
COMPLETIONS = [
    ("temperature=0 (greedy)", {"temperature": 0}),
    ("temperature=1.5, seed=7", {"temperature": 1.5, "seed": 7}),
    ("temperature=1.5, seed=7 again (same text)", {"temperature": 1.5, "seed": 7}),
    ("top_p=0.01 (nucleus of one token: greedy)", {"temperature": 1.0, "top_p": 0.01, "seed": 3}),
    ("n=3", {"n": 3, "seed": 1}),
    ("stop=[',']", {"temperature": 0, "stop": [","]}),
    ("logprobs=2", {"temperature": 0, "logprobs": 2, "max_tokens": 2}),
    ("echo=True, logprobs=1, max_tokens=1 (lm-eval loglikelihood)", {"temperature": 0, "echo": True, "logprobs": 1,
                                                                     "max_tokens": 1}),
    ("stream=True", {"temperature": 0, "stream": True}),
    ("prompt as token ids", {"temperature": 0, "prompt": [504, 12063]}),
    ("user='alice'", {"temperature": 0, "user": "alice"}),
    ("model='gpt-4'", {"model": "gpt-4"}),
    ("suffix", {"suffix": "!"}),
    ("best_of=2", {"best_of": 2}),
    ("presence_penalty=0.5", {"presence_penalty": 0.5}),
    ("frequency_penalty=0.5", {"frequency_penalty": 0.5}),
    ("logit_bias", {"logit_bias": {"42": 5}}),
    ("n=20", {"n": 20}),
    ("max_tokens='8'", {"max_tokens": "8"}),
    ("max_tokens=True", {"max_tokens": True}),
    ("temperature=5", {"temperature": 5}),
    ("extra_body top_k=5", {"extra_body": {"top_k": 5}}),
    ("stream=True with logprobs", {"stream": True, "logprobs": 1}),
]
CHATS = [
    ("chat, temperature=0", {"temperature": 0}),
    ("chat, logprobs=True, top_logprobs=2", {"temperature": 0, "logprobs": True, "top_logprobs": 2, "max_tokens": 3}),
    ("chat, stream=True", {"temperature": 0, "stream": True}),
    ("chat, seed=5, n=2", {"temperature": 1.0, "seed": 5, "n": 2}),
    ("chat, tools", {"tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}]}),
    ("chat, response_format", {"response_format": {"type": "json_object"}}),
]


def _show(out) -> str:
    if isinstance(out, openai.Stream):
        chunks = list(out)
        text = "".join((c.choices[0].text if hasattr(c.choices[0], "text") else c.choices[0].delta.content or "")
                       for c in chunks if c.choices)
        return f"honoured: {len(chunks)} chunks, text {text!r}"
    data = out.model_dump(exclude_none=True)
    for c in data["choices"]:
        if "logprobs" in c:
            lp = c["logprobs"]
            c["logprobs"] = {k: (v[:3] + ["..."] if isinstance(v, list) and len(v) > 3 else v) for k, v in lp.items()}
    return "honoured: " + json.dumps(data["choices"])[:400]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "openai_transcript.md"))
    args = parser.parse_args()
    port = _free_port()
    base = f"http://127.0.0.1:{port}"
    proc = _start_server(Path(tempfile.mkdtemp(prefix="openai-transcript-")) / "ws", port, args.model, [])
    lines = ["# The `openai` client against `hyperedit serve`: every parameter honoured or refused", "",
             f"Command: `python benchmarks/openai_transcript.py --model {args.model}` (openai {openai.__version__}); "
             f"base request: prompt {PROMPT!r}, max_tokens 6.", ""]
    try:
        _wait_ready(base, proc)
        client = openai.OpenAI(base_url=f"{base}/v1", api_key="unused", max_retries=0)
        model = client.models.list().data[0].id
        lines.append(f"- `GET /v1/models`: {model!r}")
        for label, kw in COMPLETIONS:
            request = {"model": model, "prompt": PROMPT, "max_tokens": 6, **kw}
            lines.append(f"- completions, `{label}`: {_call(lambda: client.completions.create(**request))}")
        for label, kw in CHATS:
            request = {"model": model, "messages": CHAT, "max_tokens": 6, **kw}
            lines.append(f"- `{label}`: {_call(lambda: client.chat.completions.create(**request))}")
    finally:
        proc.terminate()
        proc.wait(60)
    Path(args.out).write_text("\n".join(lines) + "\n")


def _call(fn) -> str:
    try:
        return _show(fn())
    except openai.APIStatusError as exc:
        return f"refused: {exc.status_code} {exc.body.get('message') if isinstance(exc.body, dict) else exc.body}"


if __name__ == "__main__":
    main()
