"""``hyperedit serve``: the model and its edit ledger behind an HTTP API and a page."""
from __future__ import annotations

import logging
import os

from ..errors import HyperEditError
from ._common import add_editor_args, add_model_args, parse_overrides, seed_everything
from .demo import DEMO_OPTIONS
from .ledger import add_workspace_arg, attach_model, open_ledger

log = logging.getLogger(__name__)
API_KEY_ENV = "HYPEREDIT_API_KEY"
LOOPBACK = ("127.0.0.1", "localhost", "::1")


def register(sub) -> None:
    p = sub.add_parser("serve", help="serve the model and its edit ledger over HTTP (API, OpenAI API, page)",
                       description="Serves generation, queued edits (applied in batches and recorded in the "
                                   "ledger), the ledger (list, show, revert), metrics and an OpenAI-compatible "
                                   "/v1/completions and /v1/chat/completions API; a page at / to try it. Binds to 127.0.0.1 unless "
                                   "--host says otherwise. API docs at /docs. See docs/service.md.")
    add_workspace_arg(p)
    add_model_args(p)
    p.set_defaults(model=None)
    add_editor_args(p)
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default: %(default)s, this machine only)")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--max-prompt-tokens", type=int, default=512)
    p.add_argument("--max-new-tokens", type=int, default=128)
    p.add_argument("--max-batch", type=int, default=32, help="edit requests applied together in one ledger entry")
    p.add_argument("--batch-window", type=float, default=0.2, help="seconds the worker waits for edits to batch")
    p.add_argument("--no-metrics", action="store_true", help="do not measure ES/GS/LS when applying edits")
    p.add_argument("--api-key", default=None,
                   help=f"require 'Authorization: Bearer KEY' on every endpoint but the page (default: ${API_KEY_ENV}; "
                        "needed to bind beyond loopback)")
    p.add_argument("--allowed-host", action="append", default=[], metavar="NAME",
                   help="a further host name clients may use to reach the service (Host header), repeatable")
    p.add_argument("--generation-slots", type=int, default=2, help="generations run at once")
    p.add_argument("--max-waiting", type=int, default=16,
                   help="generations that may wait for a slot; beyond, 503 with Retry-After")
    p.add_argument("--edit-timeout", type=float, default=600.0, help="seconds an edit may run before it fails")
    p.add_argument("--max-body-bytes", type=int, default=1_000_000, help="largest request body accepted")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=run)


def run(args) -> int:
    import uvicorn

    from ..service import Engine, ServiceConfig, create_app

    seed_everything(args.seed)
    if not 0 < args.port < 65536:
        raise HyperEditError(f"--port must be between 1 and 65535, got {args.port}")
    api_key = args.api_key or os.environ.get(API_KEY_ENV) or None
    if args.host not in LOOPBACK and not api_key:
        raise HyperEditError(f"--host {args.host} reaches beyond this machine: give --api-key (or ${API_KEY_ENV}) "
                             f"so that only clients holding the key can edit and revert the model")
    for name in ("generation_slots", "max_waiting", "max_body_bytes"):
        if getattr(args, name) < (0 if name == "max_waiting" else 1):
            raise HyperEditError(f"--{name.replace('_', '-')} must be positive, got {getattr(args, name)}")
    if not args.edit_timeout > 0:
        raise HyperEditError(f"--edit-timeout must be a positive number of seconds, got {args.edit_timeout}")
    options = parse_overrides(args)
    ledger = open_ledger(args, create=True)
    lm, spec = attach_model(ledger, args, attach=False)
    if not options and spec == "smollm2-135m":
        options = dict(DEMO_OPTIONS.get(args.editor, {}))
    config = ServiceConfig(editor=args.editor, editor_options=options, checkpoint=args.checkpoint,
                           max_prompt_tokens=args.max_prompt_tokens, max_new_tokens=args.max_new_tokens,
                           max_batch=args.max_batch, batch_window_s=args.batch_window,
                           measure_metrics=not args.no_metrics, generation_slots=args.generation_slots,
                           max_waiting=args.max_waiting, edit_timeout_s=args.edit_timeout)
    engine = Engine(lm, ledger, config, spec=spec)
    print(f"hyperedit serving {lm.name} with ledger {args.workspace} on http://{args.host}:{args.port} "
          f"(page at /, API docs at /docs)", flush=True)
    try:
        app = create_app(engine, host=args.host, api_key=api_key, allowed_hosts=tuple(args.allowed_host),
                         max_body_bytes=args.max_body_bytes)
        uvicorn.run(app, host=args.host, port=args.port, log_level="warning")
    finally:
        engine.close()
    return 0
