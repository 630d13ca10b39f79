"""The course's language models: a small GPT, an LSTM and a causal 1-D conv net.

All three share one interface, so one training loop, one sampler and one memory report
serve every lab:

    logits, loss = model(idx, targets)          # idx: (B, T) int64 token ids
    out = model.generate(idx, max_new_tokens=100, temperature=0.8, top_k=10)

The GPT follows the shape of GPT-2 (pre-LayerNorm residual blocks) with the knobs the
memory labs turn: `n_kv_head` (multi-query / grouped-query attention shrinks the KV cache),
`positions` (a "learned" table or the fixed "sinusoidal" encoding, both added to the token
embeddings, or "rotary": RoPE rotates queries and keys by their position inside attention),
and the MLP: `activation` ("gelu", "relu2", or LLaMA's gated "swiglu" with three matrices) and
its hidden width `mlp_hidden`. With activation="swiglu", mlp_hidden=11008, positions="rotary",
no biases and an untied head, the block has LLaMA-2-7B's shapes (LayerNorm stands in for
RMSNorm: the same n_embd weights per norm).
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

POSITION_KINDS = ("learned", "sinusoidal", "rotary")
ACTIVATIONS = ("gelu", "relu2", "swiglu")


def _check_positive(config, names: tuple[str, ...]) -> None:
    """Raise ValueError naming the first field of `config` that is not a positive integer."""
    for name in names:
        value = getattr(config, name)
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{type(config).__name__}.{name} must be a positive integer, got {value!r}")


@dataclass
class GPTConfig:
    vocab_size: int = 65
    block_size: int = 64          # longest context the model is trained for (tokens)
    n_layer: int = 4
    n_head: int = 4               # query heads
    n_kv_head: int | None = None  # key/value heads: None = n_head (MHA), 1 = MQA, else GQA
    n_embd: int = 128
    dropout: float = 0.0
    bias: bool = False            # biases in Linear/LayerNorm (GPT-2 had them; they add nothing here)
    positions: str = "learned"    # "learned" table, fixed "sinusoidal" encoding, or "rotary" (RoPE)
    tie_weights: bool = True      # share the token embedding with the output head
    activation: str = "gelu"      # MLP: "gelu" (GPT-2), "relu2" (ReLU squared) or "swiglu" (LLaMA's gated MLP)
    mlp_hidden: int | None = None  # MLP hidden width: None = 4·n_embd (gelu, relu2) or 8·n_embd/3 (swiglu)
    head_dim: int | None = None    # channels per head: None = n_embd / n_head (a head-pruned model keeps
                                   # its heads' width with fewer heads, so n_head·head_dim < n_embd)

    def __post_init__(self):
        if self.n_kv_head is None:
            self.n_kv_head = self.n_head
        if self.mlp_hidden is None:
            # a gated MLP has three matrices instead of two: 2/3 of the width keeps the parameter count of
            # the 4x MLP ("GLU Variants Improve Transformer", Shazeer 2020); LLaMA then rounds the width up
            self.mlp_hidden = 8 * self.n_embd // 3 if self.activation == "swiglu" else 4 * self.n_embd
        _check_positive(self, ("vocab_size", "block_size", "n_layer", "n_head", "n_kv_head", "n_embd", "mlp_hidden"))
        if self.head_dim is None:
            if self.n_embd % self.n_head:
                raise ValueError(f"GPTConfig.n_embd={self.n_embd} must be divisible by n_head={self.n_head} "
                                 "(or set head_dim explicitly)")
            self.head_dim = self.n_embd // self.n_head
        _check_positive(self, ("head_dim",))
        if self.n_head % self.n_kv_head:
            raise ValueError(f"GPTConfig.n_head={self.n_head} must be a multiple of n_kv_head={self.n_kv_head} "
                             "(each key/value head serves a whole group of query heads)")
        if self.positions not in POSITION_KINDS:
            raise ValueError(f"GPTConfig.positions={self.positions!r}; allowed: {POSITION_KINDS}")
        if self.positions == "rotary" and self.head_dim % 2:
            raise ValueError(f"GPTConfig.positions='rotary' rotates channel pairs, so head_dim = n_embd / n_head "
                             f"must be even; got n_embd={self.n_embd}, n_head={self.n_head} -> head_dim="
                             f"{self.head_dim}; allowed: an even head_dim (or positions 'learned' / 'sinusoidal')")
        if self.activation not in ACTIVATIONS:
            raise ValueError(f"GPTConfig.activation={self.activation!r}; allowed: {ACTIVATIONS}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"GPTConfig.dropout must be in [0, 1), got {self.dropout}")

    @property
    def attn_width(self) -> int:
        """Channels the heads' outputs fill together: n_head · head_dim (= n_embd unless heads were pruned)."""
        return self.n_head * self.head_dim


def sinusoidal_positions(n_positions: int, dim: int) -> torch.Tensor:
    """The fixed (n_positions, dim) encoding of 'Attention Is All You Need': sin on even, cos on odd dims."""
    pos = torch.arange(n_positions, dtype=torch.float32)[:, None]
    freq = torch.exp(torch.arange(0, dim, 2, dtype=torch.float32) * (-math.log(10000.0) / dim))
    table = torch.zeros(n_positions, dim)
    table[:, 0::2] = torch.sin(pos * freq)
    table[:, 1::2] = torch.cos(pos * freq[: dim // 2])
    return table


def rotary_tables(n_positions: int, head_dim: int, base: float = 10000.0) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin tables (n_positions, head_dim/2) of RoPE ("RoFormer", Su et al. 2021)."""
    inv_freq = 1.0 / base ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim)
    angles = torch.arange(n_positions, dtype=torch.float32)[:, None] * inv_freq[None, :]
    return torch.cos(angles), torch.sin(angles)


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate each pair (x_i, x_{i+d/2}) of x (B, H, T, d) by the angle of its position.

    After the rotation q·k depends only on the *distance* between two positions, so attention
    sees relative positions without any position vector added to the residual stream.
    """
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat([x1 * cos - x2 * sin, x2 * cos + x1 * sin], dim=-1)


def split_heads(x: torch.Tensor, n_head: int) -> torch.Tensor:
    """(B, T, C) -> (B, n_head, T, C // n_head): head h gets channels [h·hd, (h+1)·hd), a view (no copy)."""
    B, T, C = x.shape
    return x.view(B, T, n_head, C // n_head).transpose(1, 2)


class KVCache:
    """Keys and values of every layer for the tokens seen so far, preallocated to `max_tokens`.

    Bytes = 2 (k and v) · layers · batch · kv_heads · max_tokens · head_dim · element size:
    the formula `labkit.memory.kv_cache_bytes` evaluates, and `nbytes` measures.
    """

    def __init__(self, config: GPTConfig, batch_size: int, max_tokens: int | None = None,
                 dtype: torch.dtype = torch.float32, device="cpu"):
        self.max_tokens = max_tokens or config.block_size
        shape = (config.n_layer, batch_size, config.n_kv_head, self.max_tokens, config.head_dim)
        self.k = torch.zeros(shape, dtype=dtype, device=device)
        self.v = torch.zeros(shape, dtype=dtype, device=device)
        self.length = 0  # tokens stored so far

    @property
    def nbytes(self) -> int:
        return self.k.nbytes + self.v.nbytes

    def reset(self) -> None:
        self.length = 0


class CausalSelfAttention(nn.Module):
    def __init__(self, config: GPTConfig):
        super().__init__()
        self.n_head, self.n_kv_head, self.head_dim = config.n_head, config.n_kv_head, config.head_dim
        # one matmul makes q (n_head heads) and k, v (n_kv_head heads each)
        self.qkv = nn.Linear(config.n_embd, (config.n_head + 2 * config.n_kv_head) * config.head_dim, bias=config.bias)
        self.proj = nn.Linear(config.attn_width, config.n_embd, bias=config.bias)
        self.dropout = config.dropout

    def forward(self, x: torch.Tensor, cache: KVCache | None = None, layer: int = 0,
                rope: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
        B, T, C = x.shape
        q, k, v = self.qkv(x).split([self.n_head * self.head_dim, self.n_kv_head * self.head_dim,
                                     self.n_kv_head * self.head_dim], dim=2)
        q = split_heads(q, self.n_head)                                     # (B, nh, T, hd)
        k, v = split_heads(k, self.n_kv_head), split_heads(v, self.n_kv_head)  # (B, nkv, T, hd)
        if rope is not None:  # rotary positions: rotate q and k (the cache then stores rotated keys)
            q, k = apply_rotary(q, *rope), apply_rotary(k, *rope)
        if cache is None:
            is_causal = True
        else:  # append this step's keys/values, then attend over everything cached
            start = cache.length
            cache.k[layer, :, :, start:start + T] = k
            cache.v[layer, :, :, start:start + T] = v
            k, v = cache.k[layer, :, :, :start + T], cache.v[layer, :, :, :start + T]
            # a single new token may look at all cached ones; a multi-token prefill into an empty cache is causal
            is_causal = T > 1
            if T > 1 and start > 0:
                raise ValueError("KVCache: multi-token chunks are only supported into an empty cache")
        groups = self.n_head // self.n_kv_head
        if groups > 1:  # GQA/MQA: each key/value head serves `groups` query heads
            k = k.repeat_interleave(groups, dim=1)
            v = v.repeat_interleave(groups, dim=1)
        y = F.scaled_dot_product_attention(q, k, v, is_causal=is_causal,
                                           dropout_p=self.dropout if self.training else 0.0)
        return self.proj(y.transpose(1, 2).reshape(B, T, self.n_head * self.head_dim))


class MLP(nn.Module):
    """Two matrices around a nonlinearity: proj(act(fc x)), hidden width mlp_hidden (4·n_embd in GPT-2)."""

    def __init__(self, config: GPTConfig):
        super().__init__()
        self.fc = nn.Linear(config.n_embd, config.mlp_hidden, bias=config.bias)
        self.proj = nn.Linear(config.mlp_hidden, config.n_embd, bias=config.bias)
        self.activation = config.activation

    def forward(self, x):
        h = self.fc(x)
        # relu(h)² ("Primer: Searching for Efficient Transformers for Language Modeling") trains the baby
        # GPT to a clearly lower loss than GELU (`python -m labkit.bench ablation`) at about the same cost
        h = F.relu(h).square() if self.activation == "relu2" else F.gelu(h)
        return self.proj(h)


class SwiGLU(nn.Module):
    """LLaMA's gated MLP, three matrices: w_down(silu(w_gate x) * w_up x).

    The gate decides, per hidden unit, how much of w_up x passes ("GLU Variants Improve Transformer",
    Shazeer 2020). LLaMA-2-7B has n_embd 4096 and mlp_hidden 11008; LLaMA-2-70B 8192 and 28672.
    """

    def __init__(self, config: GPTConfig):
        super().__init__()
        self.w_gate = nn.Linear(config.n_embd, config.mlp_hidden, bias=config.bias)
        self.w_up = nn.Linear(config.n_embd, config.mlp_hidden, bias=config.bias)
        self.w_down = nn.Linear(config.mlp_hidden, config.n_embd, bias=config.bias)

    def forward(self, x):
        return self.w_down(F.silu(self.w_gate(x)) * self.w_up(x))


class Block(nn.Module):
    """Pre-LN residual block: x + attn(ln(x)), then x + mlp(ln(x))."""

    def __init__(self, config: GPTConfig):
        super().__init__()
        self.ln_1 = nn.LayerNorm(config.n_embd, bias=config.bias)
        self.attn = CausalSelfAttention(config)
        self.ln_2 = nn.LayerNorm(config.n_embd, bias=config.bias)
        self.mlp = SwiGLU(config) if config.activation == "swiglu" else MLP(config)
        self.drop = nn.Dropout(config.dropout)

    def forward(self, x, cache=None, layer=0, rope=None):
        x = x + self.drop(self.attn(self.ln_1(x), cache, layer, rope))
        return x + self.drop(self.mlp(self.ln_2(x)))


class LanguageModel(nn.Module):
    """What every course model shares: the loss, the parameter count and the sampler."""

    block_size: int

    def num_params(self) -> int:
        """Number of distinct parameters (a tied weight counts once)."""
        return sum(p.numel() for p in self.parameters())

    def _loss(self, logits, targets):
        if targets is None:
            return None
        return F.cross_entropy(logits.reshape(-1, logits.size(-1)), targets.reshape(-1))

    @torch.no_grad()
    def generate(self, idx: torch.Tensor, max_new_tokens: int, temperature: float = 1.0,
                 top_k: int | None = None, use_cache: bool = True,
                 generator: torch.Generator | None = None) -> torch.Tensor:
        """Sample `max_new_tokens` tokens after `idx` (B, T); returns (B, T + max_new_tokens).

        temperature=0 means greedy (argmax). With `use_cache` the GPT reuses the keys and values of
        earlier tokens (KV cache) instead of recomputing them; the tokens are the same either way.
        """
        if temperature < 0:
            raise ValueError(f"temperature must be >= 0 (0 = greedy), got {temperature}")
        if top_k is not None and top_k < 1:
            raise ValueError(f"top_k must be None or >= 1, got {top_k}")
        was_training = self.training
        self.eval()
        step = self._cached_steps(idx) if use_cache else None
        if step is not None:
            next(step)  # run the coroutine to its first `yield`
        for _ in range(max_new_tokens):
            if step is not None:
                logits = step.send(idx)
            else:
                logits, _ = self(idx[:, -self.block_size:])
                logits = logits[:, -1, :]
            idx = torch.cat([idx, sample_next(logits, temperature, top_k, generator)], dim=1)
        self.train(was_training)
        return idx

    def _cached_steps(self, idx):
        """Models without a cache (or their own recurrent state) return None: generate recomputes."""
        return None


def sample_next(logits: torch.Tensor, temperature: float, top_k: int | None,
                generator: torch.Generator | None = None) -> torch.Tensor:
    """One token id per row (B, 1) from last-position logits (B, V)."""
    if temperature == 0:
        return logits.argmax(dim=-1, keepdim=True)
    logits = logits / temperature
    if top_k is not None:
        kth = torch.topk(logits, min(top_k, logits.size(-1))).values[:, [-1]]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    return torch.multinomial(F.softmax(logits, dim=-1), num_samples=1, generator=generator)


class GPT(LanguageModel):
    def __init__(self, config: GPTConfig):
        super().__init__()
        self.config = config
        self.block_size = config.block_size
        self.wte = nn.Embedding(config.vocab_size, config.n_embd)
        if config.positions == "learned":
            self.wpe = nn.Embedding(config.block_size, config.n_embd)
        elif config.positions == "sinusoidal":  # a buffer, not a parameter: memory, but no gradient or optimizer state
            self.register_buffer("wpe_table", sinusoidal_positions(config.block_size, config.n_embd), persistent=False)
        else:  # rotary: cos/sin tables used inside attention, nothing added to the embeddings
            cos, sin = rotary_tables(config.block_size, config.head_dim)
            self.register_buffer("rope_cos", cos, persistent=False)
            self.register_buffer("rope_sin", sin, persistent=False)
        self.drop = nn.Dropout(config.dropout)
        self.blocks = nn.ModuleList([Block(config) for _ in range(config.n_layer)])
        self.ln_f = nn.LayerNorm(config.n_embd, bias=config.bias)
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
        if config.tie_weights:
            # input and output embeddings live in the same space; sharing them saves V·C parameters
            self.lm_head.weight = self.wte.weight
        self.apply(self._init_weights)
        # GPT-2: scale the init of projections that write into the residual stream by 1/sqrt(2·layers),
        # so the stream's variance does not grow with depth
        for name, p in self.named_parameters():
            if name.endswith(("proj.weight", "w_down.weight")):
                nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * config.n_layer))

    @staticmethod
    def _init_weights(module):
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)

    def position_embedding(self, start: int, length: int) -> torch.Tensor:
        if self.config.positions == "learned":
            return self.wpe.weight[start:start + length]
        return self.wpe_table[start:start + length]  # sinusoidal

    def embed(self, idx: torch.Tensor, start: int = 0) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor] | None]:
        """Token embeddings of `idx` (B, T) at positions start.. (learned or sinusoidal added), and the rotary
        (cos, sin) rows for those positions (None unless positions='rotary': then nothing is added here)."""
        T = idx.size(1)
        x = self.wte(idx)
        if self.config.positions == "rotary":
            return x, (self.rope_cos[start:start + T], self.rope_sin[start:start + T])
        return x + self.position_embedding(start, T), None

    def forward(self, idx: torch.Tensor, targets: torch.Tensor | None = None, cache: KVCache | None = None):
        """Logits (B, T, V) and the mean cross-entropy against `targets` (or None)."""
        B, T = idx.shape
        start = 0 if cache is None else cache.length
        if start + T > self.block_size:
            raise ValueError(f"sequence of {start + T} tokens is longer than the model's block_size="
                             f"{self.block_size}; crop the input to the last {self.block_size} tokens")
        x, rope = self.embed(idx, start)
        x = self.drop(x)
        for i, block in enumerate(self.blocks):
            x = block(x, cache, i, rope)
        if cache is not None:
            cache.length += T
        logits = self.lm_head(self.ln_f(x))
        return logits, self._loss(logits, targets)

    def _cached_steps(self, idx):
        """A coroutine: send it the whole sequence so far, it returns the next-token logits.

        It prefills the cache with the prompt, then feeds one new token per step. When the
        context would pass block_size it refills the cache from the last block_size tokens,
        because positions are counted from the start of the window (the same window the
        uncached path sees).
        """
        cache = KVCache(self.config, idx.size(0), dtype=self.wte.weight.dtype, device=idx.device)
        self.last_cache = cache  # kept so a lab can measure its bytes after generation
        logits = None
        while True:
            seq = yield logits
            if cache.length == 0 or cache.length >= self.block_size or seq.size(1) <= cache.length:
                cache.reset()
                window = seq[:, -self.block_size:]
                out, _ = self(window, cache=cache)
            else:
                out, _ = self(seq[:, -1:], cache=cache)
            logits = out[:, -1, :]


@dataclass
class LSTMConfig:
    vocab_size: int = 65
    block_size: int = 64
    n_embd: int = 128
    n_hidden: int = 256
    n_layer: int = 2
    dropout: float = 0.0
    tie_weights: bool = False

    def __post_init__(self):
        _check_positive(self, ("vocab_size", "block_size", "n_embd", "n_hidden", "n_layer"))


class LSTMLM(LanguageModel):
    """Token embedding → stacked LSTM → linear head. Memory of the past lives in (h, c), not a cache."""

    def __init__(self, config: LSTMConfig):
        super().__init__()
        self.config = config
        self.block_size = config.block_size
        self.wte = nn.Embedding(config.vocab_size, config.n_embd)
        self.lstm = nn.LSTM(config.n_embd, config.n_hidden, num_layers=config.n_layer, batch_first=True,
                            dropout=config.dropout if config.n_layer > 1 else 0.0)
        self.to_embd = nn.Linear(config.n_hidden, config.n_embd, bias=False)
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
        if config.tie_weights:
            self.lm_head.weight = self.wte.weight

    def forward(self, idx, targets=None):
        h, _ = self.lstm(self.wte(idx))
        logits = self.lm_head(self.to_embd(h))
        return logits, self._loss(logits, targets)


@dataclass
class ConvConfig:
    vocab_size: int = 65
    block_size: int = 64
    n_embd: int = 128
    n_layer: int = 4
    kernel_size: int = 3
    dropout: float = 0.0

    def __post_init__(self):
        _check_positive(self, ("vocab_size", "block_size", "n_embd", "n_layer", "kernel_size"))


class CausalConv1d(nn.Conv1d):
    """A Conv1d that pads on the left only, so position t sees tokens ≤ t (never the future)."""

    def __init__(self, channels: int, kernel_size: int, dilation: int):
        super().__init__(channels, channels, kernel_size, dilation=dilation)
        self.left_pad = (kernel_size - 1) * dilation

    def forward(self, x):  # x: (B, C, T)
        return super().forward(F.pad(x, (self.left_pad, 0)))


class ConvLM(LanguageModel):
    """Stacked causal dilated 1-D convolutions (WaveNet-style): receptive field grows as 2^layers."""

    def __init__(self, config: ConvConfig):
        super().__init__()
        self.config = config
        self.block_size = config.block_size
        self.wte = nn.Embedding(config.vocab_size, config.n_embd)
        self.convs = nn.ModuleList([CausalConv1d(config.n_embd, config.kernel_size, 2 ** i)
                                    for i in range(config.n_layer)])
        self.norms = nn.ModuleList([nn.LayerNorm(config.n_embd) for _ in range(config.n_layer)])
        self.drop = nn.Dropout(config.dropout)
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)

    @property
    def receptive_field(self) -> int:
        """How many tokens (including the current one) one output position can see."""
        return 1 + sum((self.config.kernel_size - 1) * 2 ** i for i in range(self.config.n_layer))

    def forward(self, idx, targets=None):
        x = self.wte(idx)                                       # (B, T, C)
        for conv, norm in zip(self.convs, self.norms):
            x = x + self.drop(conv(F.gelu(norm(x)).transpose(1, 2)).transpose(1, 2))
        logits = self.lm_head(x)
        return logits, self._loss(logits, targets)


MODEL_CLASSES = {"gpt": (GPT, GPTConfig), "lstm": (LSTMLM, LSTMConfig), "conv": (ConvLM, ConvConfig)}


def build_model(kind: str, **config_fields) -> LanguageModel:
    """Make a model by name ("gpt", "lstm", "conv") from config fields; unknown fields are an error."""
    if kind not in MODEL_CLASSES:
        raise ValueError(f"model={kind!r} is not a course model; allowed: {sorted(MODEL_CLASSES)}")
    cls, config_cls = MODEL_CLASSES[kind]
    known = set(config_cls.__dataclass_fields__)
    unknown = sorted(set(config_fields) - known)
    if unknown:
        raise ValueError(f"{unknown} are not fields of {config_cls.__name__}; allowed: {sorted(known)}")
    return cls(config_cls(**config_fields))


def model_config_dict(model: LanguageModel) -> dict:
    """The model's kind and config as plain data (what a checkpoint stores)."""
    kind = next(k for k, (cls, _) in MODEL_CLASSES.items() if type(model) is cls)
    return {"kind": kind, **asdict(model.config)}
