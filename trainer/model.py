"""The GPT of the seed stack (trainer-spec.md, section 4), every component switchable.

Data flow for tokens t[0..T):
  x = tok_emb(t) + BigramHash(t);  x = rms(x);  x = SmearGate(x, t);  x0 = x
  blocks 0 .. L//2-1 push their outputs; later blocks first add skip_w * pop()  (U-Net)
  block(x, x0): x = a·x + b·x0
                x = x + attn_scale · Attn(rms(x)·s)     s = 1/sqrt(layer+1)
                x = x + mlp_scale · MLP(rms(x)·s)
  logits = c·tanh((rms(x) @ tok_emb^T) / c)           c = 30 (soft cap)

Written for torch.compile: no data-dependent Python branches in forward; every switch
is decided once in __init__.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from trainer.config import ConfigError, ConfigIssue, TrainerConfig
from trainer.quant import DEFAULT_CLIP_FLOOR, fake_quant_int6

try:  # FlashAttention 3 (Hopper); absent on most machines, then PyTorch SDPA.
    from flash_attn_interface import flash_attn_func as fa3_attn_func
except Exception:  # ImportError, or a broken CUDA extension
    fa3_attn_func = None

try:
    from torch.nn.attention import SDPBackend, sdpa_kernel

    # cuDNN first: fastest causal GQA attention measured on the H100 (spec, section 5).
    SDPA_PRIORITY = [SDPBackend.CUDNN_ATTENTION, SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH]
except ImportError:  # older torch
    sdpa_kernel = None

try:  # DOC_ATTENTION on CUDA: FlexAttention with a per-document block mask (skips whole masked tiles)
    from torch.nn.attention.flex_attention import BlockMask, create_block_mask, flex_attention

    # Compiled on its own, so callers outside the compiled model (LoRA TTT) get the fused kernel too;
    # eager flex_attention would materialise every score, which is the dense-mask cost it replaces.
    _flex_attention = torch.compile(flex_attention, dynamic=False)
except ImportError:  # older torch: the dense-mask SDPA path everywhere
    BlockMask = None  # type: ignore[assignment,misc]

BIGRAM_MUL_CUR = 36313
BIGRAM_MUL_PREV = 27191


def rms_norm(x: Tensor) -> Tensor:
    """x / sqrt(mean(x², last dim) + eps), no learned weight."""
    return F.rms_norm(x, (x.size(-1),))


class BlockLinear(nn.Linear):
    """Bias-free linear layer whose weight can pass through int6 fake-quantisation.

    ``qat`` is a plain Python flag: while it is off the compiled graph holds no
    fake-quant arithmetic at all (it used to be a 0/1 buffer multiplied in, which cost
    every step the per-row max, round and clamp of every matrix). Flipping it makes
    torch.compile build a second graph; the trainer builds it during the compile
    warm-up, so switching late QAT on mid-run never compiles inside the timed loop.
    """

    qat: bool = False
    clip_floor: float = DEFAULT_CLIP_FLOOR  # the artifact's QUANT_CLIP_FLOOR; GPT sets it from the config

    def __init__(self, fan_in: int, fan_out: int):
        super().__init__(fan_in, fan_out, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        w = fake_quant_int6(self.weight, self.clip_floor) if self.qat else self.weight
        return F.linear(x, w)


def bigram_hash_indices(idx: Tensor, rows: int) -> Tensor:
    """Row of the BigramHash table for every position.

    i > 0: (36313·t[i] XOR 27191·t[i-1]) mod (rows-1);  i = 0: rows-1.
    """
    cur = BIGRAM_MUL_CUR * idx[:, 1:]
    prev = BIGRAM_MUL_PREV * idx[:, :-1]
    h = torch.bitwise_xor(cur, prev) % (rows - 1)
    first = torch.full_like(idx[:, :1], rows - 1)
    return torch.cat([first, h], dim=1)


class BigramHash(nn.Module):
    """Hashed (previous, current) token-pair embedding: scale · proj(table[hash]).

    The table and the scalar follow the spec (zero, 0.05). The projection starts
    orthogonal, not zero: with both table and projection at zero neither would
    ever receive a gradient. Output is still exactly zero at init.
    """

    def __init__(self, rows: int, dim: int, model_dim: int):
        super().__init__()
        self.rows = rows
        self.table = nn.Embedding(rows, dim)
        self.proj = BlockLinear(dim, model_dim)
        self.scale = nn.Parameter(torch.tensor(0.05))
        nn.init.zeros_(self.table.weight)
        nn.init.orthogonal_(self.proj.weight)

    def forward(self, idx: Tensor, bos_token_id: int | None = None) -> Tensor:
        """With ``bos_token_id`` (DOC_ATTENTION) a BOS position gets the row of position 0, so no
        pair spans two documents."""
        rows = bigram_hash_indices(idx, self.rows)
        if bos_token_id is not None:
            rows = torch.where(idx == bos_token_id, self.rows - 1, rows)
        return self.scale * self.proj(self.table(rows))


class SmearGate(nn.Module):
    """out = (1-g)·x + g·x_prev,  g = sigmoid(w) per channel (w = 0 at init).

    x_prev is x shifted one position right, zero at position 0 and zero wherever
    the current token is BOS, so no document blends into the next one.
    """

    def __init__(self, dim: int, bos_token_id: int):
        super().__init__()
        self.bos_token_id = bos_token_id
        self.gate = nn.Parameter(torch.zeros(dim))

    def forward(self, x: Tensor, idx: Tensor) -> Tensor:
        g = torch.sigmoid(self.gate).to(x.dtype)
        x_prev = F.pad(x[:, :-1], (0, 0, 1, 0))
        x_prev = x_prev * (idx != self.bos_token_id).unsqueeze(-1).to(x.dtype)
        return x + g * (x_prev - x)


class WindowSmearGate(nn.Module):
    """The 2026-04-27 record's SmearGate: out_t = x_t + λ·sigmoid(w·x_t[:window])·x_{t-1}, one gate per token.

    x_{t-1} is zero at t = 0 and wherever token t is BOS (no blending across documents);
    w = 0 and λ = 0 at init, so it starts as the identity.
    """

    def __init__(self, window: int, bos_token_id: int):
        super().__init__()
        self.window, self.bos_token_id = window, bos_token_id
        self.gate_w = nn.Parameter(torch.zeros(window))
        self.lam = nn.Parameter(torch.zeros(1))

    def forward(self, x: Tensor, idx: Tensor) -> Tensor:
        g = self.lam.to(x.dtype) * torch.sigmoid(F.linear(x[..., : self.window], self.gate_w.to(x.dtype)[None]))
        x_prev = F.pad(x[:, :-1], (0, 0, 1, 0)) * (idx != self.bos_token_id).unsqueeze(-1).to(x.dtype)
        return x + g * x_prev


class Rotary(nn.Module):
    """Rotary embedding on the first ``dims`` of each head (partial RoPE, half-split pairs).

    For pair j < dims/2 at position p with angle θ = p·base^(-2j/dims):
    (x_j, x_{j+dims/2}) -> (x_j cosθ - x_{j+dims/2} sinθ, x_j sinθ + x_{j+dims/2} cosθ).
    """

    def __init__(self, dims: int, base: float, max_len: int):
        super().__init__()
        self.dims = dims
        inv_freq = base ** (-torch.arange(0, dims, 2, dtype=torch.float32) / dims)
        angles = torch.outer(torch.arange(max_len, dtype=torch.float32), inv_freq)  # [max_len, dims/2]
        self.register_buffer("cos", angles.cos()[None, :, None, :], persistent=False)
        self.register_buffer("sin", angles.sin()[None, :, None, :], persistent=False)

    def forward(self, x: Tensor) -> Tensor:  # x: [B, T, H, Dh]
        T, half = x.size(1), self.dims // 2
        cos, sin = self.cos[:, :T].to(x.dtype), self.sin[:, :T].to(x.dtype)
        x1, x2, rest = x[..., :half], x[..., half:self.dims], x[..., self.dims:]
        return torch.cat([x1 * cos - x2 * sin, x1 * sin + x2 * cos, rest], dim=-1)


def document_mask(idx: Tensor, bos_token_id: int) -> Tensor:
    """[B, 1, T, T] bool: position i may attend to j iff j <= i and no BOS lies in (j, i] of the row,
    i.e. both are in the same BOS-delimited document (a BOS starts the document it is in)."""
    doc = torch.cumsum(idx == bos_token_id, dim=1)
    T = idx.size(1)
    causal = torch.ones(T, T, dtype=torch.bool, device=idx.device).tril()
    return ((doc[:, :, None] == doc[:, None, :]) & causal)[:, None]


def document_block_mask(idx: Tensor, bos_token_id: int) -> "BlockMask":
    """document_mask as a FlexAttention BlockMask (CUDA): the same rule, kept per 128x128 tile, so
    tiles wholly across a document boundary or above the diagonal are never computed."""
    doc = torch.cumsum(idx == bos_token_id, dim=1)

    def same_document_causal(b: Tensor, h: Tensor, q: Tensor, kv: Tensor) -> Tensor:
        return (q >= kv) & (doc[b, q] == doc[b, kv])

    T = idx.size(1)
    return create_block_mask(same_document_causal, B=idx.size(0), H=None, Q_LEN=T, KV_LEN=T, device=idx.device)


def document_attention_mask(idx: Tensor, bos_token_id: int) -> "Tensor | BlockMask":
    """The DOC_ATTENTION mask in the form the attention kernel of this device takes: a BlockMask for
    FlexAttention on CUDA, a dense [B, 1, T, T] bool mask for SDPA elsewhere."""
    # Not under inference_mode: the compiled scoring graph of the roundtrip model hit an illegal memory
    # access in FlexAttention's kernel autotuning on the H100 (torch 2.11, bench/results/trainer_gpu.md);
    # evaluation keeps the dense mask, training and LoRA TTT (gradients on) take the block mask.
    if idx.is_cuda and BlockMask is not None and not torch.is_inference_mode_enabled():
        return document_block_mask(idx, bos_token_id)
    return document_mask(idx, bos_token_id)


def causal_attention(q: Tensor, k: Tensor, v: Tensor, use_fa3: bool, mask: "Tensor | BlockMask | None" = None) -> Tensor:
    """Causal GQA attention on [B, T, H, Dh] tensors (k, v have fewer heads); returns [B, T, H, Dh].
    ``mask`` (from document_attention_mask) replaces the causal mask: a BlockMask runs FlexAttention,
    a dense bool mask runs SDPA."""
    if BlockMask is not None and isinstance(mask, BlockMask):
        y = _flex_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), block_mask=mask, enable_gqa=True)
        return y.transpose(1, 2)
    if mask is not None:
        # KV heads repeated rather than enable_gqa: on CUDA the masked kernel (memory-efficient
        # attention) has no GQA path, and SDPA would fall back to materialising every score.
        group = q.size(2) // k.size(2)
        q, k, v = q.transpose(1, 2), k.transpose(1, 2).repeat_interleave(group, 1), v.transpose(1, 2).repeat_interleave(group, 1)
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask).transpose(1, 2)
    if use_fa3:
        y = fa3_attn_func(q, k, v, causal=True)
        return y[0] if isinstance(y, tuple) else y
    q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)
    if sdpa_kernel is not None and q.is_cuda:
        with sdpa_kernel(SDPA_PRIORITY, set_priority=True):
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)
    else:
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)
    return y.transpose(1, 2)


def exclusive_self_attention(y: Tensor, v: Tensor) -> Tensor:
    """XSA: y - (y·v̂)v̂ per head, v̂ = v/|v| of the same position's KV head.

    y: [B, T, H, Dh]; v: [B, T, Hkv, Dh] with H a multiple of Hkv (query head h
    uses KV head h // (H/Hkv), as GQA does).
    """
    B, T, H, D = y.shape
    Hkv = v.size(2)
    yg = y.view(B, T, Hkv, H // Hkv, D)
    vn = F.normalize(v, dim=-1).unsqueeze(3)
    return (yg - (yg * vn).sum(-1, keepdim=True) * vn).view(B, T, H, D)


class Attention(nn.Module):
    """GQA attention with q/k RMS norm, partial RoPE, per-head query gain, optional XSA
    and optional value embedding added to V."""

    def __init__(self, cfg: TrainerConfig, xsa: bool, use_fa3: bool):
        super().__init__()
        self.num_heads, self.num_kv_heads, self.head_dim = cfg.num_heads, cfg.num_kv_heads, cfg.head_dim
        kv_dim = cfg.num_kv_heads * cfg.head_dim
        self.c_q = BlockLinear(cfg.model_dim, cfg.model_dim)
        self.c_k = BlockLinear(cfg.model_dim, kv_dim)
        self.c_v = BlockLinear(cfg.model_dim, kv_dim)
        self.proj = BlockLinear(cfg.model_dim, cfg.model_dim)
        self.q_gain = nn.Parameter(torch.full((cfg.num_heads,), cfg.qk_gain_init))
        self.rotary = Rotary(cfg.rope_dims, cfg.rope_base, max(cfg.train_seq_len, cfg.eval_seq_len)) if cfg.rope_dims else None
        self.xsa = xsa
        self.use_fa3 = use_fa3
        # Attention output gate: g = sigmoid(scale · W x[:width]) per head, W [heads, width]; zero init
        # (sparse, g = 1/2 everywhere at start, as the record) or N(0, 0.01) (dense).
        self.gate_width = {"none": 0, "sparse": cfg.gate_window, "dense": cfg.model_dim}[cfg.attn_gate]
        self.gate_scale = cfg.attn_gate_scale
        if self.gate_width:
            self.attn_gate_w = nn.Parameter(torch.zeros(cfg.num_heads, self.gate_width))
            if cfg.attn_gate == "dense":
                nn.init.normal_(self.attn_gate_w, std=0.01)
        for lin in (self.c_q, self.c_k, self.c_v):
            nn.init.orthogonal_(lin.weight)
        nn.init.zeros_(self.proj.weight)

    def forward(self, x: Tensor, ve: Tensor | None = None, doc_mask: Tensor | None = None, lora: "LoRASlot | None" = None) -> Tensor:
        B, T, _ = x.shape
        q, k, v = self.c_q(x), self.c_k(x), self.c_v(x)
        if lora is not None:  # TTT's per-document low-rank deltas (LoRA TTT), all read the block's normed input
            q, k, v = q + lora.q(x), (k + lora.k(x)) if lora.k is not None else k, v + lora.v(x)
        q = q.view(B, T, self.num_heads, self.head_dim)
        k = k.view(B, T, self.num_kv_heads, self.head_dim)
        v = v.view(B, T, self.num_kv_heads, self.head_dim)
        if ve is not None:
            v = v + ve.view_as(v)
        q, k = rms_norm(q), rms_norm(k)
        if self.rotary is not None:
            q, k = self.rotary(q), self.rotary(k)
        q = q * self.q_gain.to(q.dtype)[:, None]
        q, k = q.to(v.dtype), k.to(v.dtype)  # rms_norm may autocast to fp32
        y = causal_attention(q, k, v, self.use_fa3, doc_mask)
        if self.xsa:
            y = exclusive_self_attention(y, v)
        if self.gate_width:
            g = torch.sigmoid(self.gate_scale * F.linear(x[..., : self.gate_width], self.attn_gate_w.to(x.dtype)))
            y = y * g[..., None].to(y.dtype)
        out = self.proj(y.reshape(B, T, -1))
        if lora is not None and lora.o is not None:  # the record's O-LoRA reads the attention's input, not y
            out = out + lora.o(x)
        return out


class MLP(nn.Module):
    """down(act(up(x))²), act = LeakyReLU(slope) or ReLU."""

    def __init__(self, cfg: TrainerConfig):
        super().__init__()
        self.up = BlockLinear(cfg.model_dim, cfg.mlp_hidden)
        self.down = BlockLinear(cfg.mlp_hidden, cfg.model_dim)
        self.slope = cfg.leaky_slope if cfg.mlp_activation == "leaky_relu2" else 0.0
        nn.init.orthogonal_(self.up.weight)
        nn.init.zeros_(self.down.weight)

    def forward(self, x: Tensor) -> Tensor:
        return self.down(F.leaky_relu(self.up(x), self.slope).square())


class Block(nn.Module):
    """x = a·x + b·x0; x += attn_scale·Attn(rms(x)·s); x += mlp_scale·MLP(rms(x)·s)."""

    def __init__(self, cfg: TrainerConfig, layer: int, xsa: bool, use_fa3: bool):
        super().__init__()
        self.attn = Attention(cfg, xsa, use_fa3)
        self.mlp = MLP(cfg)
        self.resid_mix = nn.Parameter(torch.stack([torch.ones(cfg.model_dim), torch.zeros(cfg.model_dim)]))
        self.attn_scale = nn.Parameter(torch.ones(cfg.model_dim))
        self.mlp_scale = nn.Parameter(torch.ones(cfg.model_dim))
        self.ln_scale = 1.0 / math.sqrt(layer + 1) if cfg.ln_scale else 1.0
        # Parallel residuals (PARALLEL_START_LAYER): per-lane residual weights r (init 1.1) and the
        # weights p with which the attention and MLP outputs enter each lane (init 1), as the record.
        self.parallel = bool(cfg.parallel_start_layer) and layer >= cfg.parallel_start_layer
        if self.parallel:
            self.lane_resid = nn.Parameter(torch.full((2,), 1.1))
            self.lane_post = nn.Parameter(torch.ones(4))  # [attn->lane0, attn->lane1, mlp->lane0, mlp->lane1]

    def forward(self, x: Tensor, x0: Tensor, ve: Tensor | None = None, doc_mask: Tensor | None = None,
                lora: "LoRASlot | None" = None) -> Tensor:
        mix = self.resid_mix.to(x.dtype)
        x = mix[0] * x + mix[1] * x0
        x = x + self.attn_scale.to(x.dtype) * self.attn(rms_norm(x) * self.ln_scale, ve, doc_mask, lora)
        return x + self.mlp_scale.to(x.dtype) * self._mlp(rms_norm(x) * self.ln_scale, lora)

    def _mlp(self, n: Tensor, lora: "LoRASlot | None") -> Tensor:
        """MLP(n), plus the MLP-LoRA's n -> dim delta under LoRA TTT."""
        out = self.mlp(n)
        return out + lora.mlp(n) if lora is not None and lora.mlp is not None else out

    def forward_lanes(self, lane0: Tensor, lane1: Tensor, x0: Tensor, ve: Tensor | None = None,
                      doc_mask: Tensor | None = None, lora: "LoRASlot | None" = None) -> tuple[Tensor, Tensor]:
        """Two lanes, attention and MLP side by side:
        a = attn_scale·Attn(rms(m0·lane0 + m1·x0)·s),  m = mlp_scale·MLP(rms(lane1)·s),
        lane0 <- r0·lane0 + p0·a + p2·m,  lane1 <- r1·lane1 + p1·a + p3·m."""
        mix = self.resid_mix.to(lane0.dtype)
        attn_out = self.attn_scale.to(lane0.dtype) * self.attn(rms_norm(mix[0] * lane0 + mix[1] * x0) * self.ln_scale, ve, doc_mask, lora)
        mlp_out = self.mlp_scale.to(lane1.dtype) * self._mlp(rms_norm(lane1) * self.ln_scale, lora)
        r, p = self.lane_resid.to(lane0.dtype), self.lane_post.to(lane0.dtype)
        return r[0] * lane0 + p[0] * attn_out + p[2] * mlp_out, r[1] * lane1 + p[1] * attn_out + p[3] * mlp_out


class ValueEmbedding(nn.Module):
    """Token-indexed values added to V on chosen layers: ve_scale[l] · proj(table[t]).

    One table and projection shared by those layers, a learned scalar per layer
    (init 1). The table starts at zero and the projection orthogonal, so V is
    unchanged at init and both still learn (as in BigramHash).
    """

    def __init__(self, vocab: int, dim: int, kv_dim: int, n_layers: int):
        super().__init__()
        self.table = nn.Embedding(vocab, dim)
        self.proj = BlockLinear(dim, kv_dim)
        self.ve_scale = nn.Parameter(torch.ones(n_layers))
        nn.init.zeros_(self.table.weight)
        nn.init.orthogonal_(self.proj.weight)

    def forward(self, idx: Tensor) -> Tensor:
        return self.proj(self.table(idx))


class SoftcappedCrossEntropy(torch.autograd.Function):
    """Per-row cross-entropy of soft-capped logits, z = c·tanh(x/c):  loss = logsumexp(z) - z[target].

    The backward recomputes z from the raw logits x instead of keeping it (the record's fused
    Triton kernel does the same in one pass on the GPU):
    dloss/dx = g · (softmax(z) - onehot(target)) · (1 - tanh²(x/c)).
    """

    @staticmethod
    def forward(ctx, logits: Tensor, targets: Tensor, softcap: float) -> Tensor:
        z = softcap * torch.tanh(logits.float() / softcap)
        lse = torch.logsumexp(z, dim=-1)
        ctx.save_for_backward(logits, targets, lse)
        ctx.softcap = softcap
        return lse - z.gather(1, targets[:, None]).squeeze(1)

    @staticmethod
    def backward(ctx, grad_loss: Tensor) -> tuple[Tensor, None, None]:
        logits, targets, lse = ctx.saved_tensors
        t = torch.tanh(logits.float() / ctx.softcap)
        grad = torch.exp(ctx.softcap * t - lse[:, None])
        grad.scatter_add_(1, targets[:, None], torch.full_like(lse[:, None], -1.0))
        grad = grad * grad_loss[:, None].float() * (1.0 - t * t)
        return grad.to(logits.dtype), None, None


def block_order(cfg: TrainerConfig, looping: bool) -> tuple[list[int], list[int]]:
    """The blocks run by the encoder (first) half and the decoder half, in order.

    Without looping: 0..L-1 split at L//2. With NUM_LOOPS = n looping:
    0..s-1, then [s..e] n+1 times, then e+1..L-1 (s = LOOP_START, e = LOOP_END), split at
    half its length, so skip connections pair positions of the looped order.
    """
    order = list(range(cfg.num_layers))
    if cfg.num_loops and looping:
        segment = list(range(cfg.loop_start, cfg.loop_end + 1))
        order = order[: cfg.loop_start] + segment * (cfg.num_loops + 1) + order[cfg.loop_end + 1:]
    half = len(order) // 2
    return order[:half], order[half:]


class GPT(nn.Module):
    """The language model; ``forward_logits(idx)`` and ``forward(idx, targets) -> mean CE``."""

    def __init__(self, cfg: TrainerConfig):
        super().__init__()
        self.cfg = cfg
        # DOC_ATTENTION runs on FlexAttention (CUDA) or SDPA with a dense mask (FlashAttention's varlen path is not wired in)
        use_fa3 = (fa3_attn_func is not None and cfg.attention_backend in ("auto", "fa3") and torch.cuda.is_available()
                   and not cfg.doc_attention)
        if cfg.attention_backend == "fa3" and not use_fa3:
            raise ConfigError([ConfigIssue("ATTENTION_BACKEND", "fa3", "FlashAttention 3 (flash_attn_interface) does not import on this machine")])
        flex = cfg.doc_attention and BlockMask is not None and torch.cuda.is_available()
        self.attention_impl = "fa3" if use_fa3 else "flex" if flex else "sdpa"
        self.tok_emb = nn.Embedding(cfg.vocab_size, cfg.model_dim)
        nn.init.normal_(self.tok_emb.weight, std=cfg.tied_embed_init_std)
        self.bigram = BigramHash(cfg.bigram_vocab_size, cfg.bigram_dim, cfg.model_dim) if cfg.bigram_vocab_size else None
        self.smear = None
        if cfg.smear_gate:
            self.smear = (WindowSmearGate(cfg.gate_window, cfg.bos_token_id) if cfg.smear_gate_kind == "window"
                          else SmearGate(cfg.model_dim, cfg.bos_token_id))
        first_xsa = cfg.num_layers - cfg.xsa_last_n
        self.blocks = nn.ModuleList(Block(cfg, i, i >= first_xsa, use_fa3) for i in range(cfg.num_layers))
        self.ve_layers = {layer: n for n, layer in enumerate(cfg.ve_layer_list)} if cfg.ve_enabled else {}
        self.ve = ValueEmbedding(cfg.vocab_size, cfg.ve_dim, cfg.num_kv_heads * cfg.head_dim, len(self.ve_layers)) if self.ve_layers else None
        # Depth recurrence: the blocks' order when looping; off until train.py's schedule turns it
        # on, then on for every evaluation (GPT starts with it on, as the record's eval models do).
        self.looping = cfg.num_loops > 0
        encoder, decoder = block_order(cfg, self.looping)
        self.num_skips = min(len(encoder), len(decoder)) if cfg.unet_skips else 0
        self.skip_weights = nn.Parameter(torch.ones(self.num_skips, cfg.model_dim)) if self.num_skips else None
        # SKIP_GATES: [num_skips · dim] flat, so the artifact and the optimiser treat it as a control tensor
        self.skip_gates = nn.Parameter(torch.zeros(self.num_skips * cfg.model_dim)) if cfg.skip_gates and self.num_skips else None
        self.lm_head = None
        if not cfg.tie_embeddings:
            self.lm_head = BlockLinear(cfg.model_dim, cfg.vocab_size)
            nn.init.zeros_(self.lm_head.weight)
        for m in self.modules():  # late QAT trains toward the grid the artifact will use
            if isinstance(m, BlockLinear):
                m.clip_floor = cfg.quant_clip_floor

    def set_qat(self, enabled: bool) -> None:
        """Switch int6 fake-quantisation of every block matrix on or off."""
        for m in self.modules():
            if isinstance(m, BlockLinear):
                m.qat = enabled

    def hidden(self, idx: Tensor, lora: "TTTLoRA | None" = None) -> Tensor:
        """Final normalised hidden states [B, T, D]; with ``lora`` (LoRA TTT) each block visit, in
        the order run, adds its own slot's deltas."""
        x = self.tok_emb(idx)
        if self.bigram is not None:
            x = x + self.bigram(idx, self.cfg.bos_token_id if self.cfg.doc_attention else None)
        if isinstance(self.smear, WindowSmearGate):  # the record smears before the norm
            x = self.smear(x, idx)
        x = rms_norm(x)
        if isinstance(self.smear, SmearGate):
            x = self.smear(x, idx)
        # Under autocast the fp32 embedding table (and rms_norm) would leave the whole
        # residual stream in fp32; in bf16 every element-wise op, norm and per-channel
        # gradient reduction of the blocks moves half the bytes (RESIDUAL_DTYPE).
        if self.cfg.residual_dtype == "bf16" and torch.is_autocast_enabled(x.device.type):
            x = x.to(torch.get_autocast_dtype(x.device.type))
        x0 = x
        ve = self.ve(idx) if self.ve is not None else None
        encoder, decoder = block_order(self.cfg, self.looping)
        # DOC_ATTENTION: one mask for every layer, so no token attends across a BOS
        doc_mask = document_attention_mask(idx, self.cfg.bos_token_id) if self.cfg.doc_attention else None
        slots = lora.slots() if lora is not None else [None] * (len(encoder) + len(decoder))
        skips: list[Tensor] = []
        for s, i in enumerate(encoder):
            x = self.blocks[i](x, x0, self._ve_for(i, ve), doc_mask, slots[s])
            if self.num_skips:
                skips.append(x)
        lanes: tuple[Tensor, Tensor] | None = None  # parallel residuals, from PARALLEL_START_LAYER on
        for j, i in enumerate(decoder):
            block = self.blocks[i]
            if block.parallel and lanes is None:
                lanes = (x, x)
            if j < self.num_skips and skips:
                if lanes is None:
                    x = self._add_skip(x, j, skips.pop())
                else:  # the skip enters the attention lane
                    lanes = (self._add_skip(lanes[0], j, skips.pop()), lanes[1])
            slot = slots[len(encoder) + j]
            if lanes is None:
                x = block(x, x0, self._ve_for(i, ve), doc_mask, slot)
            else:
                lanes = block.forward_lanes(*lanes, x0, self._ve_for(i, ve), doc_mask, slot)
        if lanes is not None:
            final = self.cfg.parallel_final_lane
            x = lanes[0] if final == "attn" else lanes[1] if final == "mlp" else 0.5 * (lanes[0] + lanes[1])
        return rms_norm(x)

    def _add_skip(self, x: Tensor, j: int, skip: Tensor) -> Tensor:
        """x + w_j·skip, or with SKIP_GATES lerp(w_j·skip, x, sigmoid(g_j)) = w_j·skip + sigmoid(g_j)·(x - w_j·skip)."""
        scaled = self.skip_weights[j].to(x.dtype) * skip
        if self.skip_gates is None:
            return x + scaled
        g = torch.sigmoid(self.skip_gates.view(self.num_skips, -1)[j].to(x.dtype))
        return torch.lerp(scaled, x, g)

    def _ve_for(self, layer: int, ve: Tensor | None) -> Tensor | None:
        """Block LAYER's value embedding, ve_scale[layer] · ve, or None."""
        if layer not in self.ve_layers:
            return None
        return self.ve.ve_scale[self.ve_layers[layer]].to(ve.dtype) * ve

    def raw_logits(self, idx: Tensor) -> Tensor:
        """Logits before the soft cap, in the compute dtype [B, T, V]."""
        h = self.hidden(idx)
        return self.lm_head(h) if self.lm_head is not None else F.linear(h, self.tok_emb.weight.to(h.dtype))

    def forward_logits(self, idx: Tensor) -> Tensor:
        """Soft-capped logits c·tanh(z/c), float32 [B, T, V]."""
        z = self.raw_logits(idx).float()
        c = self.cfg.logit_softcap
        return c * torch.tanh(z / c) if c > 0 else z

    def forward_ttt(self, idx: Tensor, targets: Tensor, lora: "TTTLoRA") -> Tensor:
        """Per-token cross-entropy [B, T] (float32) of the model plus LoRA TTT's per-sequence deltas:
        logits = c·tanh((W_out h + (α/r)·(h A_bᵀ) B_bᵀ)/c), h the final hidden state under the blocks' deltas."""
        h = self.hidden(idx, lora)
        z = self.lm_head(h) if self.lm_head is not None else F.linear(h, self.tok_emb.weight.to(h.dtype))
        z = (z + lora.lm_head(h)).float()
        c = self.cfg.logit_softcap
        logits = c * torch.tanh(z / c) if c > 0 else z
        return F.cross_entropy(logits.reshape(-1, logits.size(-1)), targets.reshape(-1), reduction="none").view_as(targets)

    def forward(self, idx: Tensor, targets: Tensor) -> Tensor:
        """Mean next-token cross-entropy (nats)."""
        if self.cfg.fused_ce:
            z = self.raw_logits(idx)
            return SoftcappedCrossEntropy.apply(z.reshape(-1, z.size(-1)), targets.reshape(-1), self.cfg.logit_softcap).mean()
        logits = self.forward_logits(idx)
        return F.cross_entropy(logits.reshape(-1, logits.size(-1)), targets.reshape(-1))


# --- LoRA test-time training (TTT_MODE=lora_phased) -------------------------------------------


class BatchedLoRA(nn.Module):
    """One low-rank delta per sequence of a batch: y_b = (α/r) · (x_b A_bᵀ) B_bᵀ.

    A [B, r, in] ~ U(±1/√in), B [B, out, r] = 0, so the delta starts at zero. ``reset`` zeroes B
    and, unless ``warm_start_a``, redraws A (the record keeps A across documents of a phase)."""

    def __init__(self, batch: int, fan_in: int, fan_out: int, rank: int, alpha: float, warm_start_a: bool):
        super().__init__()
        self.bound, self.scale, self.warm_start_a = 1.0 / math.sqrt(fan_in), alpha / rank, warm_start_a
        self.A = nn.Parameter(torch.empty(batch, rank, fan_in).uniform_(-self.bound, self.bound))
        self.B = nn.Parameter(torch.zeros(batch, fan_out, rank))

    def reset(self) -> None:
        with torch.no_grad():
            if not self.warm_start_a:
                self.A.uniform_(-self.bound, self.bound)
            self.B.zero_()

    def forward(self, x: Tensor) -> Tensor:
        return (x @ self.A.transpose(1, 2).to(x.dtype)) @ self.B.transpose(1, 2).to(x.dtype) * self.scale


class LoRASlot:
    """The deltas of one block visit: q, k, v (k optional) and o from the attention's normed input,
    mlp from the MLP's normed input to the residual width (o and mlp optional)."""

    def __init__(self, q: BatchedLoRA, k: BatchedLoRA | None, v: BatchedLoRA, o: BatchedLoRA | None, mlp: BatchedLoRA | None):
        self.q, self.k, self.v, self.o, self.mlp = q, k, v, o, mlp


class TTTLoRA(nn.Module):
    """LoRA TTT's adapters for ``batch`` documents: one slot per block visit of the model's order
    (a looped block gets one per pass) plus the output head. Built in the record's order (head, q, v,
    k, mlp, o), so the same RNG state draws the same A."""

    def __init__(self, model: GPT, batch: int, rank: int, alpha: float, warm_start_a: bool,
                 k_lora: bool = True, mlp_lora: bool = True, o_lora: bool = True):
        super().__init__()
        cfg = model.cfg
        encoder, decoder = block_order(cfg, model.looping)
        n, dim, kv = len(encoder) + len(decoder), cfg.model_dim, cfg.num_kv_heads * cfg.head_dim
        self.batch = batch

        def make(fan_in: int, fan_out: int) -> BatchedLoRA:
            return BatchedLoRA(batch, fan_in, fan_out, rank, alpha, warm_start_a)

        self.lm_head = make(dim, cfg.vocab_size)
        self.q = nn.ModuleList(make(dim, dim) for _ in range(n))
        self.v = nn.ModuleList(make(dim, kv) for _ in range(n))
        self.k = nn.ModuleList(make(dim, kv) for _ in range(n)) if k_lora else None
        self.mlp = nn.ModuleList(make(dim, dim) for _ in range(n)) if mlp_lora else None
        self.o = nn.ModuleList(make(dim, dim) for _ in range(n)) if o_lora else None

    def slots(self) -> list[LoRASlot]:
        pick = lambda ms, i: ms[i] if ms is not None else None  # noqa: E731
        return [LoRASlot(self.q[i], pick(self.k, i), self.v[i], pick(self.o, i), pick(self.mlp, i)) for i in range(len(self.q))]

    def reset(self) -> None:
        for m in self.modules():
            if isinstance(m, BatchedLoRA):
                m.reset()


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
