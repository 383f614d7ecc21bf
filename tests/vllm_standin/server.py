"""A CPU stand-in for the vLLM server, for testing `generation.backend: vllm`.

    python server.py MODEL_DIR PORT [--eos TOKEN_ID]

Answers the HTTP endpoints TRL's `VLLMClient` uses with both server protocols
Axolotl ships — Axolotl 0.19's TRL-style server (`/health/`, `/generate/`, ...)
and Axolotl 0.21's native `vllm serve` (`/health`, `/v1/models`,
`/v1/completions`, ...) — by running the model with transformers' `generate`,
seeding and stopping the way vLLM does (see `sample`).
Weights arrive on `/standin/weights` (the test's sitecustomize sends them there
instead of over NCCL, which needs GPUs). `/standin/log` reports every weight push
(names, a checksum of the weights after it) and every generate request.
"""

from __future__ import annotations

import base64
import json
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import torch
from transformers import AutoModelForCausalLM, GenerationConfig

MODEL = AutoModelForCausalLM.from_pretrained(sys.argv[1], dtype=torch.float32).eval()
# The server's own end-of-sequence token; `--eos ID` gives it one the chat template does not
# use, as a real server may have (then only the client's `stop_token_ids` end a turn).
EOS = int(sys.argv[sys.argv.index("--eos") + 1]) if "--eos" in sys.argv else MODEL.generation_config.eos_token_id
PAD = MODEL.generation_config.pad_token_id or 0
PARAMS = dict(MODEL.named_parameters())
LOCK = threading.Lock()
LOG = {"pushes": [], "current": [], "errors": [], "generate_requests": 0, "prompts": 0, "requests": []}


def checksum() -> float:
    return float(sum(p.detach().double().abs().sum() for p in MODEL.parameters()))


def sample(prompts: list[list[int]], n: int, params: dict) -> list[list[int]]:
    """n completions per prompt, prompt-major, seeded as vLLM seeds them: EVERY prompt of the
    request with the request's seed, its k-th completion with seed + k. A completion ends
    with the server's EOS or a `stop_token_ids` token, which it keeps (as vLLM does)."""
    seed = params.get("seed") or 0
    stops = set(params.get("stop_token_ids") or []) | {EOS}
    sampling = params["temperature"] > 0
    config = GenerationConfig(
        do_sample=sampling,
        temperature=params["temperature"] if sampling else 1.0,
        top_p=params.get("top_p", 1.0) if sampling else 1.0,
        top_k=params.get("top_k", 0) if sampling else 0,
        repetition_penalty=params.get("repetition_penalty", 1.0),
        max_new_tokens=params["max_tokens"],
        eos_token_id=sorted(stops),
        pad_token_id=PAD,
    )
    MODEL.generation_config = config  # nothing from the checkpoint's file (vLLM is told every value)
    results = []
    for prompt in prompts:
        ids = torch.tensor([prompt])
        for k in range(n):
            torch.manual_seed(seed + k)
            with torch.no_grad():
                out = MODEL.generate(ids, attention_mask=torch.ones_like(ids), generation_config=config)
            row = out[0, len(prompt):].tolist()
            ends = [i for i, token in enumerate(row) if token in stops]
            results.append(row[: ends[0] + 1] if ends else row)
    LOG["generate_requests"] += 1
    LOG["prompts"] += len(prompts)
    LOG["requests"].append({"prompts": len(prompts), "n": n, **{k: v for k, v in params.items() if k != "prompts"}})
    return results


class Handler(BaseHTTPRequestHandler):
    def log_message(self, *args):
        pass

    def _reply(self, body, status=200):
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self):
        path = self.path.rstrip("/")
        if path == "/health":
            self._reply({"status": "ok"})
        elif path == "/get_world_size":
            self._reply({"world_size": 1})
        elif path == "/v1/models":
            self._reply({"data": [{"id": "standin"}]})
        elif path == "/standin/log":
            with LOCK:
                self._reply(LOG)
        else:
            self._reply({"error": self.path}, 404)

    def do_POST(self):
        length = int(self.headers.get("Content-Length") or 0)
        body = json.loads(self.rfile.read(length) or b"{}")
        path = self.path.rstrip("/")
        with LOCK:
            if path == "/generate":  # Axolotl 0.19 / TRL 1.9 protocol
                params = {**body, **(body.get("generation_kwargs") or {})}
                ids = sample(body["prompts"], body["n"], params)
                self._reply({"prompt_ids": body["prompts"], "completion_ids": ids,
                             "logprobs": [[[0.0]] * len(c) for c in ids], "logprob_token_ids": [[[t]] for c in ids for t in c[:1]]})
            elif path == "/v1/completions":  # Axolotl 0.21 / TRL 1.14: vLLM's OpenAI-style server
                n = body.get("n", 1)
                ids = sample(body["prompt"], n, body)
                choices = [{"prompt_token_ids": body["prompt"][i // n], "token_ids": c, "logprobs": None}
                           for i, c in enumerate(ids)]
                self._reply({"choices": choices})
            elif path == "/standin/weights":
                name = body["name"]
                tensor = torch.frombuffer(bytearray(base64.b64decode(body["data"])), dtype=torch.float32)
                target = PARAMS.get(name)
                if target is None or list(target.shape) != body["shape"]:
                    LOG["errors"].append(f"unknown tensor {name} {body['shape']}")
                else:
                    with torch.no_grad():
                        target.copy_(tensor.reshape(target.shape))
                LOG["current"].append(name)
                self._reply({})
            elif path == "/reset_prefix_cache":  # the client calls it after every push
                LOG["pushes"].append({"names": LOG["current"], "checksum": checksum()})
                LOG["current"] = []
                self._reply({})
            else:
                self._reply({})


if __name__ == "__main__":
    ThreadingHTTPServer(("127.0.0.1", int(sys.argv[2])), Handler).serve_forever()
