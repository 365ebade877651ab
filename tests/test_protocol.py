"""Tests of the paper's protocol as a user runs it (issue 16 A): ImageNet weights from torch's hub cache or a
file and the clear error without them, 2D slice Dice beside 3D volume Dice, and the named settings for the
departures from the reference implementation (queue depth, crop, Dice denominators, drop-path)."""

import math

import pytest
import torch
import torchvision

from ucpcl.evaluate import case_metrics, slice_dice, summarize
from ucpcl.losses import seg_loss, supervised_loss
from ucpcl.method import UCPCL, MethodConfig, enqueue_subset
from ucpcl.models import (
    PRESET_WEIGHTS,
    Encoder,
    build_model,
    get_preset,
    resolve_pretrained,
    set_drop_path,
    weights_cache_path,
)
from ucpcl.train import TrainConfig
from ucpcl.transforms import train_transform


@pytest.fixture
def no_download(monkeypatch):
    "Fail the test if anything tries to download."

    def download(*args, **kwargs):
        raise AssertionError("a download was attempted")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", download)
    monkeypatch.setattr(torch.hub, "download_url_to_file", download)
    monkeypatch.setattr(torchvision.models.ResNet50_Weights, "get_state_dict", download)
    monkeypatch.setattr(torchvision.models.ResNet18_Weights, "get_state_dict", download)


@pytest.fixture
def hub(tmp_path, monkeypatch):
    "An empty torch hub cache in tmp_path."
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    return tmp_path / "hub"


@pytest.fixture(scope="module")
def resnet50_weights():
    "A stand-in for torchvision's ImageNet ResNet-50: a seeded random ResNet-50's state_dict."
    torch.manual_seed(123)
    return torchvision.models.resnet50(weights=None).state_dict()


def _encoder_equals(enc: Encoder, sd: dict) -> bool:
    mine = enc.state_dict()
    return set(mine) == {k for k in sd if not k.startswith("fc.")} and all(
        torch.equal(v, sd[k]) for k, v in mine.items()
    )


# ---- 1. pretrained encoder


def test_paper_protocol_defaults_to_imagenet_and_small_to_random():
    cfg = TrainConfig()  # "its defaults are the paper's protocol"
    assert (cfg.preset, cfg.pretrained) == ("paper", "preset")
    assert resolve_pretrained(cfg.preset, cfg.pretrained) == PRESET_WEIGHTS["paper"] == "IMAGENET1K_V1"
    assert resolve_pretrained("small", "preset") is None
    assert [resolve_pretrained("paper", v) for v in ("none", "random", "NONE", None)] == [None] * 4
    assert get_preset("paper").encoder == "resnet50"


def test_fake_resnet50_file_loads(tmp_path, resnet50_weights, no_download):
    torch.save(resnet50_weights, tmp_path / "r50.pth")
    net = build_model("paper", pretrained=str(tmp_path / "r50.pth"))
    assert _encoder_equals(net.encoder, resnet50_weights)


def test_cached_imagenet_weights_load_without_download(hub, resnet50_weights, no_download):
    path = weights_cache_path("resnet50", "IMAGENET1K_V1")
    assert path == hub / "checkpoints" / "resnet50-0676ba61.pth"
    path.parent.mkdir(parents=True)
    torch.save(resnet50_weights, path)
    enc = Encoder("resnet50", pretrained=resolve_pretrained("paper", "preset"))
    assert _encoder_equals(enc, resnet50_weights)


def _both_ways(msg: str, path) -> None:
    "The error names the exact cache path, the way to fetch it, the file option and random init."
    assert str(path) in msg and "fetch_weights" in msg
    assert "--pretrained FILE" in msg and "pretrained='none'" in msg


def test_missing_cache_is_one_clear_error(hub, no_download):
    with pytest.raises(ValueError, match="not in torch's hub cache") as e:
        Encoder("resnet50", pretrained="IMAGENET1K_V1")
    _both_ways(str(e.value), hub / "checkpoints" / "resnet50-0676ba61.pth")


def test_corrupt_and_mismatched_files_are_clear_errors(tmp_path, hub, no_download):
    cache = weights_cache_path("resnet50", "IMAGENET1K_V1")
    (tmp_path / "junk.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="cannot read a state_dict") as e:
        Encoder("resnet50", pretrained=str(tmp_path / "junk.pth"))
    _both_ways(str(e.value), cache)
    torch.save(torchvision.models.resnet18(weights=None).state_dict(), tmp_path / "r18.pth")
    with pytest.raises(ValueError, match="do not fit encoder 'resnet50'") as e:
        Encoder("resnet50", pretrained=str(tmp_path / "r18.pth"))
    _both_ways(str(e.value), cache)
    sd = torchvision.models.resnet50(weights=None).state_dict()
    sd["layer1.0.conv1.weight"] = torch.zeros(1)  # a wrong shape
    torch.save(sd, tmp_path / "bad_shape.pth")
    with pytest.raises(ValueError, match="do not fit encoder 'resnet50'"):
        Encoder("resnet50", pretrained=str(tmp_path / "bad_shape.pth"))
    # a corrupt file in the cache itself
    cache.parent.mkdir(parents=True)
    cache.write_bytes(b"\x00" * 10)
    with pytest.raises(ValueError, match="cannot read a state_dict") as e:
        Encoder("resnet50", pretrained="IMAGENET1K_V1")
    _both_ways(str(e.value), cache)


def test_random_init_by_name_reads_nothing(no_download):
    torch.manual_seed(0)
    a = Encoder("resnet18", pretrained="none")
    torch.manual_seed(0)
    b = Encoder("resnet18", pretrained="random")
    assert torch.equal(a.conv1.weight, b.conv1.weight)


# ---- 2. Dice as the paper reports it


def test_2d_and_3d_dice_differ_by_hand():
    # class 1: slice 0 right (4 px), slice 1 a 1-px structure missed, slice 2 empty in both (left out)
    # class 2: slice 2 only, predicted with 1 of its 2 pixels
    g = torch.zeros(3, 4, 4, dtype=torch.long)
    g[0, :2, :2] = 1
    g[1, 3, 3] = 1
    g[2, 0, :2] = 2
    p = torch.zeros_like(g)
    p[0, :2, :2] = 1
    p[2, 0, 0] = 2
    d2 = slice_dice(p, g, 3)
    assert d2[:, 0].tolist()[:2] == [1.0, 0.0] and math.isnan(d2[2, 0])
    assert math.isnan(d2[0, 1]) and math.isnan(d2[1, 1]) and d2[2, 1].item() == pytest.approx(2 / 3)
    m = case_metrics(p, g, 3, hd95=False)
    assert m["dice"].tolist() == pytest.approx([8 / 9, 2 / 3])  # 3D: 2*4/(4+5), 2*1/(1+2)
    case = {k: v.tolist() for k, v in m.items()}
    s = summarize([case], ["a", "b"])
    assert s["dice_3d"] == s["dice"] == pytest.approx((8 / 9 + 2 / 3) / 2)
    assert s["dice_2d_per_class"] == pytest.approx({"a": 0.5, "b": 2 / 3})
    assert s["dice_2d"] == pytest.approx((0.5 + 2 / 3) / 2)


def test_2d_dice_pools_slices_over_volumes_and_images_have_none():
    one = torch.ones(1, 2, 2, dtype=torch.long)
    a = case_metrics(one, one, 2, hd95=False)  # one perfect slice
    b = case_metrics(
        torch.zeros(3, 2, 2, dtype=torch.long), torch.ones(3, 2, 2, dtype=torch.long), 2, hd95=False
    )
    s = summarize([{k: v.tolist() for k, v in c.items()} for c in (a, b)], ["fg"])
    assert s["dice_3d"] == pytest.approx(0.5)  # the mean of two volumes, 1 and 0
    assert s["dice_2d"] == pytest.approx(0.25)  # the mean of four slices, 1, 0, 0, 0
    image = case_metrics(one[0], one[0], 2, hd95=False)
    assert "dice_2d_sum" not in image and "dice_2d" not in summarize([image], ["fg"])


# ---- 4. named settings for the departures from the reference


def test_enqueue_per_class_limits_what_enters_the_queue():
    labels = torch.tensor([0] * 50 + [1] * 30 + [2] * 5 + [-1] * 5)
    kept = enqueue_subset(labels, 16, 3, torch.Generator().manual_seed(0))
    assert [int((kept == k).sum()) for k in range(3)] == [16, 16, 5]
    assert (kept[kept >= 0] == labels[kept >= 0]).all()
    assert torch.equal(enqueue_subset(labels, 0, 3), labels)
    tiny = get_preset("small", img_size=32, num_classes=4)
    depth = {}
    for k in (0, 3):
        torch.manual_seed(0)
        m = UCPCL(
            MethodConfig(batch_size=4, labeled_bs=2, per_class=8, memory_size=64, enqueue_per_class=k), tiny
        )
        p = torch.softmax(torch.randn(4, 4, 32, 32), 1)
        y = torch.randint(0, 4, (4, 32, 32))
        m.contrast_step(p, p, torch.nn.functional.normalize(torch.randn(4, 256, 4, 4), dim=1), y, 10)
        m.after_step(10)
        depth[k] = m.queue.count.tolist()
    assert max(depth[3]) <= 3 and sum(depth[0]) > sum(depth[3])


def test_crop_setting_switches_to_whole_slice_resize():
    mask = torch.zeros(40, 60, dtype=torch.long)
    mask[10:30, 5:25] = 1
    image = mask[None].float()
    whole = train_transform(32, rgb=False, degrees=0.0, jitter=0.0, crop=False)
    cropped = train_transform(32, rgb=False, degrees=0.0, jitter=0.0, crop=True)
    ref = torch.nn.functional.interpolate(mask[None, None].float(), size=(32, 32), mode="nearest")[
        0, 0
    ].long()
    same = lambda m: torch.equal(m, ref) or torch.equal(m, ref.flip(-1))  # noqa: E731
    outs_whole, outs_crop = [], []
    for s in range(6):
        torch.manual_seed(s)
        outs_whole.append(same(whole(image, mask)[1]))
        torch.manual_seed(s)
        outs_crop.append(same(cropped(image, mask)[1]))
    assert all(outs_whole) and not any(outs_crop)
    assert TrainConfig().crop and not TrainConfig(crop=False).crop


def test_dice_form_changes_the_supervised_loss():
    torch.manual_seed(0)
    lg, y = torch.randn(2, 4, 8, 8), torch.randint(0, 4, (2, 8, 8))
    lin, ref = seg_loss(lg, y), seg_loss(lg, y, dice_form="reference")
    p = lg.softmax(1)
    g = torch.nn.functional.one_hot(y, 4).permute(0, 3, 1, 2).float()
    inter, sq = (p * g).sum((0, 2, 3)), (p * p).sum((0, 2, 3)) + g.sum((0, 2, 3))
    ce = torch.nn.functional.cross_entropy(lg, y)
    by_hand = (1 - (2 * inter + 1e-5) / (sq + 1e-5))[1:].sum() / 4  # weights (0, 1, 1, 1) over C = 4
    assert ref.item() == pytest.approx(((ce + by_hand) / 2).item(), abs=1e-5)
    assert abs(lin.item() - ref.item()) > 1e-3
    lt = torch.randn(2, 4, 8, 8)
    assert supervised_loss(lg, lt, y, dice_form="reference").item() == pytest.approx(
        (ref + 0.4 * seg_loss(lt, y, dice_form="reference")).item(), abs=1e-6
    )
    with pytest.raises(ValueError, match="MethodConfig.dice_form='dice' is invalid"):
        MethodConfig(dice_form="dice")


def test_drop_path_setting_reaches_the_swin_blocks():
    torch.manual_seed(0)
    net = build_model("small", img_size=64)
    blocks = [b for s in net.transformer.blocks for b in s]
    assert all(b.stochastic_depth.p == 0.0 for b in blocks)  # today's default: none
    set_drop_path(net, 0.1)
    assert blocks[0].stochastic_depth.p == 0.0 and blocks[-1].stochastic_depth.p == pytest.approx(0.1)
    x = torch.randn(2, 1, 64, 64)
    net.train()
    with torch.no_grad():
        feats = net.encode(x)
        torch.manual_seed(1)
        a = net.decode_transformer(feats)
        torch.manual_seed(2)
        b = net.decode_transformer(feats)
    assert not torch.allclose(a, b)
    with pytest.raises(ValueError, match="TrainConfig.drop_path=-0.1 is invalid"):
        TrainConfig(drop_path=-0.1)


def test_paper_run_without_weights_fails_clearly_before_training(tmp_path, hub, no_download):
    from ucpcl.phantoms import write_phantom
    from ucpcl.train import Trainer

    root = write_phantom("cardiac", tmp_path / "phantom", seed=0, num_patients=(2, 1, 1))
    cfg = TrainConfig(data_root=str(root), labeled=1, img_size=32, out=str(tmp_path / "run"))
    with pytest.raises(ValueError, match="not in torch's hub cache") as e:
        Trainer(cfg)  # the paper preset's default: ImageNet weights
    _both_ways(str(e.value), hub / "checkpoints" / "resnet50-0676ba61.pth")
    assert not (tmp_path / "run" / "log.csv").exists()


# ---- 3. the final notebook's settings


def test_overrides_are_validated():
    from ucpcl.report import config_with_overrides

    cfg = config_with_overrides({"enqueue_per_class": 16, "dice_form": "reference"}, preset="small")
    assert (cfg.enqueue_per_class, cfg.dice_form, cfg.preset) == (16, "reference", "small")
    with pytest.raises(ValueError, match=r"\['queue_depth'\] not fields of TrainConfig; the fields are"):
        config_with_overrides({"queue_depth": 16})
    with pytest.raises(ValueError, match="parameters of their own"):
        config_with_overrides({"seed": 1}, seed=0)


def test_finished_runs_keep_matching_under_the_new_weights_default(tmp_path):
    import json
    from ucpcl.compare import _same_config

    def saved(cfg, **changes):
        path = tmp_path / "config.json"
        path.write_text(json.dumps({**json.loads(json.dumps(cfg.to_dict())), **changes}))
        return path

    small, paper = TrainConfig(preset="small"), TrainConfig()
    assert _same_config(saved(small, pretrained=None), small)  # random init, named either way
    assert not _same_config(saved(paper, pretrained=None), paper)  # random then, ImageNet now: retrain
    assert _same_config(saved(paper, pretrained="IMAGENET1K_V1"), paper)
