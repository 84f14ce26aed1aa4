"""Whole models through ``torch.compile(model, backend="flashlight")``: a model of the
``transformers`` library (random weights) trains with eager's logits, loss and gradients, and a
model compiled with our backend trains under ``torch.distributed`` (DDP, FSDP2's
``fully_shard``) with the collectives left to PyTorch, step by step as eager does.
"""

from __future__ import annotations

import json
import os
import socket
import time

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn as nn

import flashlight

from conftest import relerr


def _trains_as_eager(config, ids: torch.Tensor, **options) -> dict:
    """Train one step of ``config``'s model (random weights) through ``torch.compile(...,
    backend="flashlight")`` with ``options``; assert eager's logits, loss and gradients; return
    the counters the step moved."""
    torch.manual_seed(0)
    model = pytest.importorskip("transformers").AutoModelForCausalLM.from_config(config)
    compiled = torch.compile(model, backend="flashlight", options=options)
    before = flashlight.counters.copy()
    out = compiled(input_ids=ids, labels=ids)
    grads = torch.autograd.grad(out.loss, list(model.parameters()))
    moved = flashlight.counters - before
    ref = model(input_ids=ids, labels=ids)
    ref_grads = torch.autograd.grad(ref.loss, list(model.parameters()))
    assert relerr(out.logits, ref.logits) < 1e-5
    assert relerr(out.loss, ref.loss) < 1e-5
    for (name, _), g, r in zip(model.named_parameters(), grads, ref_grads):
        assert relerr(g, r) < 1e-4, name
    assert moved["eager_calls"] == 0, moved
    return moved


def test_a_two_layer_llama_trains_through_the_backend(tmp_path, monkeypatch):
    monkeypatch.setenv("FLASHLIGHT_CACHE_DIR", str(tmp_path))  # compiled here, not served by an earlier run
    transformers = pytest.importorskip("transformers")
    config = transformers.LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                                      initializer_range=0.3, attn_implementation="eager")
    ids = torch.randint(0, 64, (2, 12), generator=torch.Generator().manual_seed(1))
    moved = _trains_as_eager(config, ids)
    assert moved["programs_compiled"] > 0, moved  # it ran through us


def test_a_llama_cut_between_flashlight_and_inductor_trains_as_eager(tmp_path, monkeypatch):
    """What the GPU does by default, on the CPU (``inductor=True``): each captured program is cut
    into the attention cores (ours: the scores stay in registers, forward and backward) and the
    projections, norms and MLPs between them (Inductor's). Logits, loss and gradients are eager's."""
    monkeypatch.setenv("FLASHLIGHT_CACHE_DIR", str(tmp_path))
    transformers = pytest.importorskip("transformers")
    # sizes where the rule's thresholds mean what they do in a real model: a model dimension over
    # 256 (its projections are the vendor GEMM's) and more keys than a head has dimensions
    config = transformers.LlamaConfig(vocab_size=512, hidden_size=512, intermediate_size=1024, num_hidden_layers=2,
                                      num_attention_heads=8, num_key_value_heads=4, max_position_embeddings=256,
                                      initializer_range=0.05, attn_implementation="eager")
    ids = torch.randint(0, 512, (1, 128), generator=torch.Generator().manual_seed(1))
    moved = _trains_as_eager(config, ids, inductor=True)
    # the two layers' attention, forward and backward, ours; the rest Inductor's
    assert moved["programs_compiled"] >= 4 and moved["inductor_segments"] >= 4, moved


def test_a_gemma2_cut_between_flashlight_and_inductor_trains_as_eager(tmp_path, monkeypatch):
    """Another attention variant through the cut: Gemma 2 caps its scores with ``tanh`` and masks
    alternate layers to a sliding window (by adding ``finfo.min``); each layer's attention is
    ours, forward and backward, the rest Inductor's; logits, loss and gradients are eager's."""
    monkeypatch.setenv("FLASHLIGHT_CACHE_DIR", str(tmp_path))
    transformers = pytest.importorskip("transformers")
    config = transformers.Gemma2Config(vocab_size=512, hidden_size=512, intermediate_size=1024, num_hidden_layers=2,
                                       num_attention_heads=4, num_key_value_heads=2, head_dim=64,
                                       query_pre_attn_scalar=64, sliding_window=64, attn_logit_softcapping=50.0,
                                       final_logit_softcapping=30.0, max_position_embeddings=256,
                                       attn_implementation="eager")
    torch.manual_seed(0)
    model = transformers.AutoModelForCausalLM.from_config(config).eval()
    ids = torch.randint(0, 512, (1, 128), generator=torch.Generator().manual_seed(1))
    ex = flashlight.explain(lambda i: model(input_ids=i).logits, ids, options=flashlight.Options(inductor=True))
    assert [d.compiler for d in ex.compilers] == ["Inductor", "flashlight"] * 2 + ["Inductor"], ex.compilers
    moved = _trains_as_eager(config, ids, inductor=True)
    # each layer's attention (a sliding window, then the whole causal row) forward and backward
    # (with more keys than a head has dimensions: the scores are larger than Q and K, and the
    # backward recomputes them rather than storing them)
    assert moved["programs_compiled"] >= 4 and moved["inductor_segments"] >= 4, moved


# {{{ distributed: two processes, gloo

class Block(nn.Module):
    """A pre-norm transformer block: attention written out, an MLP."""

    def __init__(self, d: int = 32, heads: int = 4) -> None:
        super().__init__()
        self.heads = heads
        self.norm = nn.LayerNorm(d)
        self.qkv = nn.Linear(d, 3 * d)
        self.out = nn.Linear(d, d)
        self.mlp = nn.Sequential(nn.Linear(d, 2 * d), nn.GELU(), nn.Linear(2 * d, d))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, S, D = x.shape
        q, k, v = self.qkv(self.norm(x)).view(B, S, 3, self.heads, D // self.heads).permute(2, 0, 3, 1, 4)
        a = torch.softmax(q @ k.transpose(-1, -2) / (D // self.heads) ** 0.5, dim=-1) @ v
        x = x + self.out(a.transpose(1, 2).reshape(B, S, D))
        return x + self.mlp(x)


STEPS = 3
RANKS_TIMEOUT_S = 600  # a hung collective fails the test instead of the suite


def _train(rank: int, world: int, port: int, wrap: str, out_dir: str, inductor: bool | None) -> None:
    """One rank: the same model trained eagerly and through the backend (``inductor``: the
    option), each wrapped by ``wrap``, on this rank's shard of the data; the losses of every step
    go to a file."""
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        result = {}
        for backend in ("eager", "flashlight"):
            torch.manual_seed(0)
            model = nn.Sequential(Block(), Block())
            if wrap == "ddp":
                wrapped = nn.parallel.DistributedDataParallel(model)
            else:
                from torch.distributed.fsdp import fully_shard
                for block in model:
                    fully_shard(block)
                wrapped = fully_shard(model)
            run = wrapped if backend == "eager" else torch.compile(wrapped, backend="flashlight",
                                                                   options={"inductor": inductor})
            opt = torch.optim.SGD(model.parameters(), lr=0.1)
            data = torch.Generator().manual_seed(100 + rank)
            losses = []
            for _ in range(STEPS):
                loss = run(torch.randn(2, 8, 32, generator=data)).square().mean()
                opt.zero_grad()
                loss.backward()
                opt.step()
                losses.append(loss.item())
            result[backend] = losses
        result["programs_compiled"] = flashlight.counters["programs_compiled"]
        result["eager_calls"] = flashlight.counters["eager_calls"]
        result["inductor_segments"] = flashlight.counters["inductor_segments"]
        with open(os.path.join(out_dir, f"rank{rank}.json"), "w") as f:
            json.dump(result, f)
        dist.barrier()  # neither rank tears the group down while the other still uses it
    finally:
        dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("wrap, inductor", [("ddp", None), ("fsdp2", None), ("ddp", True)])
def test_a_model_compiled_by_us_trains_under_torch_distributed(wrap, inductor, tmp_path, monkeypatch):
    """Under DDP (whose optimizer splits the graph at its gradient buckets) and FSDP2, and with
    the GPU's default of cutting each graph and Inductor compiling it whole (``inductor=True``)."""
    monkeypatch.setenv("FLASHLIGHT_CACHE_DIR", str(tmp_path / "cache"))  # each rank compiles: counted
    ranks = mp.spawn(_train, args=(2, _free_port(), wrap, str(tmp_path), inductor), nprocs=2, join=False)
    deadline = time.monotonic() + RANKS_TIMEOUT_S
    while not ranks.join(timeout=5):  # raises if a rank failed
        if time.monotonic() > deadline:
            for p in ranks.processes:
                p.kill()
            pytest.fail(f"the ranks did not finish within {RANKS_TIMEOUT_S} s")
    for rank in range(2):
        result = json.loads((tmp_path / f"rank{rank}.json").read_text())
        assert result["programs_compiled"] > 0 and result["eager_calls"] == 0, result
        assert (result["inductor_segments"] > 0) == bool(inductor), result
        # each step's loss, after the gradients of both ranks were reduced and applied, as eager's
        for got, ref in zip(result["flashlight"], result["eager"]):
            assert abs(got - ref) <= 1e-5 * abs(ref), (rank, result)

# }}}
