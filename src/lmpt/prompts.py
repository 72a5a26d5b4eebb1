"""Prompt learner, text encoding on prompt embeddings, and caption token embeddings.

The prompt of class c is ``[SOS] ctx_1 … ctx_n <class name> . [EOT] pad…``: the context vectors
``ctx`` are the only trainable parameters of LMPT (class-specific: ``[C, n_ctx, width]``; shared:
``[n_ctx, width]``). The frozen text transformer runs on the prompt embeddings cut to the longest
EOT position + 1: because the mask is causal, the EOT feature is the same as with the full context.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .errors import ConfigError


@dataclass
class PromptConfig:
    """How the class prompts are built.

    Attributes:
        n_ctx: number of learned context tokens (ignored when ``ctx_init`` is given: its token count wins).
        class_specific: one context per class (LMPT/CoOp-CSC) or one shared by all classes.
        ctx_init: initialise the context from these words (e.g. ``"a photo of a"``) instead of N(0, std²).
        init_std: standard deviation of the random initialisation.
        suffix: text after the class name (the reference uses ``"."``).
    """

    n_ctx: int = 16
    class_specific: bool = True
    ctx_init: Optional[str] = None
    init_std: float = 0.02
    suffix: str = "."


def ctx_init_length(ctx_init: str) -> int:
    """The number of context tokens ``model.ctx_init`` gives (its BPE tokens): this is the run's n_ctx."""
    from open_clip.tokenizer import SimpleTokenizer

    return len(SimpleTokenizer().encode(" ".join(ctx_init.replace("_", " ").split())))


def eot_positions(tokens: torch.Tensor) -> torch.Tensor:
    """Index of the end-of-text token: CLIP's EOT has the largest id in the vocabulary."""
    return tokens.argmax(dim=-1)


def _plain_blocks(transformer: nn.Module) -> Optional[list[nn.Module]]:
    """open_clip's standard pre-norm blocks (batch-first, self-attention), else None."""
    try:
        from open_clip.transformer import ResidualAttentionBlock
    except ImportError:  # pragma: no cover - open_clip is a dependency
        return None
    blocks = list(getattr(transformer, "resblocks", []))
    if (not blocks or not getattr(transformer, "batch_first", False) or getattr(transformer, "grad_checkpointing", False)
            or torch.jit.is_scripting()):
        return None
    for blk in blocks:
        if (type(blk) is not ResidualAttentionBlock or hasattr(blk, "ln_1_kv")
                or not isinstance(blk.attn, nn.MultiheadAttention) or not blk.attn.batch_first):
            return None
    return blocks


def _last_block_at(blk: nn.Module, x: torch.Tensor, eot: torch.Tensor) -> torch.Tensor:
    """The last residual block evaluated only at the EOT rows: ``x [N, L, W]`` -> ``[N, W]``.

    Keys and values still come from every position (up to each prompt's EOT, as the causal mask allows);
    queries, the output projection and the MLP run on one token per prompt instead of ``L``.
    """
    n, length, _ = x.shape
    rows = torch.arange(n, device=x.device)
    h = blk.ln_1(x)
    q = h[rows, eot].unsqueeze(1)
    pos = torch.arange(length, device=x.device)
    mask = torch.zeros(n, length, dtype=x.dtype, device=x.device)
    mask = mask.masked_fill(pos[None, :] > eot[:, None], float("-inf"))
    mask = mask.repeat_interleave(blk.attn.num_heads, dim=0).unsqueeze(1)  # [N * heads, 1, L]
    out = x[rows, eot] + blk.ls_1(blk.attn(q, h, h, need_weights=False, attn_mask=mask)[0].squeeze(1))
    return out + blk.ls_2(blk.mlp(blk.ln_2(out)))


def encode_token_embeddings(clip_model: nn.Module, x: torch.Tensor, eot: torch.Tensor,
                            eot_only: bool = True) -> torch.Tensor:
    """Run CLIP's text transformer on token embeddings ``x [N, L, width]`` and pool at ``eot [N]``.

    ``L`` may be shorter than the context length (positions after every EOT are dropped); the causal
    mask is sliced to ``[L, L]``. With ``eot_only`` (default) and open_clip's standard blocks, the last
    block runs its queries and MLP at the EOT rows only, the one output that is read: the same
    features for a fraction of that block's work. Returns unnormalised text features ``[N, embed_dim]``.
    """
    length = x.shape[1]
    cast = clip_model.transformer.get_cast_dtype() if hasattr(clip_model.transformer, "get_cast_dtype") else x.dtype
    x = x.to(cast) + clip_model.positional_embedding[:length].to(cast)
    mask = clip_model.attn_mask
    mask = mask[:length, :length] if mask is not None else None
    blocks = _plain_blocks(clip_model.transformer) if eot_only else None
    if blocks is None:
        x = clip_model.transformer(x, attn_mask=mask)
        x = x[torch.arange(x.shape[0], device=x.device), eot]
    else:
        for blk in blocks[:-1]:
            x = blk(x, attn_mask=mask)
        x = _last_block_at(blocks[-1], x, eot)
    x = clip_model.ln_final(x)
    proj = clip_model.text_projection
    if proj is None:
        return x
    return proj(x) if isinstance(proj, nn.Linear) else x @ proj


class PromptLearner(nn.Module):
    """Learnable context vectors plus the frozen embeddings of SOS, class names and EOT.

    Args:
        class_names: one readable name per class, in label order.
        token_embedding: CLIP's (frozen) token embedding.
        tokenizer: ``list[str] -> LongTensor[N, context_length]``.
        cfg: prompt options.
    """

    def __init__(self, class_names: Sequence[str], token_embedding: nn.Embedding,
                 tokenizer: Callable[[list[str]], torch.Tensor], cfg: Optional[PromptConfig] = None) -> None:
        super().__init__()
        cfg = cfg or PromptConfig()
        self.cfg = cfg
        self.class_names = list(class_names)
        num_classes = len(self.class_names)
        width = token_embedding.weight.shape[1]
        device = token_embedding.weight.device

        if cfg.ctx_init:
            init_text = " ".join(cfg.ctx_init.replace("_", " ").split())
            init_tokens = tokenizer([init_text])[0]
            n_ctx = int(eot_positions(init_tokens[None])[0]) - 1
            if n_ctx < 1:
                raise ConfigError(f"model.ctx_init={cfg.ctx_init!r} gives no tokens; give words such as 'a photo of a'")
            with torch.no_grad():
                init = token_embedding(init_tokens[1:1 + n_ctx].to(device)).float()
            prefix_text = init_text
        else:
            n_ctx = int(cfg.n_ctx)
            if n_ctx < 1:
                raise ValueError(f"n_ctx must be >= 1, got {n_ctx}")
            init = None
            prefix_text = " ".join(["X"] * n_ctx)
        self.n_ctx = n_ctx

        shape = (num_classes, n_ctx, width) if cfg.class_specific else (n_ctx, width)
        if init is not None:
            ctx = init.expand(shape).clone() if cfg.class_specific else init.clone()
        else:
            ctx = torch.randn(shape) * cfg.init_std  # global RNG: seed with torch.manual_seed first
        self.ctx = nn.Parameter(ctx.float().to(device))

        prompts = [f"{prefix_text} {name}{cfg.suffix}" for name in self.class_names]
        tokens = tokenizer(prompts).to(device)
        eot = eot_positions(tokens)
        context_length = tokens.shape[1]
        if int(eot.max()) >= context_length - 1 and (tokens[:, -1] != 0).any():
            longest = self.class_names[int(eot.argmax())]
            raise ConfigError(f"the prompt for class '{longest}' does not fit in {context_length} tokens; "
                             "use a shorter class name or fewer context tokens")
        with torch.no_grad():
            emb = token_embedding(tokens).float()
        self.register_buffer("tokens", tokens, persistent=False)
        self.register_buffer("eot", eot, persistent=False)
        self.register_buffer("token_prefix", emb[:, :1].clone(), persistent=False)
        self.register_buffer("token_suffix", emb[:, 1 + n_ctx:].clone(), persistent=False)
        self.seq_len = int(eot.max()) + 1

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def context_length(self) -> int:
        return int(self.tokens.shape[1])

    def context(self) -> torch.Tensor:
        """The context as ``[C, n_ctx, width]`` (a shared context is broadcast)."""
        if self.ctx.dim() == 2:
            return self.ctx.unsqueeze(0).expand(self.num_classes, -1, -1)
        return self.ctx

    def forward(self, length: Optional[int] = None) -> torch.Tensor:
        """Prompt token embeddings ``[C, length, width]``; default length = longest EOT + 1."""
        length = self.seq_len if length is None else int(length)
        if not 1 + self.n_ctx <= length <= self.context_length:
            raise ValueError(f"prompt length {length} outside [{1 + self.n_ctx}, {self.context_length}]")
        suffix = self.token_suffix[:, : length - 1 - self.n_ctx]
        ctx = self.context().to(suffix.dtype)
        return torch.cat([self.token_prefix, ctx, suffix], dim=1)


@dataclass
class CaptionEmbeddings:
    """Token embeddings of training captions for the CSE loss (never run through the transformer).

    Attributes:
        embeddings: ``[N, L, width]`` CLIP input token embeddings, L2-normalised per position.
        mask: ``[N, L]`` 1 at the caption's own positions (SOS … EOT), 0 at padding.
        length: ``L``, chosen so the caption and the shifted prompt both fit (see :func:`cse_length`).
    """

    embeddings: torch.Tensor
    mask: torch.Tensor

    @property
    def length(self) -> int:
        return int(self.embeddings.shape[1])


def cse_length(caption_len: int, prompt_len: int, shift: int, context_length: int) -> int:
    """Sequence length L for the CSE loss: caption position t pairs with prompt position t + shift.

    Positions where both the caption and the shifted prompt are padding contribute nothing (both are
    the same pad embedding, distance 0), so L = max(caption_len, prompt_len - shift) + shift, capped
    at the context length, gives the same loss as the reference's full 77 positions.
    """
    return min(context_length, max(caption_len, prompt_len - shift) + shift)


@torch.no_grad()
def embed_captions(captions: Sequence[str], token_embedding: nn.Embedding,
                   tokenizer: Callable[[list[str]], torch.Tensor], length: Optional[int] = None,
                   max_chars: Optional[int] = 75, batch_size: int = 4096) -> CaptionEmbeddings:
    """Tokenise captions (cut to ``max_chars`` characters first, as the reference does) and embed them.

    ``length`` pads or crops the result to that many positions (default: longest EOT + 1).
    """
    texts = [c if max_chars is None else c[:max_chars] for c in captions]
    tokens = torch.cat([tokenizer(texts[i:i + batch_size]) for i in range(0, len(texts), batch_size)]) \
        if texts else torch.zeros(0, 1, dtype=torch.long)
    eot = eot_positions(tokens)
    longest = int(eot.max()) + 1 if len(texts) else 1
    length = longest if length is None else int(length)
    if length > tokens.shape[1]:
        raise ValueError(f"length {length} exceeds the context length {tokens.shape[1]}")
    tokens = tokens[:, :length]
    device = token_embedding.weight.device
    emb = torch.cat([token_embedding(tokens[i:i + batch_size].to(device)).float()
                     for i in range(0, len(texts), batch_size)]) if texts else \
        torch.zeros(0, length, token_embedding.weight.shape[1])
    mask = (torch.arange(length, device=eot.device)[None, :] <= eot[:, None]).float()
    return CaptionEmbeddings(embeddings=F.normalize(emb, dim=-1), mask=mask.to(emb.device))
