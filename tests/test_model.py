"""Backbone loading, prompt learner, text encoding and the prompt-tuned model."""
from __future__ import annotations

import time

import open_clip
import pytest
import torch
import torch.nn.functional as F

from lmpt.backbone import create_clip, load_weights_file
from lmpt.errors import CheckpointError, ConfigError, UserError
from lmpt.model import PromptCLIP
from lmpt.prompts import PromptConfig, cse_length, embed_captions, encode_token_embeddings

from conftest import TINY_RN, TINY_VIT

NAMES = ["cat", "dining table", "tv monitor", "potted plant"]


def _images(n=3, size=32, seed=0):
    return torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(seed))


def test_truncated_text_encoding_equals_full_length(tiny_backbone):
    torch.manual_seed(0)
    model = PromptCLIP(tiny_backbone, NAMES)
    pl = model.prompt_learner
    assert pl.seq_len < pl.context_length == 77
    short = encode_token_embeddings(model.clip, pl(), pl.eot)
    full = encode_token_embeddings(model.clip, pl(77), pl.eot)
    assert short.shape == full.shape == (len(NAMES), 32)
    torch.testing.assert_close(short, full, atol=1e-5, rtol=1e-5)


def test_eot_only_last_block_equals_full_transformer(tiny_backbone):
    """The EOT-only last block gives the features and the context gradient of the full pass."""
    from lmpt.prompts import _plain_blocks

    assert _plain_blocks(tiny_backbone.model.transformer) is not None  # the fast path is the one tested
    torch.manual_seed(0)
    model = PromptCLIP(tiny_backbone, NAMES)
    pl = model.prompt_learner
    assert len(set(pl.eot.tolist())) > 1  # prompts of different lengths: per-prompt masks matter
    with torch.no_grad():
        pl.ctx.normal_(0, 0.5)
    grads = []
    for eot_only in (True, False):
        feats = encode_token_embeddings(model.clip, pl(), pl.eot, eot_only=eot_only)
        pl.ctx.grad = None
        (feats * torch.linspace(-1, 1, feats.shape[1])).sum().backward()
        grads.append((feats.detach(), pl.ctx.grad.clone()))
    torch.testing.assert_close(grads[0][0], grads[1][0], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(grads[0][1], grads[1][1], atol=1e-6, rtol=1e-4)


def test_prompt_features_match_open_clip_encode_text(tiny_backbone):
    """With the context set to the embedding of 'X', the prompt path equals CLIP's own text path."""
    model = PromptCLIP(tiny_backbone, NAMES)
    pl = model.prompt_learner
    tokens = tiny_backbone.tokenizer([" ".join(["X"] * 16) + f" {n}." for n in NAMES])
    with torch.no_grad():
        x_emb = model.clip.token_embedding(tokens[:, 1:17])
        pl.ctx.copy_(x_emb)
        ours = model.encode_text(normalize=False)
        ref = model.clip.encode_text(tokens)
    torch.testing.assert_close(ours, ref, atol=1e-5, rtol=1e-5)


def test_ctx_init_from_words_and_shared_context(tiny_backbone):
    model = PromptCLIP(tiny_backbone, NAMES, PromptConfig(ctx_init="a photo of a", class_specific=False))
    pl = model.prompt_learner
    assert pl.n_ctx == 4 and pl.ctx.shape == (4, 64)
    tokens = tiny_backbone.tokenizer([f"a photo of a {n}." for n in NAMES])
    with torch.no_grad():
        ref = model.clip.encode_text(tokens)
        ours = model.encode_text(normalize=False)
    torch.testing.assert_close(ours, ref, atol=1e-5, rtol=1e-5)
    csc = PromptCLIP(tiny_backbone, NAMES, PromptConfig(ctx_init="a photo of a", class_specific=True))
    assert csc.prompt_learner.ctx.shape == (len(NAMES), 4, 64)


def test_random_context_init_shape_and_scale(tiny_backbone):
    torch.manual_seed(0)
    model = PromptCLIP(tiny_backbone, ["a"] * 20, PromptConfig(n_ctx=16))
    ctx = model.prompt_learner.ctx
    assert ctx.shape == (20, 16, 64) and ctx.dtype == torch.float32
    assert abs(ctx.std().item() - 0.02) < 0.002 and abs(ctx.mean().item()) < 0.002


def test_logits_are_scaled_cosine(tiny_backbone):
    model = PromptCLIP(tiny_backbone, NAMES)
    feats = torch.randn(5, 32)
    logits = model(feats)
    text = model.encode_text(normalize=False)
    expected = model.clip.logit_scale.exp() * F.cosine_similarity(feats[:, None, :], text[None, :, :], dim=-1)
    torch.testing.assert_close(logits, expected, atol=1e-4, rtol=1e-5)


def test_gradients_reach_only_the_context(tiny_backbone):
    model = PromptCLIP(tiny_backbone, NAMES).train()
    assert not model.clip.training
    feats = model.encode_image(_images())
    loss = model(feats).logsumexp(dim=1).mean()
    loss.backward()
    assert model.prompt_learner.ctx.grad is not None and model.prompt_learner.ctx.grad.abs().sum() > 0
    assert [n for n, p in model.named_parameters() if p.requires_grad] == ["prompt_learner.ctx"]
    assert all(p.grad is None for p in model.clip.parameters())


def test_prompt_state_roundtrip(tiny_backbone):
    a = PromptCLIP(tiny_backbone, NAMES)
    b = PromptCLIP(tiny_backbone, NAMES)
    with torch.no_grad():
        a.prompt_learner.ctx.normal_()
    b.load_prompt_state(a.prompt_state())
    torch.testing.assert_close(a.encode_text(), b.encode_text())
    with pytest.raises(CheckpointError, match="does not match"):
        PromptCLIP(tiny_backbone, NAMES[:2]).load_prompt_state(a.prompt_state())


def test_caption_embeddings_and_cse_length(tiny_backbone):
    emb = embed_captions(["a cat on a dining table", "x" * 200], tiny_backbone.model.token_embedding,
                         tiny_backbone.tokenizer, max_chars=75)
    tok = tiny_backbone.tokenizer(["a cat on a dining table"])[0]
    eot0 = int(tok.argmax())
    assert emb.mask[0].sum().item() == eot0 + 1
    assert emb.embeddings.shape[0] == 2 and emb.mask.shape == emb.embeddings.shape[:2]
    torch.testing.assert_close(emb.embeddings.norm(dim=-1), torch.ones(emb.embeddings.shape[:2]))
    ref = F.normalize(tiny_backbone.model.token_embedding(tok[: emb.length]).float(), dim=-1)
    torch.testing.assert_close(emb.embeddings[0], ref)
    assert cse_length(caption_len=12, prompt_len=21, shift=2, context_length=77) == 21
    assert cse_length(caption_len=30, prompt_len=21, shift=2, context_length=77) == 32
    assert cse_length(caption_len=77, prompt_len=21, shift=2, context_length=77) == 77


# ---- weight files ---------------------------------------------------------------------------

def _reference_model(arch, quick_gelu):
    torch.manual_seed(123)
    return open_clip.create_model(arch, force_quick_gelu=quick_gelu).eval()


def _text_and_image_features(model, size):
    with torch.no_grad():
        tokens = open_clip.tokenize(["a photo of a cat."])
        return model.encode_image(_images(2, size)), model.encode_text(tokens)


@pytest.mark.parametrize("arch,size", [(TINY_VIT, 32), (TINY_RN, 64)])
def test_openai_state_dict_layout_loads_with_quickgelu(tmp_path, arch, size):
    ref = _reference_model(arch, quick_gelu=True)
    sd = {k: v.half() if v.is_floating_point() else v for k, v in ref.state_dict().items()}
    sd.update(input_resolution=torch.tensor(size), context_length=torch.tensor(77), vocab_size=torch.tensor(49408))
    path = tmp_path / "openai_layout.pt"
    torch.save(sd, path)
    assert load_weights_file(path).openai
    bb = create_clip(arch, str(path))
    assert bb.quick_gelu
    ref_half = _reference_model(arch, quick_gelu=True)
    ref_half.load_state_dict({k: v.float() for k, v in ref.half().float().state_dict().items()})
    for ours, theirs in zip(_text_and_image_features(bb.model, size), _text_and_image_features(ref_half, size)):
        torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=1e-4)
    # and the GELU model gives different features: the detection matters
    gelu = create_clip(arch, str(path), quick_gelu=False)
    assert not torch.allclose(_text_and_image_features(gelu.model, size)[1], _text_and_image_features(bb.model, size)[1])


@pytest.mark.parametrize("arch,size", [(TINY_VIT, 32), (TINY_RN, 64)])
def test_fp16_gelu_export_is_not_taken_for_openai(tmp_path, arch, size, caplog):
    """A GELU model exported as an fp16 state dict keeps GELU: only OpenAI's marker entries mean QuickGELU."""
    ref = _reference_model(arch, quick_gelu=False)
    half = {k: v.half() if v.is_floating_point() else v for k, v in ref.state_dict().items()}
    path = tmp_path / "gelu_fp16.pt"
    torch.save(half, path)
    with caplog.at_level("WARNING", logger="lmpt"):
        loaded = load_weights_file(path)
    assert not loaded.openai
    assert "model.quick_gelu=true" in caplog.text
    bb = create_clip(arch, str(path))
    assert not bb.quick_gelu
    expected = _reference_model(arch, quick_gelu=False)
    expected.load_state_dict({k: v.float() for k, v in half.items()})
    for ours, theirs in zip(_text_and_image_features(bb.model, size), _text_and_image_features(expected, size)):
        torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=1e-4)
    # the override still forces QuickGELU
    assert create_clip(arch, str(path), quick_gelu=True).quick_gelu


def test_openai_torchscript_archive_loads_with_quickgelu(tmp_path):
    ref = _reference_model(TINY_VIT, quick_gelu=True)
    del ref.context_length, ref.vocab_size
    for key, val in (("input_resolution", 32), ("context_length", 77), ("vocab_size", 49408)):
        ref.register_buffer(key, torch.tensor(val))
    traced = torch.jit.trace(ref, (_images(1), torch.zeros(1, 77, dtype=torch.long)), check_trace=False)
    path = tmp_path / "ViT-tiny.pt"
    traced.save(str(path))
    loaded = load_weights_file(path)
    assert loaded.kind == "torchscript" and loaded.openai
    bb = create_clip(TINY_VIT, str(path))
    assert bb.quick_gelu
    expected = _reference_model(TINY_VIT, quick_gelu=True)
    for ours, theirs in zip(_text_and_image_features(bb.model, 32), _text_and_image_features(expected, 32)):
        torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=1e-4)


def test_safetensors_and_open_clip_checkpoint(tmp_path):
    from safetensors.torch import save_file

    ref = _reference_model(TINY_VIT, quick_gelu=False)
    sd = ref.state_dict()
    st = tmp_path / "w.safetensors"
    save_file({k: v.contiguous() for k, v in sd.items()}, str(st))
    ckpt = tmp_path / "epoch_3.pt"
    torch.save({"epoch": 3, "state_dict": {f"module.{k}": v for k, v in sd.items()}}, ckpt)
    a, b = create_clip(TINY_VIT, str(st)), create_clip(TINY_VIT, str(ckpt))
    assert not a.quick_gelu and not b.quick_gelu
    assert a.fingerprint == b.fingerprint
    for ours, theirs in zip(_text_and_image_features(a.model, 32), _text_and_image_features(ref, 32)):
        torch.testing.assert_close(ours, theirs)
    assert create_clip(TINY_VIT, None, seed=1).fingerprint != a.fingerprint


def test_weight_errors_are_clear(tmp_path):
    with pytest.raises(UserError, match="weights file not found: .*nope.pt"):
        create_clip(TINY_VIT, str(tmp_path / "nope.pt"))
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(UserError, match="could not read weights file .*bad.pt"):
        create_clip(TINY_VIT, str(bad))
    rn = tmp_path / "rn.pt"
    torch.save(_reference_model(TINY_RN, False).state_dict(), rn)
    with pytest.raises(UserError, match="do not fit architecture"):
        create_clip(TINY_VIT, str(rn))
    with pytest.raises(ConfigError, match="unknown backbone 'RN5O'.*RN50"):
        create_clip("RN5O")


def test_pretrained_tag_fails_fast_offline(monkeypatch):
    monkeypatch.delenv("LMPT_ALLOW_DOWNLOAD", raising=False)
    start = time.monotonic()
    with pytest.raises(UserError, match="not in the local cache.*model.pretrained=.*RN50"):
        create_clip("RN50", "openai")
    assert time.monotonic() - start < 20
    with pytest.raises(ConfigError, match="neither a weights file nor a pretrained tag"):
        create_clip("RN50", "laion9000")


def test_openai_model_names_are_accepted():
    from lmpt.backbone import check_model_name

    assert check_model_name("ViT-B/16") == "ViT-B-16"
    assert check_model_name("RN50") == "RN50"
