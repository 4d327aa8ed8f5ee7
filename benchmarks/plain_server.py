"""The server a user would write instead of plaster's: one FastAPI app in one uvicorn process
calling the same ONNX Runtime engine file, with the same request and response JSON.

benchmarks/serve.py runs it beside plaster's Ray Serve application as the yardstick. It
checks nothing a user would not (no limits, no messages naming the fix), does not follow the
champion alias and never swaps engines.

    .venv/bin/python benchmarks/plain_server.py --engine ENGINE --port 8001 \
        --version 1 --precision fp32 --backend onnxruntime --shape 1,8,8
"""

import argparse
from pathlib import Path

import numpy as np
import uvicorn
from fastapi import FastAPI, Request


def build(engine: Path, backend: str, name: str, shape: tuple, dtype: str, info: dict) -> FastAPI:
    from orchestrator.engines import load_runner  # the engine exactly as plaster loads it

    run = load_runner(backend, engine)
    app = FastAPI()

    @app.post("/predict")
    async def predict(request: Request) -> dict:
        x = np.asarray((await request.json())["inputs"], dtype=dtype).reshape(-1, *shape)
        outputs = run({name: x})
        return {"outputs": outputs.tolist(), "predictions": outputs.argmax(1).tolist(), **info}

    @app.get("/healthz")
    async def healthz() -> dict:
        return {"status": "ok", "version": info["version"]}

    return app


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--engine", type=Path, required=True)
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--backend", default="onnxruntime")
    ap.add_argument("--input", default="input", help="the model input's name")
    ap.add_argument("--shape", default="1,8,8", help="one example's shape")
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--version", default="1")
    ap.add_argument("--precision", default="fp32")
    args = ap.parse_args()
    info = {"version": args.version, "precision": args.precision, "backend": args.backend}
    shape = tuple(int(s) for s in args.shape.split(","))
    app = build(args.engine, args.backend, args.input, shape, args.dtype, info)
    uvicorn.run(app, host=args.host, port=args.port, access_log=False, log_level="warning")


if __name__ == "__main__":
    main()
