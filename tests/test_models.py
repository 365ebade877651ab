"""Tests of ucpcl.models that do not fit the notebook's reading flow: both presets, save and load, bad
configurations, weight files."""

import pytest
import torch
import torchvision

from ucpcl.models import (
    ENCODER_CHANNELS,
    PRESETS,
    CNNDecoder,
    Encoder,
    ModelConfig,
    NetOutput,
    ProjectionHead,
    TransformerDecoder,
    UCPCLNet,
    build_model,
    get_preset,
    part_sizes,
)


@pytest.fixture(scope="module")
def small():
    torch.manual_seed(0)
    return build_model("small")


def _img(cfg: ModelConfig, b: int = 2, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(b, cfg.in_channels, cfg.img_size, cfg.img_size, generator=g)


@pytest.mark.parametrize("preset", ["small", "paper"])
def test_output_shapes(preset):
    torch.manual_seed(0)
    net = build_model(preset)
    cfg, x = net.cfg, _img(net.cfg, b=2)
    out = net(x)
    assert isinstance(out, NetOutput)
    s = cfg.img_size
    assert out.logits_c.shape == out.logits_t.shape == (2, cfg.num_classes, s, s)
    assert out.embeddings.shape == (2, cfg.proj_dim, s // 8, s // 8)
    assert out.rot_logits.shape == (2, 4)
    assert all(t.dtype == torch.float32 and torch.isfinite(t).all() for t in out)
    feats = net.encode(x)
    assert [tuple(f.shape[1:]) for f in feats] == [
        (c, s // st, s // st) for c, st in zip(ENCODER_CHANNELS[cfg.encoder], (2, 4, 8, 16, 32))
    ]


def test_paper_sizes():
    cfg = PRESETS["paper"]
    assert (cfg.encoder, cfg.img_size, cfg.decoder_channels, cfg.embed_dims, cfg.window_size) == (
        "resnet50",
        224,
        (256, 128, 64, 32, 16),
        (96, 192, 384, 768),
        7,
    )
    net = build_model(cfg)
    assert [e.pos.shape for e in net.transformer.embed] == [
        (1, 3136, 96),
        (1, 784, 192),
        (1, 196, 384),
        (1, 49, 768),
    ]
    assert [b[0].attn.num_heads for b in net.transformer.blocks] == [3, 6, 12]
    assert [b[1].attn.shift_size for b in net.transformer.blocks] == [[3, 3]] * 3
    assert net.proj.net[0].in_channels == 512 and net.proj.net[-1].out_channels == 256
    assert net.rot.fc.in_features == 2048 and net.rot.drop.p == 0.2


def test_position_embeddings_are_trained_and_saved(small, tmp_path):
    names = dict(small.named_parameters())
    assert [k for k in names if k.endswith(".pos")] == [f"transformer.embed.{i}.pos" for i in range(4)]
    assert all(f"transformer.embed.{i}.pos" in small.state_dict() for i in range(4))
    small.train()
    small.zero_grad()
    small(_img(small.cfg)).logits_t.square().mean().backward()
    assert all(small.transformer.embed[i].pos.grad.abs().sum() > 0 for i in range(4))
    torch.save(small.state_dict(), tmp_path / "net.pth")
    torch.manual_seed(123)
    other = build_model("small").eval()
    x = _img(small.cfg, seed=1)
    small.eval()
    with torch.no_grad():
        ref = small(x)
        assert not torch.equal(other(x).logits_t, ref.logits_t)  # a different init differs before loading
        other.load_state_dict(torch.load(tmp_path / "net.pth", weights_only=True))
        got = other(x)
    for a, b in zip(ref, got):
        assert torch.equal(a, b)


def test_predict_is_cnn_argmax_and_restores_mode(small):
    x = _img(small.cfg)
    small.train()
    p = small.predict(x)
    assert small.training and p.shape == (2, small.cfg.img_size, small.cfg.img_size) and p.dtype == torch.long
    small.eval()
    with torch.no_grad():
        ref = small(x, transformer=False, embed=False, rotation=False).logits_c.argmax(1)
    assert torch.equal(p, ref)
    assert small.predict(x).requires_grad is False and not small.training


def test_predict_accepts_other_sizes(small):
    x = torch.randn(1, 1, 128, 160)  # the CNN branch needs only multiples of 32
    assert small.predict(x).shape == (1, 128, 160)
    with pytest.raises(ValueError, match="built for img_size=96"):
        small(x)
    assert small(x, transformer=False).logits_t is None


def test_bf16_autocast_on_cpu(small):
    small.train()
    small.zero_grad()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = small(_img(small.cfg, b=4))
    assert out.logits_c.dtype == out.logits_t.dtype == torch.bfloat16
    assert all(torch.isfinite(t).all() for t in out)
    sum(t.float().mean() for t in out).backward()
    grads = [p.grad for p in small.parameters() if p.grad is not None]
    assert len(grads) == len(list(small.parameters())) and all(torch.isfinite(g).all() for g in grads)


def test_plain_unet_has_no_transformer():
    net = build_model("small", transformer=False)
    assert net.transformer is None and part_sizes(net)["Transformer decoder"] == 0
    assert not any(k.startswith("transformer.") for k in net.state_dict())
    out = net(_img(net.cfg))
    assert out.logits_t is None and out.logits_c is not None and out.rot_logits is not None
    with pytest.raises(ValueError, match="transformer=False"):
        net.decode_transformer(net.encode(_img(net.cfg)))
    full = build_model("small")
    assert sum(p.numel() for p in net.parameters()) + part_sizes(full)["Transformer decoder"] == sum(
        p.numel() for p in full.parameters()
    )


def test_no_rotation_head():
    net = build_model("small", rotation=False)
    assert net.rot is None and net(_img(net.cfg)).rot_logits is None
    with pytest.raises(ValueError, match="rotation=False"):
        net.rotation_logits(net.encode(_img(net.cfg)))


@pytest.mark.parametrize("level,stride", [(1, 4), (2, 8), (3, 16), (4, 32)])
def test_contrast_levels(level, stride):
    net = build_model("small", contrast_level=level, transformer=False)
    z = net(_img(net.cfg), transformer=False).embeddings
    s = net.cfg.img_size // stride
    assert z.shape == (2, 256, s, s)
    assert torch.allclose(z.norm(dim=1), torch.ones(2, s, s), atol=1e-5)
    assert net.proj.net[0].in_channels == ENCODER_CHANNELS["resnet18"][level]


@pytest.mark.parametrize(
    "field,value",
    [
        ("encoder", "resnet101"),
        ("in_channels", 2),
        ("num_classes", 1),
        ("num_classes", 2.0),
        ("img_size", 100),
        ("img_size", 0),
        ("pretrained", 3),
        ("decoder_channels", (256, 128, 64, 32)),
        ("embed_dims", (96, 192, 384, -768)),
        ("num_heads", (3, 6, 12)),
        ("num_heads", (5, 6, 12, 24)),
        ("window_size", 0),
        ("mlp_ratio", 0),
        ("transformer", 1),
        ("contrast_level", 0),
        ("contrast_level", 5),
        ("proj_dim", 0),
        ("rotation", "yes"),
        ("rot_dropout", 1.0),
        ("rot_dropout", True),
    ],
)
def test_bad_config_raises(field, value):
    with pytest.raises(ValueError, match=f"ModelConfig.{field}="):
        ModelConfig(**{field: value})


def test_config_roundtrip(tmp_path):
    cfg = get_preset("small", num_classes=2, in_channels=3)
    assert ModelConfig.load(cfg.save(tmp_path / "model.json")) == cfg
    assert ModelConfig(pretrained=tmp_path / "w.pth").pretrained == str(tmp_path / "w.pth")
    with pytest.raises(ValueError, match=r"use one of \['paper', 'small'\]"):
        get_preset("medium")
    with pytest.raises(ValueError, match="unknown key"):
        build_model("small", img_sz=96)
    assert build_model(PRESETS["small"], num_classes=3).cfg.num_classes == 3


def test_rgb_and_grey_inputs():
    torch.manual_seed(0)
    grey, rgb = Encoder("resnet18", in_channels=1).eval(), Encoder("resnet18", in_channels=3).eval()
    rgb.load_state_dict(grey.state_dict())
    x = torch.randn(2, 1, 64, 64)
    with torch.no_grad():
        # grey convolves one channel with the weights summed over RGB: the same, to float rounding
        for a, b in zip(grey(x), rgb(x.repeat(1, 3, 1, 1))):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
    net = build_model("small", in_channels=3, num_classes=2)
    assert net(torch.randn(2, 3, 96, 96)).logits_c.shape == (2, 2, 96, 96)
    with pytest.raises(ValueError, match=r"expected images \(B, 3, H, W\)"):
        net(torch.randn(2, 1, 96, 96))


def test_pretrained_local_file(tmp_path):
    tv = torchvision.models.resnet18(weights=None)
    torch.save(tv.state_dict(), tmp_path / "r18.pth")
    net = build_model("small", pretrained=str(tmp_path / "r18.pth"))
    for k, v in net.encoder.state_dict().items():
        assert torch.equal(v, tv.state_dict()[k]), k
    with pytest.raises(ValueError, match="do not fit encoder 'resnet50'"):
        build_model("paper", pretrained=str(tmp_path / "r18.pth"))
    with pytest.raises(ValueError, match="neither a resnet18 weights name"):
        build_model("small", pretrained=str(tmp_path / "missing.pth"))
    (tmp_path / "junk.pth").write_text("not a checkpoint")
    with pytest.raises(ValueError, match="cannot read a state_dict"):
        build_model("small", pretrained=str(tmp_path / "junk.pth"))
    torch.save([1, 2], tmp_path / "list.pth")
    with pytest.raises(ValueError, match="not a state_dict"):
        build_model("small", pretrained=str(tmp_path / "list.pth"))


def test_pretrained_by_name_reads_torchvision_cache(monkeypatch, tmp_path):
    "A weights name reads torchvision's file from torch's hub cache and never asks torchvision to download."
    tv = torchvision.models.resnet18(weights=None)

    def no_download(self, *args, **kwargs):
        raise AssertionError("a download was attempted")

    monkeypatch.setattr(torchvision.models.ResNet18_Weights, "get_state_dict", no_download)
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))
    with pytest.raises(ValueError, match="not in torch's hub cache"):
        build_model("small", pretrained="IMAGENET1K_V1")
    (tmp_path / "checkpoints").mkdir()
    torch.save(tv.state_dict(), tmp_path / "checkpoints" / "resnet18-f37072fd.pth")
    net = build_model("small", pretrained="IMAGENET1K_V1")
    assert torch.equal(net.encoder.conv1.weight, tv.conv1.weight)


def test_building_never_downloads(monkeypatch):
    def no_download(*args, **kwargs):
        raise AssertionError("a download was attempted")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", no_download)
    monkeypatch.setattr(torch.hub, "download_url_to_file", no_download)
    build_model("small")
    build_model("small", transformer=False)


def test_parts_standalone():
    ch = ENCODER_CHANNELS["resnet34"]
    feats = Encoder("resnet34")(torch.randn(2, 1, 64, 64))
    assert CNNDecoder(ch, 3, (32, 16, 16, 8, 8))(feats).shape == (2, 3, 64, 64)
    assert TransformerDecoder(ch, 3, 64, (16, 32, 64, 128), (2, 2, 4, 4), window_size=2)(feats).shape == (
        2,
        3,
        64,
        64,
    )
    assert ProjectionHead(ch[2], 32)(feats[2]).shape == (2, 32, 8, 8)
    assert isinstance(
        UCPCLNet(get_preset("small", encoder="resnet34")).encoder.layer1[0].conv1, torch.nn.Conv2d
    )


def test_transformer_head_is_the_layers_without_their_full_size_tensors(small):
    "The last expansion, LayerNorm and 1x1 head of the decoder, fused (`NormLinear`), against the layers."
    import torch.nn.functional as F

    td = small.transformer
    feats = [f.detach() for f in small.encoder(_img(small.cfg, b=2, seed=1))]

    def unfused(feats):
        tokens = [emb(f) for emb, f in zip(td.embed, feats[1:])]
        x = tokens[3]
        for i in (2, 1, 0):
            x = td.blocks[i](td.fuse[i](torch.cat([td.expand[i](x), tokens[i]], -1)))
        x = F.linear(td.up4.blocks(td.norm(x)), td.head.weight.flatten(1), td.head.bias)
        B, h, w, s, _, C = x.shape
        return x.permute(0, 5, 1, 3, 2, 4).reshape(B, C, h * s, w * s)

    params = [td.up4.norm.weight, td.up4.norm.bias, td.head.weight, td.head.bias, td.up4.expand.weight]
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t.numel()) or t, lambda t: t):
        ours = td(feats)
    theirs = unfused(feats)
    torch.testing.assert_close(ours, theirs, rtol=1e-4, atol=1e-4)
    g = torch.randn_like(ours)
    for a, b in zip(torch.autograd.grad(ours, params, g), torch.autograd.grad(theirs, params, g)):
        torch.testing.assert_close(a, b, rtol=1e-3, atol=1e-3 * b.abs().max().item())
    # the expanded tokens (B * 96 * 96 of D = 48) are not kept for the backward pass (the layers keep two)
    n_full = 2 * small.cfg.img_size**2 * small.cfg.embed_dims[0]
    assert sum(n == n_full for n in saved) == 0
    saved.clear()
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t.numel()) or t, lambda t: t):
        unfused(feats)
    assert sum(n == n_full for n in saved) == 2
