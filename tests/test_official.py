"""The authors' cDAL checkpoints <-> our networks, checked against the fact files of ../shared/official.

No real weights are needed: random tensors with the official names and shapes (distinct values, so a wrong
mapping between same-shaped tensors is caught), saved the way the authors' code saves them (a bare
state_dict with the ``module.`` prefix; a resume file with ``netG_dict``/``netD_dict``).
"""
from __future__ import annotations

import argparse

import pytest
import torch

from conftest import official_facts
from diffseg_core.cdal.official import (OFFICIAL_CDAL, OFFICIAL_CLASS, OfficialCheckpointError, build_official_discriminator,
                                        build_official_generator, discriminator_key_map, discriminator_to_official,
                                        generator_key_map, generator_layout, generator_to_official,
                                        load_official_generator, official_to_discriminator, official_to_generator,
                                        read_official_file, save_official_generator, strip_prefix)

G_FACTS = {"monuseg": "cdal_monuseg_G", "cxr": "cdal_cxr_G", "hippocampus": "cdal_hippocampus_G",
           "hippocampus-train": "cdal_hippocampus_trainconfig_G"}
D_FACTS = {"monuseg": "cdal_monuseg_D", "cxr": "cdal_cxr_D", "hippocampus": "cdal_hippocampus_D"}


def random_official(facts: dict, seed: int = 0, prefix: str = "module.") -> dict[str, torch.Tensor]:
    """Distinct random tensors under the official names, in the official order (what torch.save wrote)."""
    g = torch.Generator().manual_seed(seed)
    return {prefix + k: torch.randn(shape, generator=g) for k, shape in facts["parameters"].items()}


def _meta_generator(name):
    with torch.device("meta"):
        return build_official_generator(name)


# ---------------------------------------------------------------------------------------------
# structure: names, shapes, order and the roles of the flat layer list
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", list(G_FACTS))
def test_generator_names_shapes_and_order_match_the_facts(name):
    facts = official_facts(G_FACTS[name])
    G = _meta_generator(name)
    rows = generator_key_map(G)
    assert [o for o, _, _ in rows] == facts["state_dict_key_order"]
    assert len(rows) == facts["n_state_dict_keys"] == len(G.state_dict())
    assert G.num_parameters() == facts["total_params"] == OFFICIAL_CDAL[name].generator_params
    ours = G.state_dict()
    for official, key, transposed in rows:
        shape = tuple(ours[key].shape)
        assert ((shape[1], shape[0]) if transposed else shape) == tuple(facts["parameters"][official]), official


@pytest.mark.parametrize("name", list(G_FACTS))
def test_layout_matches_the_roles_of_all_modules(name):
    roles = official_facts(G_FACTS[name])["all_modules_roles"]
    layout = generator_layout(_meta_generator(name))
    assert len(layout) == len(roles)
    for (path, kind, module), role in zip(layout, roles):
        where = f"all_modules.{role['index']} ({role['class']}) vs {path}"
        assert OFFICIAL_CLASS[kind] == role["class"], where
        assert sum(p.numel() for p in module.parameters()) == role["n_params"], where
        if kind == "resblock":
            assert (module.up, module.down) == (role["up"], role["down"]), where
        elif kind == "linear":
            assert (module.in_features, module.out_features) == (role["in_features"], role["out_features"]), where
        elif kind == "conv":
            assert (module.in_channels, module.out_channels, list(module.kernel_size), list(module.stride)) == \
                (role["in_channels"], role["out_channels"], role["kernel_size"], role["stride"]), where
        elif kind == "groupnorm":
            assert (module.num_groups, module.num_channels) == (role["num_groups"], role["num_channels"]), where


def test_hand_checked_correspondences_monuseg():
    """A few indices read off the official role list by hand (MoNuSeg), so the order is not only self-consistent."""
    facts = official_facts(G_FACTS["monuseg"])
    official = random_official(facts)
    G = load_official_generator(official, "monuseg")
    assert G.num_parameters() == facts["total_params"] and not any(p.is_meta for p in G.parameters())
    o = lambda k: official["module." + k]  # noqa: E731
    assert torch.equal(G.temb[0].weight, o("all_modules.0.weight"))                      # time embedding
    assert torch.equal(G.encoder.conv.weight, o("all_modules.2.weight"))                 # image encoder, 3 -> 64
    assert torch.equal(G.encoder.blocks[4].body[6].weight, o("all_modules.7.0.out_layers.3.weight"))
    assert torch.equal(G.conv_in.weight, o("all_modules.8.weight"))                       # noisy label, 1 -> 64
    assert torch.equal(G.down_blocks[0][1][0].conv1.weight, o("all_modules.10.Conv_1.weight"))
    assert torch.equal(G.downsamplers[0].skip.weight, o("all_modules.11.Conv_2.weight"))  # level 0 down-sampler
    assert torch.equal(G.pyramid[0].conv.weight, o("all_modules.12.Conv2d_0.weight"))    # input pyramid
    assert torch.equal(G.down_blocks[4][1][1].q.weight[:, :, 0, 0], o("all_modules.28.NIN_0.W").t())  # 16 px attention
    assert torch.equal(G.mid[1].out.bias, o("all_modules.40.NIN_3.b"))                   # middle attention
    assert torch.equal(G.upsamplers[0].conv0.weight, o("all_modules.45.Conv_0.weight"))  # first up-sampler
    assert torch.equal(G.up_attn[1].norm.weight, o("all_modules.49.GroupNorm_0.weight"))
    assert torch.equal(G.head[2].bias, o("all_modules.72.bias"))
    assert torch.equal(G.mapping.net[7].weight, o("z_transform.7.weight"))


@pytest.mark.parametrize("name", list(D_FACTS))
def test_discriminator_names_shapes_and_order_match_the_facts(name):
    facts = official_facts(D_FACTS[name])
    with torch.device("meta"):
        D = build_official_discriminator(name)
    rows = discriminator_key_map(D)
    assert [o for o, _, _ in rows] == list(facts["parameters"])
    assert D.num_parameters() == facts["total_params"] == OFFICIAL_CDAL[name].discriminator_params
    assert all(tuple(D.state_dict()[k].shape) == tuple(facts["parameters"][o]) for o, k, _ in rows)


# ---------------------------------------------------------------------------------------------
# conversion: strict load, every tensor unchanged, forward pass, both directions
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["cxr", "hippocampus", "hippocampus-train"])
def test_random_official_file_loads_strictly_and_round_trips(tmp_path, name):
    facts = official_facts(G_FACTS[name])
    official = random_official(facts, seed=1)
    path = tmp_path / "netG.pth"
    torch.save(official, path)                                   # as the authors save it: bare, DDP prefix
    G = load_official_generator(path, name)
    assert G.num_parameters() == facts["total_params"]
    ours = G.state_dict()
    flip = {"conv_in.weight", "pyramid.0.conv.weight", "head.2.weight", "head.2.bias"} if name == "cxr" else set()
    for o, k, transposed in generator_key_map(G):
        want = official["module." + o]
        want = want.t().reshape(ours[k].shape) if transposed else want
        assert torch.equal(ours[k], -want if k in flip else want), (o, k)
    # back to the authors' format: same names, order, prefix and values
    back = generator_to_official(G, name)
    assert list(back) == list(official)
    assert all(torch.equal(back[k], official[k]) for k in official)
    out = tmp_path / "shared.pth"
    save_official_generator(G, out, name)
    again = read_official_file(out)
    assert list(again) == list(official) and all(torch.equal(again[k], official[k]) for k in official)
    # without the prefix the conversion is identical
    bare = official_to_generator(strip_prefix(official), name)
    assert all(torch.equal(bare[k], v) for k, v in ours.items())


@pytest.mark.parametrize("name, size", [("cxr", 32), ("hippocampus", 32)])
def test_converted_generator_runs_forward(name, size):
    facts = official_facts(G_FACTS[name])
    io = facts["verified"]["forward_io"]
    G = load_official_generator({k: 0.05 * v for k, v in random_official(facts).items()}, name)
    label_ch, image_ch = G.label_channels, G.image_channels
    assert label_ch == [v for k, v in io.items() if k.startswith("x_t")][0][1]
    assert image_ch == [v for k, v in io.items() if k.startswith("cond_image")][0][1]
    assert G.nz == io["z"][1]
    x = torch.randn(2, label_ch, size, size)
    with torch.no_grad():
        y = G(x, torch.tensor([0, 1]), torch.randn(2, image_ch, size, size), torch.randn(2, G.nz))
    assert y.shape == x.shape and torch.isfinite(y).all() and float(y.abs().max()) <= 1.0


def test_our_trained_generator_shares_and_comes_back():
    """A model trained here (random init stands in) -> authors' format -> ours: identical."""
    torch.manual_seed(3)
    G = build_official_generator("hippocampus")
    official = generator_to_official(G, "hippocampus")
    assert all(k.startswith("module.") for k in official)
    back = official_to_generator(official, "hippocampus")
    assert all(torch.equal(back[k], v) for k, v in G.state_dict().items())


def test_cxr_polarity_is_folded_into_the_weights():
    """The authors' CXR labels are lung = -1; converted, G_ours(x) = -G_official(-x) exactly (D16)."""
    facts = official_facts(G_FACTS["cxr"])
    official = {k: 0.05 * v for k, v in random_official(facts, seed=2).items()}
    flipped = load_official_generator(official, "cxr")
    raw = load_official_generator(official, "cxr", flip_polarity=False)
    x, img, z, t = torch.randn(1, 1, 32, 32), torch.randn(1, 1, 32, 32), torch.randn(1, 100), torch.tensor([1])
    with torch.no_grad():
        assert torch.allclose(flipped(x, t, img, z), -raw(-x, t, img, z), atol=1e-5)
        assert not torch.allclose(flipped(x, t, img, z), raw(x, t, img, z), atol=1e-3)


@pytest.mark.parametrize("name", ["hippocampus", "cxr"])
def test_discriminator_from_a_resume_file(tmp_path, name):
    g_facts, d_facts = official_facts(G_FACTS[name]), official_facts(D_FACTS[name])
    content = {"epoch": 10, "global_step": 70, "netG_dict": random_official(g_facts), "netD_dict": random_official(d_facts, 5),
               "optimizerG": {}, "schedulerG": {}, "optimizerD": {}, "schedulerD": {}}
    path = tmp_path / "content.pth"
    torch.save(content, path)
    d_state = read_official_file(path, net="D")
    D = build_official_discriminator(name)
    D.load_state_dict(official_to_discriminator(d_state, name), strict=True)
    back = discriminator_to_official(D, name)
    assert list(back) == list(content["netD_dict"]) and all(torch.equal(back[k], content["netD_dict"][k]) for k in back)
    assert read_official_file(path, net="G").keys() == content["netG_dict"].keys()
    if name == "hippocampus":  # the small D runs at 32 px: pairs of 3-channel one-hot maps
        x = torch.randn(2, 3, 32, 32)
        with torch.no_grad():
            assert D(x, x, torch.tensor([0, 1])).shape == (2,)
    # a resume file that also pickles the run's argparse arguments needs an explicit opt-in
    content["args"] = argparse.Namespace(dataset="lung")
    torch.save(content, path)
    with pytest.raises(OfficialCheckpointError, match="allow_pickle"):
        read_official_file(path, net="D")
    assert read_official_file(path, net="D", allow_pickle=True).keys() == content["netD_dict"].keys()


# ---------------------------------------------------------------------------------------------
# files that do not fit: the first mismatching key is named
# ---------------------------------------------------------------------------------------------
def test_bad_files_name_the_key(tmp_path):
    official = random_official(official_facts(G_FACTS["hippocampus"]))
    missing = dict(official)
    del missing["module.all_modules.20.Conv_1.weight"]
    with pytest.raises(OfficialCheckpointError, match=r"'all_modules\.20\.Conv_1\.weight' is missing"):
        official_to_generator(missing, "hippocampus")
    extra = {**official, "module.all_modules.99.weight": torch.zeros(1)}
    with pytest.raises(OfficialCheckpointError, match=r"unexpected key 'all_modules\.99\.weight'"):
        official_to_generator(extra, "hippocampus")
    wrong = {**official, "module.all_modules.9.weight": torch.zeros(32, 1, 3, 3)}
    with pytest.raises(OfficialCheckpointError, match=r"'all_modules\.9\.weight' has shape \(32, 1, 3, 3\)"):
        official_to_generator(wrong, "hippocampus")
    mixed = {("" if i == 3 else "module.") + k.removeprefix("module."): v for i, (k, v) in enumerate(official.items())}
    with pytest.raises(OfficialCheckpointError, match="lacks the 'module.' prefix"):
        official_to_generator(mixed, "hippocampus")
    # a file of another configuration is recognised in the message
    with pytest.raises(OfficialCheckpointError, match="fits the official 'hippocampus' configuration"):
        official_to_generator(official, "hippocampus-train")
    empty = tmp_path / "placeholder.pth"
    empty.write_bytes(b"")
    with pytest.raises(OfficialCheckpointError, match="0-byte placeholders"):
        read_official_file(empty)
    not_a_state = tmp_path / "other.pth"
    torch.save({"model": 3}, not_a_state)
    with pytest.raises(OfficialCheckpointError, match="netG_dict"):
        read_official_file(not_a_state)


# ---------------------------------------------------------------------------------------------
# evaluating an official file with our protocol: the CLI writes the same JSON as any run
# ---------------------------------------------------------------------------------------------
def _tiny_hippocampus(root, n: int = 1) -> None:
    """``n`` MRI-like volumes of 32 x 32 x 2 voxels in the shared layout (images/ + labels/, NIfTI)."""
    import nibabel as nib
    import numpy as np

    rng = np.random.default_rng(0)
    for sub in ("images", "labels"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    for i in range(n):
        label = np.zeros((32, 32, 2), np.uint8)
        label[10:16, 10:20] = 1
        label[16:22, 10:20] = 2
        image = (label * 40 + rng.normal(50, 5, label.shape)).astype(np.float32)
        nib.save(nib.Nifti1Image(image, np.eye(4)), str(root / "images" / f"hippocampus_{i:03d}.nii.gz"))
        nib.save(nib.Nifti1Image(label, np.eye(4)), str(root / "labels" / f"hippocampus_{i:03d}.nii.gz"))


def test_cli_evaluates_an_official_file(tmp_path, capsys):
    import json

    from diffseg_core.cli import main

    facts = official_facts(G_FACTS["hippocampus"])
    weights = tmp_path / "Hippo_fold0.pth"
    torch.save({k: 0.05 * v for k, v in random_official(facts).items()}, weights)
    data = tmp_path / "hippocampus"
    _tiny_hippocampus(data)
    out = tmp_path / "official.json"
    assert main(["evaluate", "--official", "hippocampus", "--weights", str(weights), "--data", str(data),
                 "--split", "all", "--ensemble", "1", "--json", str(out)]) == 0
    res = json.loads(out.read_text())
    required = {"method", "dataset", "preset", "n_images", "dice_mean", "iou_mean", "dice_global", "iou_global",
                "per_class", "seconds_per_image", "device", "protocol", "row"}
    assert required <= set(res) and res["method"] == "cdal" and res["n_images"] == 1 and 0 <= res["dice_mean"] <= 1
    off = res["official"]
    assert (off["name"], off["timesteps"], off["ensemble"], off["ema"]) == ("hippocampus", 2, 1, True)
    assert len(off["sha256"]) == 64 and "88.13" in off["paper"]
    assert "T = 2" in res["protocol"] and "LPI" in res["protocol"] and "Hippo_fold0.pth" in res["row"]["model"]
    # the official sizes and tiling: native 32 px slices, 32 px windows with overlap 0.75
    assert "tiles of 32 px, overlap 0.75" in res["protocol"]
    assert main(["evaluate", "--json", str(out)]) == 2  # neither --run nor --official: one paragraph, exit 2
    assert "evaluate needs --run RUN_DIR" in capsys.readouterr().err


def test_official_method_turns_hippocampus_slices():
    """The authors' pipeline sees LPI slices: our prediction of a slice equals theirs of the turned slice."""
    from diffseg_core.data.base import Case, SegDataset
    from diffseg_core.released import build_official_method, official_run_config

    facts = official_facts(G_FACTS["hippocampus"])
    state = {k: 0.05 * v for k, v in random_official(facts, seed=4).items()}
    import numpy as np
    image = np.random.default_rng(0).random((1, 32, 32)).astype(np.float32)
    ds = SegDataset("hippocampus", [Case("v_s000", image, np.zeros((32, 32), np.int64), "", "test")],
                    ("background", "anterior", "posterior"), 1, "synthetic")
    cfg = official_run_config("hippocampus", preset="smoke", ensemble=1)
    m = build_official_method("hippocampus", state, ds, cfg, torch.device("cpu"))
    assert m.flip_slices and m.nets["G"].num_parameters() == facts["total_params"]
    x = torch.from_numpy(image)[None]
    turned = m.predict(x)
    m.flip_slices = False
    assert torch.allclose(turned, m.predict(x.flip(-2, -1)).flip(-2, -1), atol=1e-6)
    assert torch.allclose(turned.sum(1), torch.ones(1, 32, 32), atol=1e-5)
