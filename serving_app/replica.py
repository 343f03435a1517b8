"""What every Serve replica that serves a model holds, started once: its arguments, engine, API and admission. The
single-model ingress (serving_app.ingress.LLMServer) and a model of several behind one route
(serving_app.router.ModelServer) both start from it. Importable without Ray."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from .api import OpenAIAPI
from .engines.base import Engine
from .engines.registry import create_engine
from .limits import Admission
from .serve_args import ServeArgs

logger = logging.getLogger("ray.serve")


@dataclass
class ModelReplica:
    args: ServeArgs
    engine: Engine
    api: OpenAIAPI
    admission: Admission

    @classmethod
    async def start(cls, raw_args: dict[str, Any]) -> "ModelReplica":
        args = ServeArgs.model_validate(raw_args)
        engine = create_engine(args)
        logger.info("starting %s engine for %s", args.engine.value, args.model_name)
        await engine.start()
        return cls(args, engine, OpenAIAPI(engine, args),
                   Admission(args.max_ongoing_requests, args.queue_limit, args.retry_after_s))
