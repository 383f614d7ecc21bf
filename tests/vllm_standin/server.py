"""A CPU stand-in for the vLLM server, for testing `generation.backend: vllm`.

    python server.py MODEL_DIR PORT

Answers the HTTP endpoints TRL's `VLLMClient` uses with both server protocols
Axolotl ships — Axolotl 0.19's TRL-style server (`/health/`, `/generate/`, ...)
and Axolotl 0.21's native `vllm serve` (`/health`, `/v1/models`,
`/v1/completions`, ...) — by running the model with transformers' `generate`.
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
from transformers import AutoModelForCausalLM

MODEL = AutoModelForCausalLM.from_pretrained(sys.argv[1], dtype=torch.float32).eval()
EOS = MODEL.generation_config.eos_token_id
PAD = MODEL.generation_config.pad_token_id or 0
PARAMS = dict(MODEL.named_parameters())
LOCK = threading.Lock()
LOG = {"pushes": [], "current": [], "errors": [], "generate_requests": 0, "prompts": 0}


def checksum() -> float:
    return float(sum(p.detach().double().abs().sum() for p in MODEL.parameters()))


def sample(prompts: list[list[int]], n: int, temperature: float, top_p: float, max_tokens: int, seed: int):
    """n completions per prompt, prompt-major; each ends with EOS if it stopped."""
    results = []
    generator_seed = seed
    for prompt in prompts:
        ids = torch.tensor([prompt] * n)
        torch.manual_seed(generator_seed)
        generator_seed += 1
        kwargs = {"do_sample": True, "temperature": temperature, "top_p": top_p} if temperature > 0 else {"do_sample": False}
        with torch.no_grad():
            out = MODEL.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=max_tokens,
                                 eos_token_id=EOS, pad_token_id=PAD, **kwargs)
        for row in out[:, len(prompt):].tolist():
            if EOS in row:
                row = row[: row.index(EOS) + 1]
            results.append(row)
    LOG["generate_requests"] += 1
    LOG["prompts"] += len(prompts)
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
                kw = body.get("generation_kwargs") or {}
                ids = sample(body["prompts"], body["n"], body["temperature"], body["top_p"], body["max_tokens"], kw.get("seed", 0))
                self._reply({"prompt_ids": body["prompts"], "completion_ids": ids,
                             "logprobs": [[[0.0]] * len(c) for c in ids], "logprob_token_ids": [[[t]] for c in ids for t in c[:1]]})
            elif path == "/v1/completions":  # Axolotl 0.21 / TRL 1.14: vLLM's OpenAI-style server
                n = body.get("n", 1)
                ids = sample(body["prompt"], n, body["temperature"], body["top_p"], body["max_tokens"], body.get("seed", 0))
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
